"""Reciprocal Rank Fusion over ranked candidate lists.

We own this instead of LlamaIndex's QueryFusionRetriever(mode="reciprocal_rerank"), which fixes k at 60,
ignores per-retriever weights and merges candidates by their text rather than by id.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from searchsvc.domain.types import ScoredId


def fuse_rrf(
    legs: Mapping[str, Sequence[ScoredId]], weights: Mapping[str, float], k: float = 60.0
) -> list[tuple[str, float]]:
    """Weighted RRF: score(c) = sum over legs L that returned c of weights[L] / (k + rank_L(c)), rank from 1.

    Candidates are deduplicated by chunk id (a leg listing an id twice counts only its best rank). The result
    is sorted by score descending; ties go to the candidate with the better best rank, then to the smaller
    chunk id, so equal inputs always give the same order. The scores (~0.01-0.03 for k=60) order one query's
    candidates and mean nothing across queries: never threshold them.
    """
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for leg, ranked in legs.items():
        weight = weights.get(leg, 1.0)
        seen: set[str] = set()
        for item in ranked:
            if item.chunk_id in seen:
                continue
            seen.add(item.chunk_id)
            scores[item.chunk_id] = scores.get(item.chunk_id, 0.0) + weight / (k + item.rank)
            best_rank[item.chunk_id] = min(best_rank.get(item.chunk_id, item.rank), item.rank)
    return sorted(scores.items(), key=lambda cs: (-cs[1], best_rank[cs[0]], cs[0]))


def fuse_relative_score(
    scores: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]
) -> list[tuple[str, float]]:
    """Relative-score fusion (Weaviate's relativeScoreFusion): each leg's raw scores are min-max normalised to
    [0, 1] over the candidates that leg scored, a candidate a leg did not score counts 0 for that leg, and the
    result is the weighted mean: sum_L weights[L] * norm_L(c) / sum_L weights[L], in [0, 1].

    Unlike RRF it keeps how far apart the scores are, not just their order. The caller should give each leg a
    score for every candidate it can compute cheaply (the dense leg's exact cosine for keyword-only hits,
    from the stored vectors): a missing score is treated as the leg's worst. Ties: smaller chunk id first.
    """
    total = sum(weights.get(leg, 1.0) for leg in scores) or 1.0
    fused = dict.fromkeys(set().union(*scores.values()), 0.0)
    for leg, by_id in scores.items():
        if not by_id:
            continue
        lo, hi = min(by_id.values()), max(by_id.values())
        weight = weights.get(leg, 1.0) / total
        for chunk_id, score in by_id.items():
            fused[chunk_id] += weight * ((score - lo) / (hi - lo) if hi > lo else 1.0)
    return sorted(fused.items(), key=lambda cs: (-cs[1], cs[0]))
