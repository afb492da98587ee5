"""Files over gRPC (Document.content), against a real in-process server: PDF, DOCX and HWPX with Korean text are
read on the server, chunked page by page, found by page, cited by page; hostile files are per-document errors
naming their reason while the rest of the batch is indexed and the server keeps serving."""

from __future__ import annotations

import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import server_settings
from searchsvc.lab import document_files as files
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(not files.NANUM.exists(), reason="Debian's fonts-nanum is not installed (.ci/run installs it)")

PDF_PAGES = ["서울은 대한민국의 수도이며 인구는 약 천만 명이다.", "부산은 대한민국 제2의 도시이며 해운대 해수욕장이 유명하다."]


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    from searchsvc.api.server import BackgroundServer

    settings = server_settings(tmp_path_factory.mktemp("files"), default_language="ko", files={"seconds": 10})
    with BackgroundServer(settings) as server, grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.SearchServiceStub(channel)


def create(stub, name: str, refresh_interval_ms: int = -1) -> str:
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(refresh_interval_ms=refresh_interval_ms)))
    return name


def send(stub, collection: str, docs: list[pb.Document], refresh: bool = False) -> pb.BulkIndexResponse:
    (ack,) = stub.BulkIndex(iter([pb.BulkIndexRequest(collection=collection, documents=docs, refresh=refresh)]), timeout=120)
    return ack


def typed(hit, key):
    value = hit.typed_metadata[key]
    return getattr(value, value.WhichOneof("kind"))


def test_pdf_docx_and_hwpx_are_read_by_page_and_found_by_page(stub):
    name = create(stub, "pages")
    ack = send(stub, name, [
        pb.Document(id="report", content=files.pdf(PDF_PAGES), filename="reports/report.pdf"),
        pb.Document(id="memo", content=files.docx([["제주도는 한국에서 가장 큰 섬이다."], ["한라산은 제주도 한가운데에 있다."]]),
                    filename="memo.docx"),
        pb.Document(id="notice", content=files.hwpx([["대전은 과학 도시로 알려져 있다."], ["광주는 예술의 도시이다."]]),
                    content_type="application/hwp+zip", filename="공지.hwpx"),
        pb.Document(id="circular", content=files.hwp([[["인천에는 국제공항이 있다."], ["수원 화성은 세계유산이다."]]]),
                    filename="회람.hwp"),
    ])
    assert (ack.indexed_count, list(ack.errors)) == (4, [])
    for query, document, page, source in [("해운대 해수욕장", "report", 2, "reports/report.pdf"), ("한라산", "memo", 2, "memo.docx"),
                                          ("과학 도시", "notice", 1, "공지.hwpx"), ("수원 화성", "circular", 2, "회람.hwp")]:
        hit = stub.Search(pb.SearchRequest(collection=name, query=query, mode=pb.SEARCH_MODE_KEYWORD, top_k=1)).hits[0]
        assert (hit.document_id, typed(hit, "page"), typed(hit, "source")) == (document, page, source), query
    stored = stub.GetDocuments(pb.GetDocumentsRequest(collection=name, ids=["report"], view=pb.DOCUMENT_VIEW_FULL)).documents[0]
    assert stored.title == "테스트 문서"  # the PDF's own title
    assert stored.text == "\n\n".join(PDF_PAGES)
    pages = [stored.text[c.start_char:c.end_char] for c in stored.chunks]
    assert pages == PDF_PAGES  # one chunk per page here: none spans two


def test_an_answer_cites_the_page(stub):
    name = create(stub, "cited")
    send(stub, name, [pb.Document(id="report", content=files.pdf(PDF_PAGES), filename="report.pdf")])
    answer = stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection=name, query="해운대 해수욕장은 어느 도시에 있나요?"),
                                          extractive=True), timeout=60)
    cited = {(c.document_id, c.page, c.filename) for c in answer.citations}
    assert ("report", 2, "report.pdf") in cited, answer


def test_hostile_files_are_errors_of_their_own_and_the_rest_is_indexed(stub, channel):
    name = create(stub, "hostile")
    bomb = files.zip_bomb("docx")
    batch = [
        pb.Document(id="good", content=files.pdf(["멀쩡한 문서의 본문."]), filename="good.pdf"),
        pb.Document(id="bomb", content=bomb, filename="bomb.docx"),
        pb.Document(id="secret", content=files.pdf(["비밀"], encrypt_with="pw"), filename="secret.pdf"),
        pb.Document(id="cut", content=files.hwpx([["잘린 문서"]])[:200], filename="cut.hwpx"),
        pb.Document(id="blank", content=files.empty_pages_pdf(10_000), filename="blank.pdf"),
        pb.Document(id="exe", content=b"MZ\x90\x00", filename="tool.exe"),
        pb.Document(id="both", text="본문", content=b"%PDF-1.4", filename="both.pdf"),
        pb.Document(id="page", content=files.pdf(["쪽 번호"]), filename="p.pdf", typed_metadata={"page": pb.MetadataValue(int_value=3)}),
    ]
    # The Korean analyzer and the embedder load at the first Korean text (~260 MB for kiwi): before the measure,
    # which is about what the hostile files cost, not what a first Korean document costs.
    send(stub, create(stub, "hostile-warm-up"), [pb.Document(id="warm-up", text="한국어 문서로 분석기와 임베더를 먼저 띄운다.")])
    rss_before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    ack = send(stub, name, batch)
    took = time.perf_counter() - started
    rss_growth = psutil.Process().memory_info().rss - rss_before
    errors = {e.document_id: (e.field, e.message) for e in ack.errors}
    assert ack.indexed_count == 1 and set(errors) == {d.id for d in batch} - {"good"}
    assert errors["bomb"][0] == "documents[1].content" and errors["bomb"][1].startswith("zip bomb: word/document.xml expands")
    assert errors["secret"] == ("documents[2].content", "encrypted PDF (a password is needed to open it)")
    assert errors["cut"][1].startswith("corrupt or truncated HWPX")
    assert errors["blank"][1] == "PDF of 10,000 pages; at most 2,000"
    assert errors["exe"][1].startswith("unsupported file type: tool.exe")
    assert errors["both"] == ("documents[6].content", "set text or content, not both")
    assert errors["page"] == ("documents[7].metadata", "['page'] are set by the server from the file")
    assert took < 10 and rss_growth < 100 * 1024 * 1024, (took, rss_growth)

    started = time.perf_counter()
    (alone,) = send(stub, name, [pb.Document(id="bomb2", content=bomb, filename="bomb.docx")]).errors
    assert alone.message.startswith("zip bomb") and time.perf_counter() - started < 2
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert stub.CountDocuments(pb.CountDocumentsRequest(collection=name)).count == 1


def test_refresh_makes_the_batch_searchable_by_both_legs_when_acked(stub):
    name = create(stub, "refreshed", refresh_interval_ms=60_000)  # the keyword leg would wait a minute
    send(stub, name, [pb.Document(id="report", content=files.pdf(PDF_PAGES), filename="report.pdf")], refresh=True)
    hits = stub.Search(pb.SearchRequest(collection=name, query="해운대 해수욕장", mode=pb.SEARCH_MODE_KEYWORD)).hits
    assert [h.document_id for h in hits][:1] == ["report"]


def test_a_file_past_the_time_limit_is_stopped_and_the_next_is_read(tmp_path):
    from searchsvc.api.server import BackgroundServer

    settings = server_settings(tmp_path, default_language="ko", files={"seconds": 0.3})
    sheet = files.xlsx({"큰 표": [["이름", "값"]] + [[f"항목 {i}", i] for i in range(30_000)]})
    with BackgroundServer(settings) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        create(stub, "slow")
        ack = send(stub, "slow", [pb.Document(id="big", content=sheet, filename="big.xlsx"),
                                  pb.Document(id="small", content=files.pdf(["작은 문서"]), filename="small.pdf")])
        assert [(e.document_id, e.message) for e in ack.errors] == [("big", "extraction timed out after 0.3 s")]
        assert ack.indexed_count == 1

