"""Files -> text by unit (a PDF page, a DOCX page, a slide, a sheet's row, an HWP/HWPX page), on the server.

`extract(data, filename, content_type, limits)` reads one file whose kind it tells from its bytes, its name and
its content type, and returns its units in order, each with where it came from (`page`, `slide`, `sheet` and
`row`). A file that cannot be read raises `ExtractionError` with a reason a caller can act on ("encrypted PDF",
"zip bomb: 2.1 GB uncompressed", "more than 2,000 pages"). Run through `ExtractionPool` (pool.py), every file is
read in a worker process with a time and memory bound, so a hostile file costs one worker, never the server.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from searchsvc.domain.types import Unit
from searchsvc.ingest.extract.base import Extracted, ExtractionError, ExtractionLimits

__all__ = ["Extracted", "ExtractionError", "ExtractionLimits", "Unit", "extract", "kind_of", "SUFFIXES"]


# Suffix -> kind. Tabular files the CLI maps to documents row by row (loaders.py) are also read here when sent
# as a file: each row becomes a unit of one document.
SUFFIXES = {
    ".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".xlsx": "xlsx", ".hwp": "hwp", ".hwpx": "hwpx",
    ".html": "html", ".htm": "html", ".txt": "text", ".md": "text", ".markdown": "text", ".rst": "text",
    ".csv": "csv", ".tsv": "tsv",
}
CONTENT_TYPES = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/x-hwp": "hwp", "application/haansofthwp": "hwp", "application/vnd.hancom.hwp": "hwp",
    "application/hwp+zip": "hwpx", "application/vnd.hancom.hwpx": "hwpx", "application/haansofthwpx": "hwpx",
    "text/html": "html", "application/xhtml+xml": "html", "text/plain": "text", "text/markdown": "text",
    "text/csv": "csv", "text/tab-separated-values": "tsv",
}
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def kind_of(filename: str = "", content_type: str = "", data: bytes = b"") -> str | None:
    """The file's kind by its content type, else its name's suffix, else its first bytes; None if unknown."""
    kind = CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())
    if kind:
        return kind
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    head = data[:8]
    if head.startswith(b"%PDF"):
        return "pdf"
    if head == _OLE_MAGIC:
        return "hwp"  # the only OLE format read here (legacy .doc/.xls/.ppt are refused by the HWP reader)
    return None


def extract(data: bytes, filename: str = "", content_type: str = "", limits: ExtractionLimits | None = None) -> Extracted:
    """Read one file in this process (the pool runs this in a worker). Raises ExtractionError."""
    limits = limits or ExtractionLimits()
    if len(data) > limits.max_bytes:
        raise ExtractionError(f"file of {len(data):,} bytes; at most {limits.max_bytes:,}")
    kind = kind_of(filename, content_type, data)
    if kind is None:
        raise ExtractionError(f"unsupported file type: {filename or content_type or 'unnamed'}"
                              f" (supported: {', '.join(sorted(set(SUFFIXES)))})")
    # The readers' libraries (PDFium, lxml, trafilatura...) load on the first file, in a worker: not at server start.
    from searchsvc.ingest.extract import html, hwp, office, pdf, plain

    readers = {"pdf": pdf.read, "docx": office.read_docx, "pptx": office.read_pptx, "xlsx": office.read_xlsx,
               "hwpx": hwp.read_hwpx, "hwp": hwp.read_hwp, "html": html.read, "text": plain.read_text,
               "csv": plain.read_csv, "tsv": plain.read_tsv}
    extracted = readers[kind](data, limits)
    extracted.units = [u for u in extracted.units if u.text.strip()]
    if not extracted.units:
        raise ExtractionError(f"no text in this {kind} file" + (" (a scan? OCR is off)" if kind == "pdf" and limits.ocr == "never" else ""))
    return extracted
