"""The search pipeline: filter -> dense + keyword legs -> RRF -> rerank -> similarity cutoff -> top_k.

It reads a collection only through the storage seam (storage/base.py): query vectors and keyword terms are made
here, by the collection's embedder and analyzer; the backend answers the legs and serves the chunks."""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from searchsvc.domain.types import (
    Fusion,
    Hit,
    RerankOutcome,
    ScoredId,
    SearchMode,
    SearchParams,
    SearchResult,
    indexed_text,
)
from searchsvc.errors import InvalidArgument
from searchsvc.ops.tracing import record_stages
from searchsvc.retrieve.external import unit_vector
from searchsvc.retrieve.language import KOREAN_FUSION, FusionDefaults, query_language
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.cutoff import apply_similarity_cutoff
from searchsvc.search.deadline import Deadline
from searchsvc.search.diversify import mmr
from searchsvc.search.fuse import adaptive_weights, fuse_relative_score, fuse_rrf
from searchsvc.search.highlight import highlight
from searchsvc.search.multi import CollectionGroup, merge
from searchsvc.search.rerank import CrossEncoderReranker
from searchsvc.storage import CollectionStorage


class _Stopwatch:
    """Per-stage timings; before each stage, the call's deadline is checked (the rest is abandoned once it passed)."""

    def __init__(self, deadline: Deadline | None = None) -> None:
        self.ms: dict[str, float] = {}
        self.deadline = deadline
        self.intervals: list[tuple[str, int, int]] = []  # (stage, start, end) in ns since the epoch, for trace spans

    @contextmanager
    def stage(self, name: str):
        if self.deadline is not None:
            self.deadline.check(name)
        started, started_ns = time.perf_counter(), time.time_ns()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - started) * 1000
            self.intervals.append((name, started_ns, time.time_ns()))


class SearchPipeline:
    def __init__(self, models: ModelRegistry, default_fusion: Fusion = Fusion.RRF) -> None:
        self.models = models
        self.english_fusion = FusionDefaults(default_fusion)  # non-Korean queries (settings.default_fusion)
        # One per model (its vocabulary check runs once), as many as the registry keeps loaded.
        self._rerankers: OrderedDict[str, CrossEncoderReranker] = OrderedDict()

    def reranker_for(self, collection: CollectionStorage, override: str = "") -> CrossEncoderReranker | None:
        name = override or collection.config.reranker_model
        if not name:
            return None
        if name in self._rerankers:
            self._rerankers.move_to_end(name)
            return self._rerankers[name]
        try:
            reranker = self._rerankers[name] = CrossEncoderReranker(self.models.cross_encoder(name), name)
            while len(self._rerankers) > self.models.max_cross_encoders:
                self._rerankers.popitem(last=False)
            return reranker
        except Exception as exc:
            if override:
                raise InvalidArgument("rerank.model", f"cannot load {name!r}: {exc}") from exc
            raise

    def search(self, coll: CollectionStorage | CollectionGroup, p: SearchParams, deadline: Deadline | None = None) -> SearchResult:
        if isinstance(coll, CollectionGroup):
            return merge([self.search(member, p, deadline) for member in coll.members], p.top_k, p.rrf_k)
        clock = _Stopwatch(deadline)
        started = time.perf_counter()
        given = None  # the caller's query embedding, checked and unit-normalized
        if p.query_vector is not None and len(p.query_vector):
            given = unit_vector(p.query_vector, coll.dimension, "query_vector")

        def embed_query() -> np.ndarray:
            return given if given is not None else coll.embed_query(p.query)
        language = query_language(coll.config.language, p.query)
        use_dense = p.mode in (SearchMode.HYBRID, SearchMode.DENSE)
        use_keyword = p.mode in (SearchMode.HYBRID, SearchMode.KEYWORD)
        reranker = self.reranker_for(coll, p.rerank_model) if p.rerank else None
        rerank = RerankOutcome()
        if p.rerank and reranker is None:
            rerank.skipped_reason = "no reranker_model configured for this collection"

        filter = p.filter or None
        may_match = coll.may_match(filter)
        query_vector = None
        needs_cosine = p.similarity_cutoff is not None and reranker is None
        if (use_dense or needs_cosine) and may_match:
            with clock.stage("embed"):
                query_vector = embed_query()

        dense: list[ScoredId] = []
        keyword: list[ScoredId] = []
        query_terms: list[str] | None = None
        if may_match:
            if use_dense:
                with clock.stage("dense"):
                    dense = coll.dense_search(query_vector, p.dense_candidates, filter, ef_search=p.ef_search, exact=p.exact)
            if use_keyword:
                with clock.stage("keyword"):
                    query_terms = coll.analyze_query(p.query)
                    keyword = coll.keyword_search(query_terms, p.keyword_candidates, filter)

        with clock.stage("fuse"):
            fusion, weights = self._fusion(p, language, dense, keyword, len(query_terms or ()))
            if p.mode is SearchMode.HYBRID and fusion is Fusion.RELATIVE_SCORE:
                dense_scores = {s.chunk_id: s.score for s in dense}
                if query_vector is not None:  # keyword-only hits: their exact cosine, not the dense leg's worst
                    dense_scores |= coll.similarities(query_vector, [s.chunk_id for s in keyword if s.chunk_id not in dense_scores])
                ranked = fuse_relative_score({"dense": dense_scores, "keyword": {s.chunk_id: s.score for s in keyword}}, weights)
            elif p.mode is SearchMode.HYBRID:
                ranked = fuse_rrf({"dense": dense, "keyword": keyword}, weights, p.rrf_k)
            else:
                ranked = [(s.chunk_id, s.score) for s in (dense or keyword)]
            # MMR chooses among the reranked candidates when there is a reranker, else among its own.
            window = max(p.top_k, p.rerank_candidates) if reranker else max(p.top_k, p.mmr_candidates)
            hits = self._hits(coll, ranked[:window], dense, keyword, p.mode)

        if reranker is not None and hits:
            texts = [indexed_text(h.title, h.text) for h in hits]
            rerank.skipped_reason = reranker.unreadable(p.query, texts)
            if rerank.skipped_reason:
                reranker = None
            else:
                with clock.stage("rerank"):
                    scores = reranker.score(p.query, texts)
                    for hit, score in zip(hits, scores):
                        hit.rerank_score = hit.score = score
                    hits.sort(key=lambda h: (-h.score, h.chunk_id))
                    rerank = RerankOutcome(applied=True, model=reranker.name)
        if p.mmr_lambda is not None and len(hits) > 1:
            with clock.stage("mmr"):
                pool = hits[: p.mmr_candidates]
                hits = mmr(pool, coll.vectors([h.chunk_id for h in pool]), p.mmr_lambda, p.top_k)
        hits = hits[: p.top_k]

        dropped = 0
        if p.similarity_cutoff is not None:
            with clock.stage("cutoff"):
                if reranker is None:
                    if query_vector is None:  # a keyword search whose rerank was skipped
                        query_vector = embed_query()
                    missing = [h.chunk_id for h in hits if h.similarity is None]
                    cosines = coll.similarities(query_vector, missing)
                    for h in hits:
                        if h.similarity is None:
                            h.similarity = cosines.get(h.chunk_id)
                kept = apply_similarity_cutoff(hits, p.similarity_cutoff)
                dropped, hits = len(hits) - len(kept), kept
        if p.highlight and p.query.strip():
            with clock.stage("highlight"):
                terms = query_terms if query_terms is not None else coll.analyze_query(p.query)  # the keyword leg's
                for hit in hits:
                    hit.highlight = highlight(hit.text, terms, coll.term_spans)

        clock.ms["total"] = (time.perf_counter() - started) * 1000
        record_stages("search", clock.intervals)
        applied = fusion if p.mode is SearchMode.HYBRID else None
        return SearchResult(hits=hits, timings_ms=clock.ms, rerank=rerank, cutoff_dropped=dropped, fusion=applied,
                            query_language=language, query_vector=query_vector if given is None else None)

    def _fusion(self, p: SearchParams, language: str, dense: list[ScoredId], keyword: list[ScoredId],
                query_terms: int) -> tuple[Fusion, dict[str, float]]:
        """The request's fusion and weights, each unset one from the query language's defaults (adaptive ones
        follow this query's legs). Default weights belong to the default fusion: a request that picks another
        fusion gets weights 1."""
        defaults = KOREAN_FUSION if language == "ko" else self.english_fusion
        fusion = p.fusion or defaults.fusion
        dense_w, keyword_w = (defaults.dense_weight, defaults.keyword_weight) if fusion is defaults.fusion else (1.0, 1.0)
        if fusion is defaults.fusion and defaults.adaptive and p.mode is SearchMode.HYBRID:
            adaptive = adaptive_weights(dense, keyword, query_terms)
            dense_w, keyword_w = adaptive["dense"], adaptive["keyword"]
        return fusion, {
            "dense": dense_w if p.dense_weight is None else p.dense_weight,
            "keyword": keyword_w if p.keyword_weight is None else p.keyword_weight,
        }

    @staticmethod
    def _hits(coll: CollectionStorage, ranked, dense, keyword, mode) -> list[Hit]:
        dense_by_id = {s.chunk_id: s for s in dense}
        keyword_by_id = {s.chunk_id: s for s in keyword}
        found = coll.get_chunks([cid for cid, _ in ranked])
        hits = []
        for chunk_id, score in ranked:
            if (chunk := found.get(chunk_id)) is None:  # deleted between the leg and here
                continue
            d = dense_by_id.get(chunk_id)
            hits.append(
                Hit(
                    chunk_id=chunk_id,
                    collection=coll.name,
                    document_id=chunk.document_id,
                    text=chunk.text,
                    title=chunk.title,
                    score=score,
                    typed_metadata=chunk.metadata,
                    metadata={
                        **{k: v for k, v in chunk.metadata.items() if isinstance(v, str)},
                        "chunk_index": str(chunk.index), "start_char": str(chunk.start_char), "end_char": str(chunk.end_char),
                    },
                    dense=d,
                    keyword=keyword_by_id.get(chunk_id),
                    fused_score=score if mode is SearchMode.HYBRID else None,
                    similarity=d.score if d else None,
                )
            )
        return hits
