"""The similar-question answer cache (answer.semantic_cache): keyed on the packed context and the collection state,
reused only for a question whose embedding is close to the cached one's. A real server on loopback with the real
English embedder; answers are extractive (no LLM to load), which the cache treats as any other answer."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SYNC_REFRESH, doc, index, server_settings
from searchsvc.answer.cache import AnswerCache, context_key, unit
from searchsvc.answer.types import AnswerKind, AnswerResult, GeneratorInfo, GuardOutcome, TokenUsage
from searchsvc.api.server import BackgroundServer
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

QUESTION = "What do cats hunt?"
PARAPHRASE = "What is it that cats hunt?"  # all-MiniLM-L6-v2 cosine to QUESTION: 0.96
OTHER = "Do cats purr?"  # same collection, so the same one-passage context; cosine 0.62


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    settings = server_settings(tmp_path_factory.mktemp("idx"), answer={"semantic_cache": True, "semantic_cache_min_cosine": 0.95})
    with BackgroundServer(settings) as server:
        import grpc

        with grpc.insecure_channel(server.target) as channel:
            yield pb_grpc.SearchServiceStub(channel)


_names = iter(range(1000))


@pytest.fixture
def cats(stub):
    """A collection of one passage: every question retrieves the same context."""
    name = f"cats{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)))
    index(stub, name, [doc("cats", "Cats are small domesticated felines that purr and hunt mice.", "Cats")])
    yield name
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def answer(stub, collection: str, query: str) -> pb.AnswerResponse:
    return stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection=collection, query=query)), timeout=60)


def semantic_hits(stub) -> int:
    return stub.GetAnswerStats(pb.GetAnswerStatsRequest()).semantic_cache_hits


def test_a_paraphrase_with_the_same_context_hits(stub, cats):
    first = answer(stub, cats, QUESTION)
    hits = semantic_hits(stub)
    second = answer(stub, cats, PARAPHRASE)
    assert not first.usage.cached and second.usage.cached
    assert 0.95 <= second.usage.cached_similarity < 1.0
    assert second.answer == first.answer and [c.chunk_id for c in second.context] == [c.chunk_id for c in first.context]
    assert semantic_hits(stub) == hits + 1


def test_a_different_question_with_the_same_context_misses(stub, cats):
    first = answer(stub, cats, QUESTION)
    other = answer(stub, cats, OTHER)
    assert [c.chunk_id for c in other.context] == [c.chunk_id for c in first.context]  # the same context...
    assert not other.usage.cached and other.usage.cached_similarity == 0  # ...but not the same question


def test_a_reindex_misses(stub, cats):
    answer(stub, cats, QUESTION)
    index(stub, cats, [doc("cats", "Cats are small domesticated felines that purr and hunt mice.", "Cats")])
    again = answer(stub, cats, PARAPHRASE)
    assert not again.usage.cached
    assert answer(stub, cats, "What is it cats hunt?").usage.cached  # the new state caches anew


def test_another_context_misses(stub):
    """The same question over other passages (another collection) never reads this collection's entry."""
    names = [f"ctx{next(_names)}" for _ in range(2)]
    texts = ["Cats are small domesticated felines that purr and hunt mice.", "Cats in the wild hunt birds and lizards."]
    for name, text in zip(names, texts):
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)))
        index(stub, name, [doc("cats", text, "Cats")])
    try:
        assert not answer(stub, names[0], QUESTION).usage.cached
        assert not answer(stub, names[1], PARAPHRASE).usage.cached
    finally:
        for name in names:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def _result(text: str) -> AnswerResult:
    return AnswerResult(text, AnswerKind.EXTRACTIVE, [], [], GuardOutcome(), TokenUsage(), GeneratorInfo("extractive"))


def test_entries_survive_a_restart_and_die_with_their_version(tmp_path):
    path = tmp_path / "answer-cache.sqlite"
    q, near, far = unit([1.0, 0.0, 0.0]), unit([1.0, 0.2, 0.0]), unit([0.0, 1.0, 0.0])  # cos(q, near) = 0.98
    old = context_key("c", 1, ["c#0"], {})
    cache = AnswerCache(path)
    cache.put_similar(old, "c", 1, q, _result("one"))
    cache.close()

    cache = AnswerCache(path)  # from SQLite
    found = cache.get_similar(old, near, 0.95)
    assert found is not None and found[0].answer == "one" and found[1] == pytest.approx(0.98, abs=0.01)
    assert cache.get_similar(old, far, 0.95) is None
    new = context_key("c", 2, ["c#0"], {})
    assert new != old and cache.get_similar(new, q, 0.95) is None
    cache.put_similar(new, "c", 2, q, _result("two"))  # rows of older versions go
    cache.close()
    cache = AnswerCache(path)
    assert cache.get_similar(old, q, 0.95) is None and cache.get_similar(new, q, 0.95)[0].answer == "two"
    cache.drop_collection("c")
    assert cache.get_similar(new, q, 0.95) is None
    cache.close()


def test_the_nearest_of_several_questions_answers(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")
    key = context_key("c", 1, ["c#0"], {})
    vectors = np.eye(3, dtype=np.float32)
    for i, v in enumerate(vectors):
        cache.put_similar(key, "c", 1, v, _result(f"answer {i}"))
    found = cache.get_similar(key, unit([0.1, 0.99, 0.0]), 0.9)
    assert found is not None and found[0].answer == "answer 1"
    cache.close()


def test_the_question_is_embedded_once_per_answer(tmp_path):
    """The similar-question lookup reuses the vector the search embedded the question as."""
    import grpc

    settings = server_settings(tmp_path, answer={"semantic_cache": True, "semantic_cache_min_cosine": 0.95})
    with BackgroundServer(settings) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="once", config=pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)))
        index(stub, "once", [doc("cats", "Cats are small domesticated felines that purr and hunt mice.", "Cats")])
        collection = server.components["service"].catalog.get("once")
        embedded = []
        real = collection.embed_query
        collection.embed_query = lambda query: embedded.append(query) or real(query)
        first, second = answer(stub, "once", QUESTION), answer(stub, "once", PARAPHRASE)
        assert not first.usage.cached and second.usage.cached  # the lookup ran, on both
        assert embedded == [QUESTION, PARAPHRASE]  # once each: by the search
        # A caller's own query vector (here: not the question's) is not taken for the question's embedding
        elsewhere = np.ones(collection.dimension, dtype=np.float32).tolist()
        stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection="once", query=QUESTION, query_vector=elsewhere)), timeout=60)
        assert embedded == [QUESTION, PARAPHRASE, QUESTION]
