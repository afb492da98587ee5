"""`searchsvc bench --documents` on a tiny dataset of the same shape as AutoRAG-ko (ids `<domain> - <file> -
<page>`): each file is rebuilt as PDF, DOCX and HWPX with one page per corpus page (a missing page stays empty, so
numbers hold), and hits from files count as the pages they came from."""

from __future__ import annotations

import json

import pytest

from conftest import server_settings
from searchsvc.lab import document_files
from searchsvc.lab.bench.documents import page_ids, run_documents, source_files
from searchsvc.v1 import searchsvc_pb2 as pb

pytestmark = pytest.mark.skipif(not document_files.NANUM.exists(), reason="Debian's fonts-nanum is not installed (.ci/run installs it)")

PAGES = {
    "travel - 제주.pdf - 1": "제주도는 한국에서 가장 큰 섬이며 한라산이 있다.",
    "travel - 제주.pdf - 3": "제주의 감귤은 겨울에 수확한다.",
    "food - 김치.pdf - 1": "김치는 배추를 소금에 절여 양념한 발효 음식이다.",
    "food - 김치.pdf - 2": "깍두기는 무로 담근 김치의 한 종류이다.",
}


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in PAGES.items()))
    queries = {"q1": "감귤은 언제 수확하나요?", "q2": "무로 담근 김치는?"}
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n" for q, t in queries.items()))
    (tmp_path / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ttravel - 제주.pdf - 3\t1\nq2\tfood - 김치.pdf - 2\t1\n")
    return tmp_path


def test_pages_keep_their_numbers_and_hits_map_to_pages(dataset):
    assert source_files(dataset) == {"food - 김치.pdf": [PAGES["food - 김치.pdf - 1"], PAGES["food - 김치.pdf - 2"]],
                                     "travel - 제주.pdf": [PAGES["travel - 제주.pdf - 1"], "", PAGES["travel - 제주.pdf - 3"]]}
    response = pb.SearchResponse(hits=[
        pb.Hit(document_id="travel - 제주.pdf", typed_metadata={"page": pb.MetadataValue(int_value=3)}),
        pb.Hit(document_id="travel - 제주.pdf", typed_metadata={"page": pb.MetadataValue(int_value=3)}),
        pb.Hit(document_id="food - 김치.pdf - 2"),
    ])
    assert page_ids(response) == ["travel - 제주.pdf - 3", "food - 김치.pdf - 2"]


def test_every_format_finds_the_judged_pages_as_the_text_does(dataset, tmp_path_factory, capsys):
    settings = server_settings(tmp_path_factory.mktemp("bench"), default_language="ko")
    results = run_documents(settings, dataset)
    out = capsys.readouterr().out
    assert "4 pages with text" in out.replace("(", "").replace(")", "") or "(4 with text)" in out
    for kind in ("pdf", "docx", "hwpx"):
        assert f"  {kind} " in out.split("through the service")[0]  # an extraction row per format
        assert results[kind]["per_query"] == results["text"]["per_query"] == [1.0, 1.0]
