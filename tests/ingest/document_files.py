"""Real office files with Korean text, built at test time (nothing with an unclear licence is committed): PDF with
fpdf2 and Debian's Nanum font, DOCX with python-docx, PPTX with python-pptx, XLSX with openpyxl, HWPX as the zip
of OWPML XML that Hancom Office writes; and the hostile ones (bombs, encrypted, truncated, huge but empty)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

NANUM = Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf")


def pdf(pages: list[str], encrypt_with: str = "", title: str = "테스트 문서") -> bytes:
    from fpdf import FPDF

    doc = FPDF()
    doc.add_font("nanum", fname=str(NANUM))
    doc.set_font("nanum", size=12)
    doc.set_title(title)
    for text in pages:
        doc.add_page()
        if text:
            doc.multi_cell(0, 8, text)
    if encrypt_with:
        doc.set_encryption(owner_password="owner", user_password=encrypt_with)
    return bytes(doc.output())


def docx(pages: list[list[str]], heading: str = "") -> bytes:
    import docx as python_docx
    from docx.enum.text import WD_BREAK

    document = python_docx.Document()
    if heading:
        document.add_heading(heading, level=1)
    for i, paragraphs in enumerate(pages):
        if i:
            document.paragraphs[-1].add_run().add_break(WD_BREAK.PAGE)
        for text in paragraphs:
            document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx(slides: list[str]) -> bytes:
    import pptx as python_pptx

    deck = python_pptx.Presentation()
    for text in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = text.split("\n", 1)[0]
        slide.placeholders[1].text = text.split("\n", 1)[-1]
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx(sheets: dict[str, list[list[object]]]) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


_HPF = """<?xml version="1.0" encoding="UTF-8"?>
<opf:package xmlns:opf="http://www.idpf.org/2007/opf/" xmlns:dc="http://purl.org/dc/elements/1.1/" version="">
<opf:metadata><opf:title>{title}</opf:title></opf:metadata>
<opf:manifest><opf:item id="section0" href="Contents/section0.xml" media-type="application/xml"/></opf:manifest>
<opf:spine><opf:itemref idref="section0" linear="yes"/></opf:spine></opf:package>"""
_SECTION = """<?xml version="1.0" encoding="UTF-8"?>
<hs:sec xmlns:hs="http://www.hancom.co.kr/hwpml/2011/section" xmlns:hp="http://www.hancom.co.kr/hwpml/2011/paragraph">
{paragraphs}</hs:sec>"""
_PARA = '<hp:p id="{id}" paraPrIDRef="0" styleIDRef="0" pageBreak="{page_break}" columnBreak="0" merged="0">' \
        '<hp:run charPrIDRef="0"><hp:t>{text}</hp:t></hp:run></hp:p>\n'


def hwpx(pages: list[list[str]], title: str = "") -> bytes:
    """An HWPX as Hancom Office lays it out: `mimetype` first and stored, the manifest, one section whose
    paragraphs start a page with pageBreak="1"."""
    from xml.sax.saxutils import escape

    paragraphs, n = [], 0
    for page, texts in enumerate(pages):
        for i, text in enumerate(texts):
            paragraphs.append(_PARA.format(id=n, page_break=int(page > 0 and i == 0), text=escape(text)))
            n += 1
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/hwp+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr("Contents/content.hpf", _HPF.format(title=escape(title)))
        z.writestr("Contents/section0.xml", _SECTION.format(paragraphs="".join(paragraphs)))
    return out.getvalue()


def zip_bomb(kind: str = "docx", gigabytes: float = 0.3) -> bytes:
    """A valid-looking container with one member that inflates to `gigabytes` of zeros (written by streaming
    deflate at level 1: under a second for 0.3 GB, and little memory)."""
    member = {"docx": "word/document.xml", "hwpx": "Contents/section0.xml", "pptx": "ppt/slides/slide1.xml",
              "xlsx": "xl/worksheets/sheet1.xml"}[kind]
    out = io.BytesIO()
    chunk = b"\0" * (1 << 24)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:  # 229x: fast to build
        if kind == "hwpx":
            z.writestr(zipfile.ZipInfo("mimetype"), "application/hwp+zip", compress_type=zipfile.ZIP_STORED)
        with z.open(member, "w", force_zip64=True) as f:
            for _ in range(int(gigabytes * (1 << 30)) // len(chunk)):
                f.write(chunk)
    return out.getvalue()


def empty_pages_pdf(count: int) -> bytes:
    from fpdf import FPDF

    doc = FPDF()
    for _ in range(count):
        doc.add_page()
    return bytes(doc.output())


def xlsx_with_empty_rows(rows: int) -> bytes:
    """One text cell, then `rows` rows that carry a style but no value (what a sheet formatted to the bottom
    holds)."""
    out = io.BytesIO()
    body = "".join(f'<row r="{r}"><c r="A{r}" s="0"/></row>' for r in range(2, rows + 2))
    sheet = ('<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
             'spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>첫 행</t></is></c></row>'
             f"{body}</sheetData></worksheet>")
    base = xlsx({"Sheet": [["placeholder"]]})
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, sheet if info.filename == "xl/worksheets/sheet1.xml" else data)
    return out.getvalue()
