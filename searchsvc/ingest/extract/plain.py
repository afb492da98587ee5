"""Text, Markdown and CSV/TSV sent as a file: the encoding detected (charset-normalizer) unless given.

Korean files are often CP949 (or its subset EUC-KR) rather than UTF-8; a detected EUC-KR is read as CP949, which
decodes everything EUC-KR does and the characters outside it that Windows software writes.
"""

from __future__ import annotations

import csv
import io

from searchsvc.domain.types import Unit
from searchsvc.ingest.extract.base import Extracted, ExtractionError, ExtractionLimits

_WIDER = {"euc_kr": "cp949", "euc-kr": "cp949", "ks_c_5601-1987": "cp949", "johab": "cp949"}


def detect_encoding(data: bytes) -> str:
    """The encoding of `data`: UTF-8 (with or without BOM) when it decodes as such, else charset-normalizer's
    best guess (EUC-KR widened to CP949), else UTF-8."""
    if data.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data[:1_000_000]).best()
    encoding = best.encoding if best is not None else "utf-8"
    return _WIDER.get(encoding.lower(), encoding)


def decode(data: bytes, limits: ExtractionLimits, what: str) -> str:
    encoding = limits.encoding or detect_encoding(data)
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ExtractionError(f"{what} is not {encoding} ({exc}); give its encoding") from exc


def heading_title(text: str) -> str:
    """A Markdown file's title: its first non-empty line when that is a `# ` heading, else ""."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first[2:].strip() if first.startswith("# ") else ""


def read_text(data: bytes, limits: ExtractionLimits) -> Extracted:
    text = decode(data, limits, "text")
    return Extracted("text", [Unit(text, {"page": 1})], heading_title(text))


def read_csv(data: bytes, limits: ExtractionLimits, delimiter: str = ",") -> Extracted:
    """Each row a unit (`header: value` per cell), with its 1-based row number in the file (the header is 1)."""
    rows = csv.reader(io.StringIO(decode(data, limits, "CSV"), newline=""), delimiter=delimiter)
    header = next(rows, [])
    units = []
    for number, row in enumerate(rows, start=2):
        if number > limits.max_rows:
            raise ExtractionError(f"CSV of more than {limits.max_rows:,} rows")
        cells = [f"{h}: {v}" if h else v for h, v in zip(header + [""] * len(row), row) if v.strip()]
        units.append(Unit("; ".join(cells), {"row": number}))
    return Extracted("csv", units)


def read_tsv(data: bytes, limits: ExtractionLimits) -> Extracted:
    extracted = read_csv(data, limits, delimiter="\t")
    extracted.kind = "tsv"
    return extracted
