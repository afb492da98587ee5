"""Real office files with Korean text, built when needed (so nothing with an unclear licence is committed): PDF with
fpdf2 (a dev dependency) and Debian's Nanum font, DOCX with python-docx, PPTX with python-pptx, XLSX with openpyxl,
HWPX as the zip of OWPML XML that Hancom Office writes, HWP 5.0 as an OLE compound file; and hostile ones (bombs,
encrypted, truncated, huge but empty). The tests, `searchsvc bench --documents` and examples/build_quickstart.py
build their files here."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

NANUM = Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf")


def pdf(pages: list[str], encrypt_with: str = "", title: str = "테스트 문서") -> bytes:
    """One PDF page per text: a page is made as tall as its text needs (A4 width), so a long text never flows onto
    a second page and page numbers stay the texts' positions."""
    from fpdf import FPDF

    doc = FPDF()
    doc.add_font("nanum", fname=str(NANUM))
    doc.set_font("nanum", size=12)
    doc.set_title(title)
    doc.set_auto_page_break(False)
    ruler = FPDF()  # measures each text's lines on a page of its own
    ruler.add_font("nanum", fname=str(NANUM))
    ruler.set_font("nanum", size=12)
    ruler.add_page()
    for text in pages:
        lines = len(ruler.multi_cell(190, 8, text, dry_run=True, output="LINES")) if text else 0
        doc.add_page(format=(210, max(297, 20 + 8 * lines + 20)))
        if text:
            doc.multi_cell(190, 8, text)
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


# ------------------------------------------------------------------------------------------------------ HWP 5.0
# No library writes HWP 5.0 (Hancom's own software does), so the tests build it: an OLE compound file (MS-CFB,
# version 3, written below) holding `FileHeader` and `BodyText/Section<n>` as Hancom's "HWP 5.0 file format" lays
# them out. Streams are padded to 4,096 bytes so none falls in the mini stream, which keeps the writer small.
_FREE, _END, _FATSECT, _NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


def _record(tag: int, level: int, payload: bytes) -> bytes:
    import struct

    if len(payload) < 0xFFF:
        return struct.pack("<I", tag | level << 10 | len(payload) << 20) + payload
    return struct.pack("<II", tag | level << 10 | 0xFFF << 20, len(payload)) + payload


def _hwp_section(pages: list[list[str]], first_page_break: bool = False) -> bytes:
    import struct

    out = b""
    for p, paragraphs in enumerate(pages):
        for i, text in enumerate(paragraphs):
            page_break = 0x04 if i == 0 and (p > 0 or first_page_break) else 0
            out += _record(66, 0, struct.pack("<IIHBB", len(text) + 1, 0, 0, 0, page_break) + b"\0" * 10)
            out += _record(67, 1, (text + "\r").encode("utf-16-le"))
    return out


def _cfb(streams: dict[str, bytes]) -> bytes:
    """A compound file with these streams, named "Storage/Stream" or "Stream" (one level of storages)."""
    import struct

    streams = {name: data + b"\0" * max(0, 4096 - len(data)) for name, data in streams.items()}
    # Directory entries: root, then each storage, then each stream; children linked as a right-leaning chain in
    # the compound file's name order (length, then upper case), which is a valid (if unbalanced) search tree.
    storages = sorted({n.split("/")[0] for n in streams if "/" in n})
    entries = [{"name": "Root Entry", "type": 5, "children": []}]
    index = {}
    for s in storages:
        index[s] = len(entries)
        entries.append({"name": s, "type": 1, "children": []})
        entries[0]["children"].append(index[s])
    for n in streams:
        parent = index[n.split("/")[0]] if "/" in n else 0
        index[n] = len(entries)
        entries.append({"name": n.split("/")[-1], "type": 2, "children": [], "data": streams[n]})
        entries[parent]["children"].append(index[n])
    dir_sectors = (len(entries) * 128 + 511) // 512
    data_sectors = sum(len(e.get("data", b"")) // 512 + (len(e.get("data", b"")) % 512 > 0) for e in entries)
    fat_sectors = 1
    while fat_sectors * 128 < fat_sectors + dir_sectors + data_sectors:
        fat_sectors += 1
    fat = [_FATSECT] * fat_sectors
    first_dir = len(fat)
    fat += [i + 1 for i in range(first_dir, first_dir + dir_sectors - 1)] + [_END]
    body = b""
    for e in entries:
        e["start"], e["size"] = _END, 0
        if "data" in e:
            n = (len(e["data"]) + 511) // 512
            e["start"], e["size"] = len(fat), len(e["data"])
            fat += [len(fat) + i + 1 for i in range(n - 1)] + [_END]
            body += e["data"] + b"\0" * (n * 512 - len(e["data"]))
    fat += [_FREE] * (fat_sectors * 128 - len(fat))

    def key(i):
        return (len(entries[i]["name"]), entries[i]["name"].upper())

    for e in entries:
        e.setdefault("right", _NOSTREAM)
        e["child"] = _NOSTREAM
    for e in entries:
        kids = sorted(e["children"], key=key)
        if kids:
            e["child"] = kids[0]
            for a, b in zip(kids, kids[1:]):
                entries[a]["right"] = b
    directory = b""
    for e in entries:
        name = (e["name"] + "\0").encode("utf-16-le")
        directory += struct.pack("<64sHBBIII16sIQQIQ", name, len(name), e["type"], 1, _NOSTREAM, e["right"], e["child"],
                                 b"\0" * 16, 0, 0, 0, e["start"], e["size"])
    directory += b"\0" * (dir_sectors * 512 - len(directory))
    difat = list(range(fat_sectors)) + [_FREE] * (109 - fat_sectors)
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII109I", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16, 0x3E, 3, 0xFFFE,
                         9, 6, b"\0" * 6, 0, fat_sectors, first_dir, 0, 4096, _END, 0, _END, 0, *difat)
    return header + struct.pack(f"<{len(fat)}I", *fat) + directory + body


def hwp(sections: list[list[list[str]]], compressed: bool = True, encrypted: bool = False, distribution: bool = False) -> bytes:
    """An HWP 5.0 document: `sections` of pages of paragraphs; a page after the first starts with a paragraph
    whose header has the page-break flag."""
    import struct
    import zlib

    flags = int(compressed) | int(encrypted) << 1 | int(distribution) << 2
    header = b"HWP Document File".ljust(32, b"\0") + struct.pack("<II", 0x05000300, flags) + b"\0" * 216
    streams = {"FileHeader": header}
    for n, pages in enumerate(sections):
        body = _hwp_section(pages)
        if compressed:
            deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
            body = deflate.compress(body) + deflate.flush()
        streams[f"BodyText/Section{n}"] = body
    return _cfb(streams)


def ole_without_hwp_header() -> bytes:
    """An OLE file that is not HWP (a legacy Office file has streams like these)."""
    return _cfb({"WordDocument": b"\xec\xa5" + b"\0" * 100})


def scanned_pdf(pages: list[str], typed: frozenset[int] = frozenset()) -> bytes:
    """A PDF whose pages are pictures of text with no text layer, as a scanner makes them: each text drawn with
    Nanum Gothic into a 150 dpi image (Pillow) on an A4 page. The pages numbered in `typed` (1-based) are written
    as text instead, as a PDF that mixes typed and scanned pages has them."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(NANUM), 25)  # 12 pt at 150 dpi
    doc = FPDF()
    doc.add_font("nanum", fname=str(NANUM))
    doc.set_font("nanum", size=12)
    for number, text in enumerate(pages, start=1):
        doc.add_page()
        if number in typed:
            doc.multi_cell(0, 8, text)
            continue
        image = Image.new("L", (1240, 1754), 255)
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(text.split("\n")):
            draw.text((150, 150 + 45 * i), line, font=font, fill=0)
        doc.image(image, x=0, y=0, w=210, h=297)
    return bytes(doc.output())
