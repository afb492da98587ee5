"""Reciprocal Rank Fusion over ranked candidate lists.

We own this instead of LlamaIndex's QueryFusionRetriever(mode="reciprocal_rerank"), which fixes k at 60,
ignores per-retriever weights and merges candidates by their text rather than by id.
"""

from __future__ import annotations

import math
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


def top_gap(scores: Sequence[float], depth: int = 10, floor: float | None = None) -> float:
    """How far a leg's first hit stands out, in [0, 1]: (s1 - s2) / (s1 - reference), where the reference is
    `floor` when the scores have a natural zero (BM25: 0 means no match) and otherwise the leg's `depth`-th score
    (cosine has none). A leg with one hit stands out fully; a leg with none, or a flat top, not at all."""
    if len(scores) < 2:
        return float(len(scores))
    reference = floor if floor is not None else scores[min(depth, len(scores)) - 1]
    spread = scores[0] - reference
    return max(0.0, min(1.0, (scores[0] - scores[1]) / spread)) if spread > 0 else 0.0


# The query-adaptive keyword share (docs/decisions/0024-fixed-korean-fusion-weights.md): the best setting on the
# msmarco-kor dev queries among those that keep autorag-ko dev at the old fixed weight's score, checked on
# msmarco-kor test. On msmarco-kor every setting one grid step away (bias 0.5, gap 1, length 0.25) scores within
# 0.002; on autorag-ko's 31 questions one or two queries flip between neighbours.
KEYWORD_SHARE_BIAS = -4.0
KEYWORD_SHARE_PER_GAP = 6.0  # per unit of (keyword top gap - dense top gap)
KEYWORD_SHARE_PER_LOG_TERM = 1.5  # per unit of ln(1 + query terms)


def adaptive_weights(dense: Sequence[ScoredId], keyword: Sequence[ScoredId], query_terms: int) -> dict[str, float]:
    """RRF weights that follow the query: the keyword leg's share grows with the query's length in analyzed terms
    and with how much more decisively BM25's first hit leads than the dense leg's does.

    Why these two: a long question ("지방은행이 시중은행으로 전환하려면 어떤 요건을 갖춰야 하나요?") carries enough
    words for BM25 to pin its page, while a two-word lookup ("변동성 정의") is better served by meaning; and a leg
    whose first hit stands far above its second is usually right about it (on msmarco-kor dev, when exactly one
    leg ranks the answer first, that leg's top gap is the larger one in 421 of 498 queries). The weights sum to 2,
    so an even share scores as plain RRF does."""
    gap = top_gap([s.score for s in keyword], floor=0.0) - top_gap([s.score for s in dense])
    logit = KEYWORD_SHARE_BIAS + KEYWORD_SHARE_PER_GAP * gap + KEYWORD_SHARE_PER_LOG_TERM * math.log1p(query_terms)
    share = 1.0 / (1.0 + math.exp(-logit))
    return {"dense": 2.0 * (1.0 - share), "keyword": 2.0 * share}
