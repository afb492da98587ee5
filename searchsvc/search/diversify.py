"""Maximal marginal relevance (Carbonell & Goldstein, 1998): after fusion and rerank, choose the top_k hits one at a
time, each maximizing lambda_mult * relevance - (1 - lambda_mult) * (its highest cosine to a hit already chosen).

Relevance is the hit's final score (fused, reranked or the leg's) divided by the best candidate's, so lambda_mult
= 1 keeps the ranking exactly, whatever kind of score it was, and relevance keeps its proportions (min-max
scaling would give the last candidate 0 however close it is, and let near-duplicates of the first win). Similarities between hits are cosines of
their stored vectors (unit length in both backends), read through the storage seam: nothing is re-embedded.
Written here rather than taken from LlamaIndex's `get_top_k_mmr_embeddings`, which ranks by query similarity
alone and so would reorder a hybrid or reranked list even at lambda 1.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from searchsvc.domain.types import Hit


def mmr(hits: Sequence[Hit], vectors: Mapping[str, np.ndarray], lambda_mult: float, k: int) -> list[Hit]:
    """`hits` best first; a hit without a stored vector (deleted meanwhile) is dropped."""
    pool = [h for h in hits if h.chunk_id in vectors]
    if len(pool) <= 1:
        return list(pool[:k])
    scores = np.asarray([h.score for h in pool], dtype=np.float64)
    relevance = np.clip(scores / scores.max(), 0.0, 1.0) if scores.max() > 0 else np.ones_like(scores)
    unit = np.stack([np.asarray(vectors[h.chunk_id], dtype=np.float32) for h in pool])
    similarity = unit @ unit.T
    closest = np.full(len(pool), -np.inf)  # each candidate's highest cosine to a chosen hit
    left = np.ones(len(pool), dtype=bool)
    chosen: list[int] = []
    while len(chosen) < min(k, len(pool)):
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        value = np.where(left, lambda_mult * relevance - (1 - lambda_mult) * redundancy, -np.inf)
        best = int(np.argmax(value))  # ties: the better-ranked candidate
        chosen.append(best)
        left[best] = False
        closest = np.maximum(closest, similarity[best])
    return [pool[i] for i in chosen]
