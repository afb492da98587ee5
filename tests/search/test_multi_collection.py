"""Several collections in one search (issue 18): a Korean and an English collection, each searched with its own
analyzer and embedder, merged by RRF over their ranks; hits name their collection; answers span both."""

from __future__ import annotations

import grpc
import pytest

from conftest import SYNC_REFRESH, index
from searchsvc.v1 import searchsvc_pb2 as pb

KOREAN = [
    pb.Document(id="ko-seoul", text="서울은 대한민국의 수도이며 한강이 도시를 가로지른다.", title="서울"),
    pb.Document(id="ko-kimchi", text="김치는 배추를 소금에 절여 발효시킨 한국의 전통 음식이다.", title="김치"),
]
ENGLISH = [
    pb.Document(id="en-seoul", text="Seoul is the capital of South Korea, on the Han River.", title="Seoul"),
    pb.Document(id="en-bread", text="Sourdough bread rises with wild yeast and lactic bacteria.", title="Bread"),
]


@pytest.fixture(scope="module")
def two_languages(stub):
    for name, language, docs in (("multi-ko", "ko", KOREAN), ("multi-en", "en", ENGLISH)):
        config = pb.CollectionConfig(language=language, refresh_interval_ms=SYNC_REFRESH)
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))
        index(stub, name, docs)
    yield "multi-ko", "multi-en"
    for name in ("multi-ko", "multi-en"):
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_a_korean_and_an_english_collection_in_one_search(stub, two_languages):
    ko, en = two_languages
    configs = {c: stub.GetCollection(pb.GetCollectionRequest(name=c)).config for c in two_languages}
    assert configs[ko].analyzer != configs[en].analyzer  # each leg runs with its own analyzer and model
    for query, top in (("한강", "ko-seoul"), ("sourdough yeast", "en-bread")):
        response = stub.Search(pb.SearchRequest(collection=ko, collections=[en], query=query, top_k=4, mode=pb.SEARCH_MODE_KEYWORD))
        assert response.hits[0].document_id == top
        assert {h.collection for h in response.hits} <= {ko, en}
        assert all(h.collection == (ko if h.document_id.startswith("ko-") else en) for h in response.hits)
    both = stub.Search(pb.SearchRequest(collections=[en, ko], query="서울 Seoul capital", top_k=4))
    by_collection = {h.collection: h for h in reversed(both.hits)}  # each collection's first hit
    assert by_collection[ko].document_id == "ko-seoul" and by_collection[en].document_id == "en-seoul"
    # RRF over per-collection ranks: each collection's first hit scores 1/(60 + 1); the first listed goes first.
    assert [h.collection for h in both.hits[:2]] == [en, ko]
    assert both.hits[0].score == both.hits[1].score == pytest.approx(1 / 61)
    alone = stub.Search(pb.SearchRequest(collection=en, query="서울 Seoul capital", top_k=4))
    assert [h.document_id for h in alone.hits] == [h.document_id for h in both.hits if h.collection == en]


def test_answers_span_collections(stub, two_languages):
    ko, en = two_languages
    answer = stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collections=[ko, en], query="What is the capital of South Korea?"),
                                          extractive=True), timeout=120)
    assert {h.collection for h in answer.context} == {ko, en}
    assert answer.citations and all(c.quote in answer.context[c.source - 1].text for c in answer.citations)


@pytest.mark.parametrize("request_, code", [
    (pb.SearchRequest(collections=["multi-en", "nope"], query="x"), grpc.StatusCode.NOT_FOUND),
    (pb.SearchRequest(collections=[f"c{i}" for i in range(17)], query="x"), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.SearchRequest(query="x"), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_unknown_or_too_many_collections(stub, two_languages, request_, code):
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(request_)
    assert err.value.code() == code


def test_deleting_a_member_drops_the_groups_cached_answers(stub):
    """Answers over several collections are cached under the group ("a+b") and the sum of their versions; a
    member deleted and made again (versions from zero) must not find the old answer."""
    def make(name, text):
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)))
        index(stub, name, [pb.Document(id="d", text=text)])

    def ask():
        request = pb.AnswerRequest(search=pb.SearchRequest(collections=["group-a", "group-b"], query="What colour is the door?"),
                                   extractive=True)
        return stub.Answer(request, timeout=120)

    make("group-a", "The door is painted red.")
    make("group-b", "The garden has an apple tree.")
    try:
        assert "red" in ask().answer
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="group-a"))
        make("group-a", "The door is painted green.")
        assert "green" in ask().answer
    finally:
        for name in ("group-a", "group-b"):
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_an_answer_names_the_search_field_it_refuses(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(query="x"), extractive=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("search.collection")
