"""Office Open XML: DOCX by page (python-docx), PPTX by slide (python-pptx), XLSX by row (openpyxl).

A DOCX file holds no layout, so its pages are the ones its author made: an explicit page break (`w:br
w:type="page"`), a paragraph that starts on a new page (`w:pageBreakBefore`) or a section that does (`w:sectPr`
of a next-page section). Word's own soft page boundaries (`w:lastRenderedPageBreak`) are a rendering of one
printer's layout and are not used. Headings stay in the text, each on its own line.
"""

from __future__ import annotations

import io
import re
import zipfile

from searchsvc.domain.types import Unit
from searchsvc.ingest.extract.base import Extracted, ExtractionError, ExtractionLimits, PageBuilder, open_zip

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def read_docx(data: bytes, limits: ExtractionLimits) -> Extracted:
    import docx
    from docx.table import Table

    open_zip(data, limits, "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ExtractionError(f"corrupt DOCX ({exc})") from exc
    pages = PageBuilder(limits, "DOCX")
    title = document.core_properties.title or ""
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                pages.add(" | ".join(cell.text.strip() for cell in row.cells))
            continue
        p = block._p
        ppr = p.pPr
        if ppr is not None and ppr.find(f"{_W}pageBreakBefore") is not None:
            pages.new_page()
        line: list[str] = []
        for node in p.iter(f"{_W}t", f"{_W}br", f"{_W}tab", f"{_W}cr"):
            if node.tag == f"{_W}t":
                line.append(node.text or "")
            elif node.tag == f"{_W}tab":
                line.append("\t")
            elif node.get(f"{_W}type") == "page":
                pages.add("".join(line))
                line = []
                pages.new_page()
            else:
                line.append("\n")
        pages.add("".join(line))
        if not title and ppr is not None and (style := ppr.find(f"{_W}pStyle")) is not None \
                and style.get(f"{_W}val", "").startswith(("Heading", "Title")):  # the style id: no styles-part lookup
            title = "".join(line).strip()
        sect = ppr.find(f"{_W}sectPr") if ppr is not None else None
        if sect is not None:
            kind = sect.find(f"{_W}type")
            if kind is None or kind.get(f"{_W}val") in (None, "nextPage", "oddPage", "evenPage"):
                pages.new_page()
    return Extracted("docx", pages.units(), title)


def read_pptx(data: bytes, limits: ExtractionLimits) -> Extracted:
    import pptx
    from pptx.exc import PackageNotFoundError

    open_zip(data, limits, "PPTX")
    try:
        deck = pptx.Presentation(io.BytesIO(data))
    except (KeyError, ValueError, zipfile.BadZipFile, PackageNotFoundError) as exc:
        raise ExtractionError(f"corrupt PPTX ({exc})") from exc
    if len(deck.slides) > limits.max_pages:
        raise ExtractionError(f"PPTX of {len(deck.slides):,} slides; at most {limits.max_pages:,}")
    units = []
    for number, slide in enumerate(deck.slides, start=1):
        lines = [line for shape in slide.shapes for line in _shape_lines(shape)]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            lines.append(slide.notes_slide.notes_text_frame.text)
        units.append(Unit("\n".join(line for line in lines if line.strip()), {"slide": number}))
    title = deck.core_properties.title or next((u.text.split("\n", 1)[0] for u in units if u.text), "")
    return Extracted("pptx", units, title)


def _shape_lines(shape) -> list[str]:
    from pptx.shapes.group import GroupShape

    if isinstance(shape, GroupShape):
        return [line for child in shape.shapes for line in _shape_lines(child)]
    if getattr(shape, "has_table", False) and shape.has_table:
        return [" | ".join(cell.text.strip() for cell in row.cells) for row in shape.table.rows]
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        return [p.text for p in shape.text_frame.paragraphs]
    return []


_ROW = re.compile(rb"<(?:\w+:)?row[\s>/]")


def _count_rows(archive: zipfile.ZipFile, name: str) -> int:
    count, tail = 0, b""
    with archive.open(name) as f:
        while block := f.read(1 << 20):
            window = tail + block
            count += len(_ROW.findall(window))
            tail = window[-16:]  # a tag cut at the boundary is counted in the next window...
            count -= len(_ROW.findall(tail))  # ...and not twice
    return count


def read_xlsx(data: bytes, limits: ExtractionLimits) -> Extracted:
    """Each non-empty row of each sheet is a unit, written `header: value` per cell when the sheet's first
    row is a header (all text), else its values separated by ` | `."""
    import openpyxl

    archive = open_zip(data, limits, "XLSX")
    for name in archive.namelist():  # counted before parsing: a sheet formatted to its last row holds a million
        if name.startswith("xl/worksheets/") and name.endswith(".xml"):  # empty rows that openpyxl walks slowly
            rows = _count_rows(archive, name)
            if rows > limits.max_rows:
                raise ExtractionError(f"a sheet of {rows:,} rows; at most {limits.max_rows:,}")
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise ExtractionError(f"corrupt XLSX ({exc})") from exc
    units: list[Unit] = []
    try:
        for sheet in book.worksheets:
            header: list[str] | None = None
            for number, row in enumerate(sheet.iter_rows(values_only=True), start=1):
                if number > limits.max_rows:
                    raise ExtractionError(f"sheet {sheet.title!r} has more than {limits.max_rows:,} rows")
                values = ["" if v is None else str(v).strip() for v in row]
                if not any(values):
                    continue
                if header is None and all(isinstance(v, str) for v in row if v is not None):
                    header = values
                    continue
                header = header or []
                cells = [f"{header[i]}: {v}" if i < len(header) and header[i] else v for i, v in enumerate(values) if v]
                units.append(Unit((" | " if not header else "; ").join(cells), {"sheet": sheet.title, "row": number}))
    finally:
        book.close()
    return Extracted("xlsx", units, book.properties.title or "")
