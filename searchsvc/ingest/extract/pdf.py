"""PDF: the text layer page by page (pypdfium2: PDFium, the engine Chrome uses), or OCR where a page has none.

pypdfium2 over pypdf: both read AutoRAG-ko's Korean pages back exactly, and PDFium is 8 times faster per page
(docs/benchmarks.md, "Documents"). `ocr`: "never" keeps text layers only; "auto" runs Tesseract on pages without
a text layer (scans); "always" on every page.
"""

from __future__ import annotations

import pypdfium2 as pdfium

from searchsvc.domain.types import Unit
from searchsvc.ingest.extract.base import Extracted, ExtractionError, ExtractionLimits

# PDFium's FPDF_GetLastError codes (fpdfview.h) for a file that opens only with what we do not have.
_PASSWORD, _SECURITY = 4, 5


def read(data: bytes, limits: ExtractionLimits) -> Extracted:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == _PASSWORD or "password" in str(exc).lower():
            raise ExtractionError("encrypted PDF (a password is needed to open it)") from exc
        if code == _SECURITY:
            raise ExtractionError("PDF with an unsupported security handler") from exc
        raise ExtractionError(f"corrupt or truncated PDF ({exc})") from exc
    try:
        pages = len(pdf)
        if pages > limits.max_pages:
            raise ExtractionError(f"PDF of {pages:,} pages; at most {limits.max_pages:,}")
        units, ocr_pages = [], 0
        for number in range(1, pages + 1):
            page = pdf[number - 1]
            try:
                textpage = page.get_textpage()
                text = textpage.get_text_range()
                textpage.close()
                if limits.ocr == "always" or (limits.ocr == "auto" and not text.strip()):
                    text = _ocr(page, limits)
                    ocr_pages += 1
            finally:
                page.close()
            units.append(Unit(_clean(text), {"page": number}))
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
    finally:
        pdf.close()
    return Extracted("pdf", units, title, ocr_pages)


def _clean(text: str) -> str:
    # PDFium ends lines with \r\n and marks soft hyphens and form feeds; keep the lines, drop the rest.
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "").replace("\ufffe", "").replace("\x0c", "\n")


def _ocr(page: pdfium.PdfPage, limits: ExtractionLimits) -> str:
    """Tesseract on the page rendered at 300 dpi (the optional `ocr` extra and Debian's tesseract-ocr-kor)."""
    try:
        import pytesseract
    except ImportError as exc:
        raise ExtractionError("this PDF needs OCR (pages without a text layer), and OCR is not installed: "
                              "pip install 'searchsvc[ocr]' and Debian's tesseract-ocr tesseract-ocr-kor") from exc
    image = page.render(scale=300 / 72).to_pil()
    try:
        # A single column of text of variable sizes (--psm 4): Tesseract 5.3's automatic layout analysis (--psm 3,
        # its default) found no text block at all on Nanum Gothic pages rendered at 300 dpi, where --psm 4 read them.
        return pytesseract.image_to_string(image, lang=limits.ocr_languages, config="--psm 4")
    except pytesseract.TesseractNotFoundError as exc:
        raise ExtractionError("this PDF needs OCR, and the tesseract binary is not installed (Debian: tesseract-ocr "
                              "tesseract-ocr-kor)") from exc
    except pytesseract.TesseractError as exc:
        raise ExtractionError(f"OCR failed: {exc}") from exc
