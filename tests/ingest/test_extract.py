"""Extraction on real files with Korean text built at test time (document_files.py): the text of each page, slide
and row with its location, titles, detected encodings; and every hostile file refused with its reason, quickly."""

from __future__ import annotations

import time

import pytest

from searchsvc.ingest.extract import ExtractionError, ExtractionLimits, extract, kind_of
from searchsvc.lab import document_files as files

pytestmark = pytest.mark.skipif(not files.NANUM.exists(), reason="Debian's fonts-nanum is not installed (.ci/run installs it)")


def units(extracted):
    return [(u.location, u.text) for u in extracted.units]


def test_pdf_pages_keep_their_numbers_and_skip_blank_ones():
    data = files.pdf(["서울은 대한민국의 수도이다.", "", "한강이 도시를 가로질러 흐른다."])
    got = extract(data, "report.pdf")
    assert got.kind == "pdf" and got.title == "테스트 문서"
    assert units(got) == [({"page": 1}, "서울은 대한민국의 수도이다."), ({"page": 3}, "한강이 도시를 가로질러 흐른다.")]


def test_docx_explicit_page_breaks_make_pages_and_headings_stay():
    data = files.docx([["첫 쪽 문단입니다."], ["둘째 쪽 문단.", "둘째 쪽 둘째 문단."]], heading="보고서 제목")
    got = extract(data, "보고서.docx")
    assert got.title == "보고서 제목"
    assert units(got) == [({"page": 1}, "보고서 제목\n첫 쪽 문단입니다."), ({"page": 2}, "둘째 쪽 문단.\n둘째 쪽 둘째 문단.")]


def test_pptx_one_unit_per_slide():
    got = extract(files.pptx(["분기 실적\n매출이 10% 늘었다.", "전망\n내년에도 성장한다."]), "deck.pptx")
    assert units(got) == [({"slide": 1}, "분기 실적\n매출이 10% 늘었다."), ({"slide": 2}, "전망\n내년에도 성장한다.")]


def test_xlsx_rows_with_their_sheet_and_header():
    data = files.xlsx({"매출": [["지역", "금액"], ["서울", 100], [None, None], ["부산", 50]], "메모": [["비고"], ["확인 필요"]]})
    got = extract(data, "sales.xlsx")
    assert units(got) == [({"sheet": "매출", "row": 2}, "지역: 서울; 금액: 100"), ({"sheet": "매출", "row": 4}, "지역: 부산; 금액: 50"),
                          ({"sheet": "메모", "row": 2}, "비고: 확인 필요")]


def test_hwpx_page_breaks_and_title():
    data = files.hwpx([["한글 문서의 첫 쪽."], ["둘째 쪽은 쪽 나누기로 시작한다.", "같은 쪽의 다음 문단."]], title="공문")
    got = extract(data, "공문.hwpx")
    assert got.kind == "hwpx" and got.title == "공문"
    assert units(got) == [({"page": 1}, "한글 문서의 첫 쪽."), ({"page": 2}, "둘째 쪽은 쪽 나누기로 시작한다.\n같은 쪽의 다음 문단.")]


def test_hwp5_pages_from_page_break_flags_and_sections_compressed_or_not():
    """HWP 5.0 as an OLE compound file (built by document_files.hwp: no library writes the format)."""
    sections = [[["첫 구역 첫 쪽."], ["둘째 쪽 첫 문단.", "둘째 쪽 둘째 문단."]], [["둘째 구역은 새 쪽이다."]]]
    for compressed in (True, False):
        got = extract(files.hwp(sections, compressed=compressed), "공문.hwp")
        assert got.kind == "hwp"
        assert units(got) == [({"page": 1}, "첫 구역 첫 쪽."), ({"page": 2}, "둘째 쪽 첫 문단.\n둘째 쪽 둘째 문단."),
                              ({"page": 3}, "둘째 구역은 새 쪽이다.")]


def test_an_hwp5_section_that_inflates_past_the_limit_is_a_bomb():
    data = files.hwp([[["가" * 3000] * 20]])
    with pytest.raises(ExtractionError, match="zip bomb: an HWP section expands past the uncompressed limit"):
        extract(data, "big.hwp", limits=ExtractionLimits(max_uncompressed_bytes=50_000))


def test_ocr_auto_reads_only_the_pages_without_a_text_layer():
    pytest.importorskip("pytesseract", reason="the `ocr` extra is not installed (make install and .ci/run install it)")
    import shutil

    if shutil.which("tesseract") is None:
        pytest.skip("Debian's tesseract-ocr is not installed (.ci/run installs it and tesseract-ocr-kor)")
    data = files.scanned_pdf(["타자로 친 첫 쪽이다.", "스캔한 둘째 쪽이다.\n대한민국의 수도는 서울이다.\n한강은 서울을 흐른다."],
                             typed=frozenset({1}))
    with pytest.raises(ExtractionError, match="OCR is off"):  # "never": the scanned page has no text to read
        extract(files.scanned_pdf(["스캔한 쪽"]), "scan.pdf")
    got = extract(data, "mixed.pdf", limits=ExtractionLimits(ocr="auto"))
    assert got.ocr_pages == 1 and got.units[0].text.strip() == "타자로 친 첫 쪽이다."
    assert got.units[1].location == {"page": 2} and "대한민국의 수도는 서울이다" in got.units[1].text


def test_html_main_content_and_title_without_boilerplate():
    page = ("<html><head><title>한강 안내</title></head><body><nav>홈 | 메뉴 | 로그인</nav><article><h1>한강</h1>"
            "<p>한강은 서울을 가로질러 흐르는 강이다. 길이는 약 494킬로미터이며 여러 다리가 놓여 있다.</p>"
            "<p>강변에는 공원과 자전거 길이 이어져 시민들이 산책과 운동을 즐긴다.</p></article>"
            "<footer>저작권 2026 | 개인정보처리방침</footer><script>var x = 1;</script></body></html>")
    got = extract(page.encode(), "han.html")
    assert got.title == "한강 안내"
    assert "494킬로미터" in got.text and "자전거 길" in got.text
    assert "로그인" not in got.text and "var x" not in got.text


def test_cp949_text_and_csv_are_detected():
    text = "김치는 배추와 무를 소금에 절여 발효시킨 음식이다. 한국의 대표적인 반찬이다.\n" * 3
    assert extract(text.encode("cp949"), "kimchi.txt").text == text
    csv = "document,title\n첫 번째 기사 본문입니다,경제\n두 번째 기사 본문입니다,사회\n".encode("cp949")
    assert units(extract(csv, "news.csv")) == [({"row": 2}, "document: 첫 번째 기사 본문입니다; title: 경제"),
                                               ({"row": 3}, "document: 두 번째 기사 본문입니다; title: 사회")]
    with pytest.raises(ExtractionError, match="not utf-8"):
        extract(csv, "news.csv", limits=ExtractionLimits(encoding="utf-8"))


def test_kind_comes_from_content_type_then_name_then_bytes():
    assert kind_of("x.bin", "application/pdf") == "pdf"
    assert kind_of("보고서.HWPX") == "hwpx"
    assert kind_of("", "", b"%PDF-1.7\n") == "pdf"
    assert kind_of("notes.bin", "", b"\x00\x01") is None


@pytest.mark.parametrize("name, make, reason", [
    ("bomb.docx", lambda: files.zip_bomb("docx"), r"zip bomb: word/document.xml expands \d+x to 3\d\d\.\d MB"),
    ("bomb.hwpx", lambda: files.zip_bomb("hwpx"), r"zip bomb: Contents/section0.xml expands"),
    ("empty.pdf", lambda: files.empty_pages_pdf(10_000), r"PDF of 10,000 pages; at most 2,000"),
    ("secret.pdf", lambda: files.pdf(["비밀"], encrypt_with="pw"), r"encrypted PDF"),
    ("cut.pdf", lambda: files.pdf(["잘린 파일"])[:400], r"corrupt or truncated PDF"),
    ("cut.docx", lambda: files.docx([["잘린 파일"]])[:600], r"corrupt or truncated DOCX"),
    ("cut.hwpx", lambda: files.hwpx([["잘린 파일"]])[:200], r"corrupt or truncated HWPX"),
    ("rows.xlsx", lambda: files.xlsx_with_empty_rows(1_000_000), r"a sheet of 1,000,001 rows; at most 100,000"),
    ("blank.pdf", lambda: files.empty_pages_pdf(3), r"no text in this pdf file \(a scan\? OCR is off\)"),
    ("tool.exe", lambda: b"MZ\x90\x00", r"unsupported file type: tool.exe"),
    ("old.hwp", lambda: b"HWP Document File V3.00 \x1a\x01\x02\x03\x04\x05", r"not an HWP 5.0 file"),
    ("locked.hwp", lambda: files.hwp([[["비밀"]]], encrypted=True), r"encrypted HWP"),
    ("viewer.hwp", lambda: files.hwp([[["배포용"]]], distribution=True), r"HWP distribution document"),
    ("legacy.hwp", files.ole_without_hwp_header, r"not an HWP file \(an OLE file without an HWP header"),
    ("cut.hwp", lambda: files.hwp([[["잘린 파일"] * 50]])[:3000], r"corrupt"),
])
def test_hostile_and_broken_files_are_refused_with_their_reason(name, make, reason):
    data = make()
    started = time.perf_counter()
    with pytest.raises(ExtractionError, match=reason):
        extract(data, name)
    assert time.perf_counter() - started < 2  # refused from the container's directory, not by reading it all
