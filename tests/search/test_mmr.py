"""Maximal marginal relevance (issue 18): near-duplicates make way for diverse hits, lambda 1 keeps the ranking,
and bad options are INVALID_ARGUMENT by field; through the API on a real server, and the selection itself."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import field_violation

from conftest import ids, index, search
from searchsvc.domain.types import Hit
from searchsvc.search.diversify import mmr
from searchsvc.v1 import searchsvc_pb2 as pb

# Three near-copies of one paragraph, and two other documents less close to the query.
VECTORS = {
    "copy-1": [1.0, 0.02, 0.0, 0.0], "copy-2": [1.0, 0.0, 0.02, 0.0], "copy-3": [1.0, 0.0, 0.0, 0.02],
    "other-a": [0.8, 0.6, 0.0, 0.0], "other-b": [0.75, 0.0, 0.0, 0.66],
}
QUERY = [1.0, 0.1, 0.0, 0.05]


@pytest.fixture
def near_duplicates(stub):
    name = "mmr-cases"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(
        embedding_model="external", dimension=4, refresh_interval_ms=-1)))
    try:
        index(stub, name, [pb.Document(id=i, text=f"document {i}", vector=v) for i, v in VECTORS.items()], batch_size=10)
        yield name
    finally:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_mmr_replaces_near_duplicates_with_diverse_hits(stub, near_duplicates):
    plain = ids(search(stub, near_duplicates, "", mode=pb.SEARCH_MODE_DENSE, query_vector=QUERY, top_k=3))
    assert sorted(plain) == ["copy-1", "copy-2", "copy-3"]
    diverse = ids(search(stub, near_duplicates, "", mode=pb.SEARCH_MODE_DENSE, query_vector=QUERY, top_k=3,
                         mmr=pb.MmrOptions(lambda_mult=0.5)))
    assert diverse[0] == plain[0] and set(diverse[1:]) == {"other-a", "other-b"}
    kept = ids(search(stub, near_duplicates, "", mode=pb.SEARCH_MODE_DENSE, query_vector=QUERY, top_k=3,
                      mmr=pb.MmrOptions(lambda_mult=1.0)))
    assert kept == plain


@pytest.mark.parametrize("options, field", [
    (pb.MmrOptions(lambda_mult=1.5), "mmr.lambda_mult"),
    (pb.MmrOptions(lambda_mult=0.5, candidates=2), "mmr.candidates"),  # fewer than top_k
    (pb.MmrOptions(lambda_mult=0.5, candidates=500), "mmr.candidates"),
])
def test_bad_mmr_options_name_their_field(stub, near_duplicates, options, field):
    with pytest.raises(grpc.RpcError) as err:
        search(stub, near_duplicates, "", mode=pb.SEARCH_MODE_DENSE, query_vector=QUERY, top_k=3, mmr=options)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == field


def test_the_selection_follows_relevance_at_1_and_diversity_below():
    hits = [Hit(c, c, "", "", score, {}) for c, score in [("a", 0.9), ("a2", 0.89), ("b", 0.5), ("gone", 0.4)]]
    vectors = {"a": np.array([1.0, 0.0]), "a2": np.array([0.999, 0.0447]), "b": np.array([0.0, 1.0])}
    assert [h.chunk_id for h in mmr(hits, vectors, 1.0, 3)] == ["a", "a2", "b"]  # "gone" has no vector: dropped
    assert [h.chunk_id for h in mmr(hits, vectors, 0.5, 2)] == ["a", "b"]
    assert [h.chunk_id for h in mmr(hits[:1], vectors, 0.5, 2)] == ["a"]
