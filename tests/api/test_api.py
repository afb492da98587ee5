"""The gRPC API against a real in-process server on a loopback port, with the real MiniLM embedder."""

import grpc
import pytest

from conftest import CORPUS, doc, field_violation, fresh_collection, ids, index, search
from searchsvc.v1 import searchsvc_pb2 as pb


@pytest.fixture(params=["embedded", "qdrant"])
def collection(stub, request):
    """Every API test that takes a collection runs on both storage backends (issue 16): Qdrant in qdrant-client's
    local mode under the server's index dir. Fusion, rerank, cutoff and answers are the service's, the same on both."""
    with fresh_collection(stub, request.param) as name:
        yield name


def test_collection_lifecycle(stub):
    created = stub.CreateCollection(pb.CreateCollectionRequest(name="life"))
    assert created.config.analyzer == "english" and created.dimension == 384
    assert created.config.chunk_size > 0 and "all-minilm" in created.config.embedding_model.lower()
    assert "life" in [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="life"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub.DeleteCollection(pb.DeleteCollectionRequest(name="life"))
    for call in (
        lambda: stub.GetCollection(pb.GetCollectionRequest(name="life")),
        lambda: stub.DeleteCollection(pb.DeleteCollectionRequest(name="life")),
        lambda: search(stub, "life", "x"),
        lambda: stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="life", ids=["a"])),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.CreateCollectionRequest(name="../escape"), "name"),
        (pb.CreateCollectionRequest(name=""), "name"),
        (pb.CreateCollectionRequest(name="ok1", config=pb.CollectionConfig(analyzer="klingon")), "config.analyzer"),
        (pb.CreateCollectionRequest(name="ok2", config=pb.CollectionConfig(chunk_size=64, chunk_overlap=64)), "config.chunk_overlap"),
        (pb.CreateCollectionRequest(name="ok3", config=pb.CollectionConfig(embedding_model="/nonexistent/model")), "config.embedding_model"),
    ],
)
def test_create_collection_invalid_argument_names_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(err.value) == field
    assert request_.name not in [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]


def test_bulk_index_acks_every_batch_in_order(stub, collection):
    acks = index(stub, collection, CORPUS, batch_size=2)
    assert [a.sequence for a in acks] == [1, 2, 3]
    assert sum(a.indexed_count for a in acks) == 6 and all(a.chunk_count == 2 for a in acks)
    got = stub.GetCollection(pb.GetCollectionRequest(name=collection))
    assert (got.document_count, got.chunk_count) == (6, 6)


def test_server_numbers_batches_when_client_sends_zero(stub, collection):
    requests = [pb.BulkIndexRequest(collection=collection, documents=[d]) for d in CORPUS[:3]]
    assert [a.sequence for a in stub.BulkIndex(iter(requests))] == [1, 2, 3]


def test_bad_documents_are_rejected_one_by_one(stub, collection):
    batch = [
        doc("good", "A perfectly fine document."),
        doc("", "no id"),
        doc("empty", "   "),
        doc("huge", "x" * 30_000),
        doc("reserved", "text", document_id="spoof"),
        doc("twice", "first version"),
        doc("twice", "second version"),
    ]
    [ack] = index(stub, collection, batch, batch_size=10)
    assert ack.indexed_count == 2 and ack.failed_count == 5
    assert {(e.index, e.field) for e in ack.errors} == {
        (1, "documents[1].id"),
        (2, "documents[2].text"),
        (3, "documents[3].text"),
        (4, "documents[4].metadata"),
        (5, "documents[5].id"),
    }
    assert all(e.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for e in ack.errors)
    assert sorted(ids(search(stub, collection, "version document", mode=pb.SEARCH_MODE_KEYWORD))) == ["good", "twice"]
    assert search(stub, collection, "version", mode=pb.SEARCH_MODE_KEYWORD).hits[0].text == "second version"


def test_bulk_index_unknown_collection_ends_stream_with_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.BulkIndex(iter([pb.BulkIndexRequest(collection="nope", documents=[doc("a", "b")])])))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_oversized_batch_is_invalid_argument(stub, collection):
    too_many = [doc(str(i), "t") for i in range(1001)]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.BulkIndex(iter([pb.BulkIndexRequest(collection=collection, documents=too_many)])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == "documents"
    assert stub.GetCollection(pb.GetCollectionRequest(name=collection)).document_count == 0


def test_hybrid_search_with_explanations(stub, collection):
    index(stub, collection, CORPUS)
    response = search(stub, collection, "similarity search library for vectors", explain=True, top_k=3)
    top = response.hits[0]
    assert top.document_id == "faiss" and top.chunk_id == "faiss#0" and top.title == "FAISS"
    e = top.explanation
    assert e.HasField("dense") and e.HasField("keyword") and e.dense.rank == 1 and e.keyword.rank == 1
    assert top.score == pytest.approx(e.fused_score) == pytest.approx(2 / 61)
    assert e.similarity == pytest.approx(e.dense.score) and 0 < e.similarity <= 1
    assert not e.HasField("rerank_score")
    assert top.metadata["kind"] == "software" and top.metadata["chunk_index"] == "0"
    assert response.timings.total_ms > 0 and response.timings.embed_ms > 0
    dense_only = [h for h in search(stub, collection, "capital city", explain=True, top_k=6).hits if not h.explanation.HasField("keyword")]
    assert dense_only, "some hits come from the dense leg alone"


def test_relative_score_fusion_scores_every_candidate_on_both_legs(stub, collection):
    index(stub, collection, CORPUS)
    query = "which capital city lies on the Han River"
    r = search(stub, collection, query, fusion=pb.FUSION_RELATIVE_SCORE, explain=True, top_k=6)
    fused = [h.explanation.fused_score for h in r.hits]
    assert ids(r)[0] == "seoul" and fused == sorted(fused, reverse=True) and all(0 <= f <= 1 for f in fused)
    dense = {h.chunk_id: h.explanation.dense.score for h in search(stub, collection, query, mode=pb.SEARCH_MODE_DENSE, explain=True, top_k=6).hits}
    keyword = {h.chunk_id: h.explanation.keyword.score for h in search(stub, collection, query, mode=pb.SEARCH_MODE_KEYWORD, explain=True, top_k=6).hits}
    # The documented formula, by hand: min-max per leg (a keyword-missing hit counts 0), equal weights.
    norm = lambda scores, c: (scores[c] - min(scores.values())) / (max(scores.values()) - min(scores.values())) if c in scores else 0.0  # noqa: E731
    for h in r.hits:
        assert h.explanation.fused_score == pytest.approx((norm(dense, h.chunk_id) + norm(keyword, h.chunk_id)) / 2, abs=1e-5)
    rrf = search(stub, collection, query, fusion=pb.FUSION_RRF, explain=True, top_k=1)
    assert rrf.hits[0].explanation.fused_score < 0.05  # RRF's scale: the request's fusion chose it


def test_modes_and_knobs(stub, collection):
    index(stub, collection, CORPUS)
    keyword = search(stub, collection, "purr mice", mode=pb.SEARCH_MODE_KEYWORD, explain=True)
    assert ids(keyword) == ["cats"] and not keyword.hits[0].explanation.HasField("dense")
    assert keyword.timings.embed_ms == 0  # keyword mode never embeds the query
    dense = search(stub, collection, "felines that hunt rodents", mode=pb.SEARCH_MODE_DENSE, top_k=2)
    assert ids(dense)[0] == "cats" and len(dense.hits) == 2
    # A zero weight silences a leg: hybrid then ranks exactly like the other leg.
    weighted = search(stub, collection, "capital of France", keyword_weight=0.0, top_k=6)
    assert ids(weighted) == ids(search(stub, collection, "capital of France", mode=pb.SEARCH_MODE_DENSE, top_k=6))
    k1 = search(stub, collection, "capital of France", rrf_k=0, explain=True, top_k=1)
    assert k1.hits[0].explanation.fused_score == pytest.approx(2.0)


def test_filter_applies_to_both_legs_before_fusion(stub, collection):
    index(stub, collection, CORPUS)
    for mode in (pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_HYBRID):
        r = search(stub, collection, "capital similarity search", filter={"kind": "city"}, mode=mode, top_k=10, dense_candidates=2, keyword_candidates=2)
        # With 2 candidates per leg, a post-filter would return at most what survived; a pre-filter fills both slots.
        assert sorted(ids(r)) == ["paris", "seoul"], mode
    assert ids(search(stub, collection, "capital", filter={"kind": "city", "lang": "fr"})) == []
    assert ids(search(stub, collection, "capital", filter={"nokey": "x"})) == []


def test_upsert_replaces_document_and_its_chunks(stub, collection):
    long_text = " ".join(f"Paragraph {i} about gardening and tomatoes." for i in range(300))
    acks = index(stub, collection, [doc("garden", long_text)])
    assert acks[0].chunk_count > 2
    [ack] = index(stub, collection, [doc("garden", "Now a short note about submarines.")])
    assert (ack.indexed_count, ack.replaced_count, ack.chunk_count) == (1, 1, 1)
    got = stub.GetCollection(pb.GetCollectionRequest(name=collection))
    assert (got.document_count, got.chunk_count) == (1, 1)
    assert ids(search(stub, collection, "tomatoes gardening", mode=pb.SEARCH_MODE_KEYWORD)) == []
    assert ids(search(stub, collection, "submarines")) == ["garden"]


def test_delete_documents(stub, collection):
    index(stub, collection, CORPUS)
    r = stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=collection, ids=["cats", "dogs", "unicorn"]))
    assert (r.deleted_count, r.not_found_count) == (2, 1)
    for mode in (pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_HYBRID):
        found = ids(search(stub, collection, "cats dogs purr bark", mode=mode, top_k=10))
        assert "cats" not in found and "dogs" not in found
    assert stub.GetCollection(pb.GetCollectionRequest(name=collection)).document_count == 4


def test_similarity_cutoff_uses_cosine_even_for_keyword_only_hits(stub, collection):
    index(stub, collection, CORPUS)
    everything = search(stub, collection, "Eiffel Tower in Paris", top_k=6, explain=True, similarity_cutoff=-1.0)
    assert len(everything.hits) == 6 and everything.cutoff_dropped == 0
    assert all(h.explanation.HasField("similarity") for h in everything.hits)
    cut = search(stub, collection, "Eiffel Tower in Paris", top_k=6, explain=True, similarity_cutoff=0.3)
    assert ids(cut)[0] == "paris" and 0 < len(cut.hits) < 6
    assert cut.cutoff_dropped == 6 - len(cut.hits)
    assert all(h.explanation.similarity >= 0.3 for h in cut.hits)
    keyword_cut = search(stub, collection, "Paris capital", mode=pb.SEARCH_MODE_KEYWORD, explain=True, similarity_cutoff=0.99)
    assert keyword_cut.hits == [] and keyword_cut.cutoff_dropped >= 1


def test_rerank_requested_without_model_is_skipped_and_said(stub, collection):
    index(stub, collection, CORPUS)
    r = search(stub, collection, "capital", rerank=pb.RerankOptions(enabled=True))
    assert not r.rerank.applied and "no reranker" in r.rerank.skipped_reason
    assert ids(r) == ids(search(stub, collection, "capital"))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"query": "  "}, "query"),
        ({"query": "x", "top_k": 5000}, "top_k"),
        ({"query": "x", "top_k": -1}, "top_k"),
        ({"query": "x", "mode": 42}, "mode"),
        ({"query": "x", "fusion": 42}, "fusion"),
        ({"query": "x", "rerank": pb.RerankOptions(enabled=True, model="/no/such/model")}, "rerank.model"),
        ({"query": "x", "rrf_k": -1}, "rrf_k"),
        ({"query": "x", "dense_weight": -0.5}, "dense_weight"),
        ({"query": "x", "dense_candidates": 5000}, "dense_candidates"),
        ({"query": "x", "rerank": pb.RerankOptions(enabled=True, candidates=999)}, "rerank.candidates"),
    ],
)
def test_search_invalid_argument_names_the_field(stub, collection, kwargs, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(pb.SearchRequest(collection=collection, **kwargs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(err.value) == field


def test_deadline_is_honoured(stub, collection):
    index(stub, collection, CORPUS)
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(pb.SearchRequest(collection=collection, query="capital"), timeout=0.0005)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_overall_and_per_collection(channel, stub, collection):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service="searchsvc.v1.SearchService")).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service=f"searchsvc.v1.Collection/{collection}")).status == serving
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection))
    assert health.Check(health_pb2.HealthCheckRequest(service=f"searchsvc.v1.Collection/{collection}")).status != serving


def test_reflection_lists_and_describes_the_service(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [listing] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in listing.list_services_response.service}
    assert {"searchsvc.v1.SearchService", "grpc.health.v1.Health"} <= names
    [described] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="searchsvc.v1.SearchService")])
    )
    assert described.file_descriptor_response.file_descriptor_proto


def test_message_size_limit_is_enforced_without_touching_data(stub, collection):
    index(stub, collection, CORPUS[:1])
    with pytest.raises(grpc.RpcError) as err:
        index(stub, collection, [doc("big", "x" * 3_000_000)])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    got = stub.GetCollection(pb.GetCollectionRequest(name=collection))
    assert (got.document_count, got.chunk_count) == (1, 1)


def test_the_server_freezes_what_start_up_loaded_and_collects_young_objects_less_often():
    import gc
    import weakref

    from searchsvc.api.server import GC_YOUNG_THRESHOLD, tune_garbage_collector

    class Node:
        pass

    before = gc.get_threshold()
    gc.disable()  # no automatic collection between here and the call: only tune_garbage_collector's own
    garbage = Node()
    garbage.self = garbage  # a cycle left by start-up: collected before the freeze, not kept forever
    gone = weakref.ref(garbage)
    del garbage
    try:
        tune_garbage_collector()
        assert gone() is None
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        gc.enable()
