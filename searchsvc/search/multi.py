"""Several collections in one search (issue 18): each collection is searched as a search of its own (its
embedder, analyzer, legs, rerank and cutoff), and the lists are merged by RRF over their ranks. Relevance scores
mean different things in different collections (another model, another corpus's IDF), ranks do not: NVIDIA's
RAG blueprint and Elasticsearch's multi-index search merge the same way.

A `CollectionGroup` stands where one collection would (SearchPipeline.search, the answer engine): its name
("a+b") and version key the answer cache, and its first collection's embedder ranks sentences for extractive answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from searchsvc.domain.types import RerankOutcome, SearchResult
from searchsvc.errors import InvalidArgument
from searchsvc.storage import CollectionStorage

MAX_COLLECTIONS = 16


def named_collections(collection: str, collections: Sequence[str]) -> list[str]:
    """The collections a request names: `collection` first (if set), then `collections`, each once."""
    return list(dict.fromkeys(([collection] if collection else []) + list(collections)))


def collection_names(collection: str, collections: Sequence[str]) -> list[str]:
    """named_collections, checked: at least one, at most MAX_COLLECTIONS."""
    names = named_collections(collection, collections)
    if len(names) > MAX_COLLECTIONS:
        raise InvalidArgument("collections", f"{len(names)} collections; at most {MAX_COLLECTIONS} in one search")
    if not names:
        raise InvalidArgument("collection", "must name a collection")
    return names


@dataclass(frozen=True)
class CollectionGroup:
    members: tuple[CollectionStorage, ...]

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.members)

    @property
    def version(self) -> int:
        """The members' versions summed: each only grows, so the sum grows with every write to any of them (the
        answer cache keys on it and drops rows of older versions; a member's deletion drops the group's rows)."""
        return sum(m.version for m in self.members)

    def embed_query(self, query: str) -> np.ndarray:
        return self.members[0].embed_query(query)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.members[0].embed_passages(texts)


def merge(results: Sequence[SearchResult], top_k: int, rrf_k: float) -> SearchResult:
    """The members' results (in member order) as one: hits by RRF over their per-collection ranks (ties: the
    earlier collection), each hit's score replaced by that RRF score; timings and counts summed."""
    # Each hit is in one list, so its RRF score is 1/(k + its rank): ordering by rank (then list) is ordering by it.
    ranked = sorted(((rank, i, hit) for i, result in enumerate(results) for rank, hit in enumerate(result.hits, start=1)),
                    key=lambda r: r[:2])
    hits = []
    for rank, _, hit in ranked[:top_k]:
        hit.score = 1.0 / (rrf_k + rank)
        hits.append(hit)
    timings: dict[str, float] = {}
    for result in results:
        for stage, ms in result.timings_ms.items():
            timings[stage] = timings.get(stage, 0.0) + ms
    applied = [r.rerank for r in results if r.rerank.applied]
    rerank = applied[0] if applied else (results[0].rerank if results else RerankOutcome())
    return SearchResult(hits, timings, rerank, cutoff_dropped=sum(r.cutoff_dropped for r in results),
                        fusion=results[0].fusion if results else None,
                        query_language=results[0].query_language if results else "")
