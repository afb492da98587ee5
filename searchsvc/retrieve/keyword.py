"""In-memory BM25 over analyzed text, scored by bm25s (train-reranker's negative mining; collections use tantivy_keyword.py).

bm25s precomputes a sparse (term x doc) score matrix, so an index is immutable once built. Writes go to a
mutable term store (per-chunk term ids over a growing vocabulary) and become searchable at the next refresh,
which rebuilds the matrix from stored term ids (no re-analysis). Refreshes run on a background thread at most
every `refresh_interval_s`, and never more often than 4x the last build time, so rebuilds take at most ~20%
of a core however fast documents arrive (Elasticsearch's refresh_interval, without segments: bm25s bakes IDF
and the average length into its matrix, so per-segment matrices would score inconsistently).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import bm25s
import numpy as np

from searchsvc.domain.types import ScoredId
from searchsvc.retrieve.analyzers import Analyzer
from searchsvc.retrieve.refresher import DebouncedRefresher

log = logging.getLogger(__name__)
# bm25s sets its own logger to DEBUG at import, which logs every rebuild; keep it to warnings.
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class _Searcher:
    """An immutable built index: bm25s matrix plus row <-> chunk id maps."""

    bm25: bm25s.BM25
    chunk_ids: list[str]
    row_of: dict[str, int]


class KeywordIndex:
    def __init__(
        self,
        analyzer: Analyzer,
        *,
        k1: float = 1.2,
        b: float = 0.75,
        method: str = "lucene",
        refresh_interval_s: float = 1.0,
    ) -> None:
        self.analyzer = analyzer
        self._params = dict(k1=k1, b=b, method=method)
        self._vocab: dict[str, int] = {}
        self._terms: dict[str, list[int]] = {}  # chunk id -> term ids, live chunks only
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every write
        self._searcher: _Searcher | None = None
        self._built_generation = 0
        self._refresher = DebouncedRefresher(self.refresh, refresh_interval_s, "bm25-refresh")

    # --- writes
    def add(self, chunk_ids: list[str], texts: list[str]) -> None:
        analyzed = self.analyzer.analyze_many(texts)  # outside the lock: the costly part
        with self._lock:
            for chunk_id, terms in zip(chunk_ids, analyzed):
                self._terms[chunk_id] = [self._term_id(t) for t in terms]
            self._generation += 1
        self._refresher.wake()

    def remove(self, chunk_ids: list[str]) -> None:
        with self._lock:
            for chunk_id in chunk_ids:
                self._terms.pop(chunk_id, None)
            self._generation += 1
        self._refresher.wake()

    def _term_id(self, term: str) -> int:
        term_id = self._vocab.get(term)
        if term_id is None:
            term_id = self._vocab[term] = len(self._vocab)
        return term_id

    def __len__(self) -> int:
        return len(self._terms)

    # --- refresh
    def refresh(self) -> bool:
        """Rebuild the searchable index if anything changed since the last build. Returns True if rebuilt."""
        with self._lock:
            if self._generation == self._built_generation and self._searcher is not None:
                return False
            generation = self._generation
            chunk_ids = list(self._terms)
            term_lists = [self._terms[c] for c in chunk_ids]
            vocab = dict(self._vocab)  # bm25s adds an empty-token entry to the dict it is given
        searcher = None
        if chunk_ids:
            bm25 = bm25s.BM25(**self._params)
            bm25.index((term_lists, vocab), show_progress=False)
            searcher = _Searcher(bm25, chunk_ids, {c: i for i, c in enumerate(chunk_ids)})
        with self._lock:
            if generation >= self._built_generation:
                self._searcher, self._built_generation = searcher, generation
        return True

    def start_refresher(self) -> None:
        self._refresher.start()

    def stop_refresher(self) -> None:
        self._refresher.stop()

    # --- reads
    def search(self, query: str, k: int, allowed: set[str] | None = None) -> list[ScoredId]:
        """Top-k chunks by BM25. `allowed` restricts scoring to those chunk ids (a pre-filter, not a post-filter)."""
        searcher = self._searcher
        if searcher is None or k <= 0:
            return []
        vocab = searcher.bm25.vocab_dict
        term_ids = [vocab[t] for t in self.analyzer.analyze(query) if t in vocab]
        if not term_ids:
            return []
        mask = None
        if allowed is not None:
            rows = [searcher.row_of[c] for c in allowed if c in searcher.row_of]
            if not rows:
                return []
            mask = np.zeros(len(searcher.chunk_ids), dtype=np.float32)
            mask[rows] = 1.0
        scores = searcher.bm25.get_scores_from_ids(term_ids, weight_mask=mask)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        # Deterministic order: score desc, then chunk id.
        ranked = sorted(
            ((float(scores[i]), searcher.chunk_ids[i]) for i in top if scores[i] > 0),
            key=lambda sc: (-sc[0], sc[1]),
        )
        live = self._terms  # drop chunks deleted since the last refresh
        ranked = [(s, c) for s, c in ranked if c in live]
        return [ScoredId(c, rank, s) for rank, (s, c) in enumerate(ranked, start=1)]
