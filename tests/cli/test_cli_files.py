"""`searchsvc index` on what people keep: a folder of mixed files walked recursively (the server reads them; hits
name their page), a summary of failures by reason and skipped files by extension, a non-zero exit when nothing
could be indexed, and a CP949 CSV with its own column names mapped by flags. Each command a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import server_settings
from searchsvc.lab import document_files as files

pytestmark = pytest.mark.skipif(not files.NANUM.exists(), reason="Debian's fonts-nanum is not installed (.ci/run installs it)")
ENV = {**os.environ, "COLUMNS": "220", "SEARCHSVC_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from searchsvc.api.server import BackgroundServer

    with BackgroundServer(server_settings(tmp_path_factory.mktemp("idx"), default_language="ko")) as server:
        yield server.target


def cli(target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchsvc", *args, "--target", target], capture_output=True, text=True,
                          timeout=300, env=ENV)


def test_a_folder_of_mixed_files_is_indexed_by_page_with_a_summary(target, tmp_path):
    (tmp_path / "reports" / "2026").mkdir(parents=True)
    (tmp_path / "reports" / "2026" / "report.pdf").write_bytes(files.pdf(["첫 쪽은 서론이다.", "둘째 쪽에 제주도 감귤 수확량이 나온다."]))
    (tmp_path / "reports" / "memo.docx").write_bytes(files.docx([["회의록 첫 쪽."], ["다음 회의는 화요일이다."]]))
    (tmp_path / "공지.hwpx").write_bytes(files.hwpx([["전 직원 건강검진 안내."]]))
    (tmp_path / "readme.md").write_text("# 안내\n\n이 폴더는 시험용이다.\n")
    (tmp_path / "broken.pdf").write_bytes(files.pdf(["잘린 파일"])[:300])
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.md").write_text("숨은 파일")

    run = cli(target, "index", str(tmp_path), "--collection", "folder")
    assert run.returncode == 1, run.stdout + run.stderr  # one file was rejected
    assert "indexed 4 documents" in run.stdout and "1 rejected" in run.stdout
    assert "1 × documents[i].content: corrupt or truncated PDF" in run.stdout
    assert "skipped (not a type searchsvc reads): 1 × .bin" in run.stdout

    found = cli(target, "search", "folder", "감귤 수확량", "-k", "1")
    assert found.returncode == 0 and "reports/2026/report.pdf p.2" in found.stdout, found.stdout
    found = cli(target, "search", "folder", "다음 회의", "-k", "1", "--mode", "keyword")
    assert "reports/memo.docx p.2" in found.stdout, found.stdout


def test_nothing_indexed_from_a_folder_exits_non_zero_and_says_why(target, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x00")
    (tmp_path / "b.exe").write_bytes(b"MZ")
    run = cli(target, "index", str(tmp_path), "--collection", "nothing")
    assert run.returncode == 1
    assert "nothing was indexed" in run.stdout and "no file of a type searchsvc reads" in run.stdout


def test_a_cp949_csv_with_its_own_columns_through_flags(target, tmp_path):
    news = tmp_path / "news.csv"
    news.write_bytes(("document,title,date,link\n"
                      "한국은행이 기준금리를 동결했다.,금리 동결,2026-11-30,https://news.example/1\n"
                      "서울 지하철 요금이 오른다.,요금 인상,2026-12-01,https://news.example/2\n").encode("cp949"))
    run = cli(target, "index", str(news), "--collection", "news", "--id-column", "link", "--text-columns", "document",
              "--title-column", "title")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "indexed 2 documents" in run.stdout
    found = cli(target, "search", "news", "기준금리", "-k", "1", "--json")
    assert '"documentId": "https://news.example/1"' in found.stdout and '"title": "금리 동결"' in found.stdout
    assert '"date": "2026-11-30"' in found.stdout, found.stdout  # the other columns are metadata


def test_sync_skips_unchanged_files_replaces_changed_ones_and_deletes_what_is_gone(target, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "keep.md").write_text("# 유지\n\n바뀌지 않는 문서.\n")
    (folder / "change.pdf").write_bytes(files.pdf(["처음 내용은 사과에 관한 것이다."]))
    (folder / "drop.hwpx").write_bytes(files.hwpx([["곧 지워질 문서."]]))
    first = cli(target, "index", str(folder), "--collection", "synced", "--sync")
    assert first.returncode == 0 and "indexed 3 documents" in first.stdout, first.stdout + first.stderr
    assert "sync: 0 unchanged (skipped), 0 deleted" in first.stdout

    (folder / "change.pdf").write_bytes(files.pdf(["새 내용은 배에 관한 것이다."]))
    (folder / "drop.hwpx").unlink()
    (folder / "new.docx").write_bytes(files.docx([["새로 생긴 문서."]]))
    again = cli(target, "index", str(folder), "--collection", "synced", "--sync")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "indexed 2 documents" in again.stdout and "sync: 1 unchanged (skipped), 1 deleted" in again.stdout

    listed = cli(target, "documents", "list", "synced", "--json")
    ids = sorted(line.split('"')[3] for line in listed.stdout.splitlines() if '"id":' in line and "#" not in line)  # not chunks
    assert ids == ["change.pdf", "keep.md", "new.docx"], listed.stdout
    found = cli(target, "search", "synced", "배", "-k", "1", "--mode", "keyword")
    assert "change.pdf p.1" in found.stdout and "배에 관한" in found.stdout, found.stdout
    assert "사과" not in cli(target, "search", "synced", "사과", "--mode", "keyword").stdout  # the old version is replaced

    unchanged = cli(target, "index", str(folder), "--collection", "synced", "--sync")
    assert unchanged.returncode == 0 and "indexed 0 documents" in unchanged.stdout
    assert "sync: 3 unchanged (skipped), 0 deleted" in unchanged.stdout
