"""Hancom Office documents: HWPX (OWPML, a zip of XML; KS X 6101) and HWP 5.0 (an OLE compound file of
zlib-compressed binary records), read page by page.

Written here by hand because no well-kept library reads both with pages: LlamaIndex's `HWPReader` reads HWP 5.0
text as one string (no pages, no tables, no HWPX), and the HWPX libraries on PyPI build documents rather than read
them. Both formats are documented by Hancom ("HWP 5.0 file format", "OWPML"). Like DOCX, neither stores layout:
pages are the ones the author made, an explicit page break on a paragraph (HWPX `pageBreak="1"`; HWP 5.0's
paragraph header break type 0x04) or a new section.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

from defusedxml import ElementTree

from searchsvc.ingest.extract.base import Extracted, ExtractionError, ExtractionLimits, PageBuilder, open_zip

_HP = "{http://www.hancom.co.kr/hwpml/2011/paragraph}"
_SECTION = re.compile(r"^Contents/section(\d+)\.xml$")


def read_hwpx(data: bytes, limits: ExtractionLimits) -> Extracted:
    archive = open_zip(data, limits, "HWPX")
    names = sorted((int(m.group(1)), m.group(0)) for name in archive.namelist() if (m := _SECTION.match(name)))
    if not names:
        raise ExtractionError("not an HWPX document (no Contents/section*.xml)")
    pages = PageBuilder(limits, "HWPX")
    for _, name in names:
        pages.new_page()  # a section starts a page
        try:
            root = ElementTree.fromstring(archive.read(name))
        except Exception as exc:  # defusedxml's refusals (entities) and ParseError alike
            raise ExtractionError(f"corrupt HWPX: {name} ({exc})") from exc
        for paragraph in root.findall(f"{_HP}p"):  # the section's own paragraphs; tables' are inside them
            if paragraph.get("pageBreak") == "1":
                pages.new_page()
            pages.add(_hwpx_text(paragraph))
    return Extracted("hwpx", pages.units(), _hwpx_title(archive))


def _hwpx_text(paragraph) -> str:
    parts = []
    for node in paragraph.iter():
        if node.tag == f"{_HP}t":
            parts.append("".join(node.itertext()))
        elif node.tag in (f"{_HP}lineBreak", f"{_HP}tc"):
            parts.append("\n")
        elif node.tag == f"{_HP}tab":
            parts.append("\t")
    return "".join(parts).strip("\n")


def _hwpx_title(archive) -> str:
    try:
        root = ElementTree.fromstring(archive.read("Contents/content.hpf"))
    except Exception:
        return ""
    title = next((node.text for node in root.iter() if node.tag.endswith("}title") and node.text), "")
    return title.strip()


# ---------------------------------------------------------------------------------------------------- HWP 5.0
_SIGNATURE = b"HWP Document File"
_PARA_HEADER, _PARA_TEXT = 66, 67  # HWPTAG_BEGIN (16) + 50, + 51
_PAGE_BREAK = 0x04  # paragraph header, break type: 0x01 section, 0x02 columns, 0x04 page, 0x08 column
# Control characters in PARA_TEXT (UTF-16 code units below 32): these take 8 units (the char, 6 of data, the
# char again); the rest take one. 9 (tab) and 10 (line break) and 13 (paragraph end) carry meaning.
_EIGHT_UNITS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}


def read_hwp(data: bytes, limits: ExtractionLimits) -> Extracted:
    import olefile

    if not olefile.isOleFile(io.BytesIO(data)):
        raise ExtractionError("not an HWP 5.0 file (HWP 3.x and other formats are not read)")
    try:  # DEFECT_INCORRECT: a truncated file or a FAT pointing past its end is refused, not read as zeros
        ole = olefile.OleFileIO(io.BytesIO(data), raise_defects=olefile.DEFECT_INCORRECT)
    except Exception as exc:  # olefile raises OSError and its own errors on damaged files
        raise ExtractionError(f"corrupt or truncated HWP ({exc})") from exc
    with ole:
        if not ole.exists("FileHeader"):
            raise ExtractionError("not an HWP file (an OLE file without an HWP header: a legacy .doc/.xls/.ppt?)")
        try:
            header = ole.openstream("FileHeader").read()
        except OSError as exc:  # olefile.OleFileError is an OSError
            raise ExtractionError(f"corrupt or truncated HWP ({exc})") from exc
        if not header.startswith(_SIGNATURE) or len(header) < 40:
            raise ExtractionError("not an HWP file (an OLE file without an HWP header: a legacy .doc/.xls/.ppt?)")
        (flags,) = struct.unpack_from("<I", header, 36)
        compressed, encrypted, distribution = flags & 1, flags & 2, flags & 4
        if encrypted:
            raise ExtractionError("encrypted HWP (a password is needed to open it)")
        if distribution:
            raise ExtractionError("HWP distribution document (its text is encrypted for viewing only)")
        sections = sorted((int(path[1][len("Section"):]), path) for path in ole.listdir()
                          if len(path) == 2 and path[0] == "BodyText" and path[1].startswith("Section") and path[1][7:].isdigit())
        if not sections:
            raise ExtractionError("corrupt HWP (no BodyText sections)")
        pages = PageBuilder(limits, "HWP")
        budget = limits.max_uncompressed_bytes
        for _, path in sections:
            try:
                raw = ole.openstream(path).read()
            except OSError as exc:  # olefile.OleFileError is an OSError
                raise ExtractionError(f"corrupt or truncated HWP ({exc})") from exc
            body = _inflate(raw, budget) if compressed else raw
            budget -= len(body)
            pages.new_page()
            _hwp_section(body, pages)
        title = ""
        try:
            title = (ole.get_metadata().title or b"").decode("utf-8", "replace") if ole.exists("\x05HwpSummaryInformation") else ""
        except Exception:
            pass
    return Extracted("hwp", pages.units(), title.strip())


def _inflate(raw: bytes, budget: int) -> bytes:
    inflater = zlib.decompressobj(-15)  # raw deflate, no zlib header
    try:
        body = inflater.decompress(raw, budget + 1)
    except zlib.error as exc:
        raise ExtractionError(f"corrupt HWP (a section does not decompress: {exc})") from exc
    if len(body) > budget:
        raise ExtractionError("zip bomb: an HWP section expands past the uncompressed limit")
    return body


def _hwp_section(body: bytes, pages: PageBuilder) -> None:
    at, end = 0, len(body)
    while at + 4 <= end:
        (head,) = struct.unpack_from("<I", body, at)
        tag, level, size = head & 0x3FF, (head >> 10) & 0x3FF, head >> 20
        at += 4
        if size == 0xFFF:
            if at + 4 > end:
                raise ExtractionError("corrupt or truncated HWP (a record header is cut off)")
            (size,) = struct.unpack_from("<I", body, at)
            at += 4
        if at + size > end:
            raise ExtractionError("corrupt or truncated HWP (a record runs past its section)")
        payload = body[at:at + size]
        at += size
        if tag == _PARA_HEADER and level == 0 and len(payload) >= 12 and payload[11] & _PAGE_BREAK:
            pages.new_page()
        elif tag == _PARA_TEXT:
            pages.add(_para_text(payload))


def _para_text(payload: bytes) -> str:
    units = struct.unpack(f"<{len(payload) // 2}H", payload[: len(payload) // 2 * 2])
    out, i = [], 0
    while i < len(units):
        c = units[i]
        if c >= 32:
            out.append(chr(c))
            i += 1
        elif c in _EIGHT_UNITS:
            if c == 9:
                out.append("\t")
            i += 8
        else:
            if c == 10:
                out.append("\n")
            i += 1
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16", "replace")
