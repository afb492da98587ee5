import pytest

from searchsvc.domain.types import ScoredId
from searchsvc.search.fuse import adaptive_weights, top_gap, fuse_relative_score, fuse_rrf


def ranked(*ids):
    return [ScoredId(c, r, 1.0 / r) for r, c in enumerate(ids, start=1)]


def test_rrf_matches_hand_computed_values():
    fused = dict(fuse_rrf({"dense": ranked("a", "b", "c"), "keyword": ranked("c", "a")}, {}, k=60))
    assert fused["a"] == 1 / 61 + 1 / 62
    assert fused["c"] == 1 / 63 + 1 / 61
    assert fused["b"] == 1 / 62


def test_rrf_weights_and_k():
    fused = fuse_rrf({"dense": ranked("a", "b"), "keyword": ranked("b", "a")}, {"dense": 2.0, "keyword": 0.5}, k=1)
    assert fused == [("a", 2 / 2 + 0.5 / 3), ("b", 2 / 3 + 0.5 / 2)]


def test_rrf_zero_weight_removes_a_legs_influence():
    fused = fuse_rrf({"dense": ranked("a", "b"), "keyword": ranked("b", "a")}, {"keyword": 0.0}, k=60)
    assert [c for c, _ in fused] == ["a", "b"]


def test_rrf_dedupes_by_chunk_id_keeping_best_rank():
    legs = {"dense": [ScoredId("a", 1, 0.9), ScoredId("a", 2, 0.8), ScoredId("b", 3, 0.1)]}
    assert dict(fuse_rrf(legs, {}, k=60)) == {"a": 1 / 61, "b": 1 / 63}


def test_rrf_ties_break_by_best_rank_then_id():
    # x and y tie on score (rank 1 in one leg, rank 3 in the other); both beat q (rank 2 twice).
    legs = {"dense": ranked("y", "q", "x"), "keyword": ranked("x", "q", "y")}
    fused = fuse_rrf(legs, {}, k=60)
    assert [c for c, _ in fused] == ["x", "y", "q"]  # x, y: 1/61 + 1/63 > q: 2/62; x < y by id
    assert fuse_rrf(legs, {}, k=60) == fused


def test_relative_score_fusion_normalises_each_leg_and_weights_them():
    fused = dict(fuse_relative_score({"dense": {"a": 0.9, "b": 0.5, "c": 0.7}, "keyword": {"b": 12.0, "d": 2.0}}, {"dense": 3, "keyword": 1}))
    assert fused == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.75 * 0.5, "d": 0.0})
    assert fuse_relative_score({"dense": {"a": 0.9, "b": 0.5}, "keyword": {}}, {})[0] == ("a", 0.5)


def _leg(*scores: float) -> list[ScoredId]:
    return [ScoredId(f"c{i}", i + 1, s) for i, s in enumerate(scores)]


def test_top_gap_measures_how_far_the_first_hit_stands_out():
    assert top_gap([12.0, 6.0, 5.0], floor=0.0) == pytest.approx(0.5)  # BM25: against its zero
    assert top_gap([0.90, 0.85, 0.84, 0.80], depth=4) == pytest.approx(0.5)  # cosine: against the 4th score
    assert top_gap([0.9, 0.9, 0.8]) == 0.0 and top_gap([]) == 0.0 and top_gap([0.3]) == 1.0


def test_adaptive_weights_follow_query_length_and_which_leg_is_decisive():
    flat, decisive = _leg(10.0, 9.9, 9.8), _leg(10.0, 2.0, 1.0)
    dense_flat, dense_decisive = _leg(0.90, 0.899, 0.80), _leg(0.95, 0.81, 0.80)
    # the same legs: a long question leans on BM25, a two-word lookup on meaning
    long, short = adaptive_weights(dense_flat, flat, 16), adaptive_weights(dense_flat, flat, 2)
    assert long["keyword"] > long["dense"] and short["keyword"] < short["dense"]
    # the same length: the leg whose first hit stands out gets the larger share
    assert adaptive_weights(dense_flat, decisive, 4)["keyword"] > adaptive_weights(dense_decisive, flat, 4)["keyword"]
    for w in (long, short):
        assert w["dense"] + w["keyword"] == pytest.approx(2.0)  # an even share is plain RRF's scale
    # no keyword hits: the dense leg carries the query
    assert adaptive_weights(dense_flat, [], 3)["dense"] > 1.0
