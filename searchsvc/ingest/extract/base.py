"""What every reader shares: what a file becomes (units of text with their place), what one file may cost to read,
and the error a file that breaks a limit (or cannot be read) becomes."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from searchsvc.config import FileSettings
from searchsvc.domain.types import Unit, text_of_units


@dataclass
class Extracted:
    kind: str  # "pdf", "docx", "pptx", "xlsx", "hwp", "hwpx", "html", "text", "csv", "tsv"
    units: list[Unit]
    title: str = ""
    ocr_pages: int = 0  # pages read by OCR (a PDF with ocr auto or always)

    @property
    def text(self) -> str:
        return text_of_units(self.units)


class ExtractionError(Exception):
    """A file that cannot be read; `reason` is for the caller ("encrypted PDF", "zip bomb: ...")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExtractionLimits:
    """Per file. The defaults hold real office documents (a 2,000-page PDF, a 50 MB deck) and refuse what no
    document needs; `seconds` and `memory_bytes` are enforced by the worker process (pool.py)."""

    max_bytes: int = 64 * 1024 * 1024  # the file as sent
    max_pages: int = 2000  # pages or slides
    max_rows: int = 100_000  # rows of a sheet or a CSV file, empty ones included
    max_uncompressed_bytes: int = 256 * 1024 * 1024  # a zip container's members together (DOCX, PPTX, XLSX, HWPX)
    max_compression_ratio: int = 200  # one zip member's uncompressed / compressed size
    seconds: float = 30.0
    memory_bytes: int = 1536 * 1024 * 1024  # the worker's address space
    ocr: str = "never"  # "never" | "auto" (pages without a text layer) | "always"
    ocr_languages: str = "kor+eng"
    encoding: str = ""  # text and CSV: "" detects it (charset-normalizer)

    @classmethod
    def from_settings(cls, files: FileSettings) -> ExtractionLimits:
        return cls(max_bytes=files.max_bytes, max_pages=files.max_pages, max_rows=files.max_rows,
                   max_uncompressed_bytes=files.max_uncompressed_bytes, seconds=files.seconds,
                   memory_bytes=files.memory_mb * 1024 * 1024, ocr=files.ocr, ocr_languages=files.ocr_languages)


class PageBuilder:
    """Pages of lines, as a reader meets page breaks, with the page limit checked as they grow. A break on an
    empty page is ignored unless that page holds a line (even an empty one), so page numbers follow the author's."""

    def __init__(self, limits: ExtractionLimits, what: str) -> None:
        self.pages: list[list[str]] = [[]]
        self.limits, self.what = limits, what

    def new_page(self) -> None:
        if self.pages[-1]:
            self.pages.append([])
        if len(self.pages) > self.limits.max_pages:
            raise ExtractionError(f"{self.what} of more than {self.limits.max_pages:,} pages")

    def add(self, line: str) -> None:
        self.pages[-1].append(line)

    def units(self) -> list[Unit]:
        return [Unit("\n".join(lines).strip(), {"page": i}) for i, lines in enumerate(self.pages, start=1)]


def open_zip(data: bytes, limits: ExtractionLimits, what: str) -> zipfile.ZipFile:
    """The container, once its central directory shows it is not a bomb. The declared sizes bound what reading
    can produce: zipfile stops a member at its declared size (and fails its CRC if the data says otherwise)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ExtractionError(f"corrupt or truncated {what} (not a valid zip container: {exc})") from exc
    infos = archive.infolist()
    for info in infos:
        if info.file_size > 1_000_000 and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
            raise ExtractionError(f"zip bomb: {info.filename} expands {info.file_size / max(info.compress_size, 1):,.0f}x "
                                  f"to {size_text(info.file_size)}")
    total = sum(info.file_size for info in infos)
    if total > limits.max_uncompressed_bytes:
        raise ExtractionError(f"zip bomb: {size_text(total)} uncompressed; at most {size_text(limits.max_uncompressed_bytes)}")
    return archive


def size_text(n: int) -> str:
    """Bytes for people: 2.1 GB, 512.0 KB, 100 bytes."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"
