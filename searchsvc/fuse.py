"""Reciprocal Rank Fusion over ranked candidate lists.

We own this instead of LlamaIndex's QueryFusionRetriever(mode="reciprocal_rerank"), which fixes k at 60,
ignores per-retriever weights and merges candidates by their text rather than by id.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from searchsvc.types import ScoredId


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
