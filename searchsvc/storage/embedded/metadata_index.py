"""The embedded backend's filter index: which chunks a filter (searchsvc/domain/filters.py) allows, by their FAISS ids.
The dense leg hands the result to FAISS as its id selection (no id translation per search: at 50% of 100k
chunks, mapping chunk-id strings to FAISS ids cost 14 ms, the graph walk 2 ms); the keyword leg translates the same filter for tantivy
(tantivy_keyword.py). Both apply it before top-k, so filtered-out chunks never take a candidate slot.

- exact terms (eq, any_of, contains, exists): postings term -> chunk ids, the terms of filters.exact_terms;
- ranges: per (kind, key), the values in a sorted array beside their chunk ids, sorted again on the first range
  query after a change (a write drops only its keys' arrays);
- text_match: per key, each distinct string value's chunk ids; a query analyzes each distinct value once (the
  analyses are cached) and keeps the values holding every term of the text. Its cost follows the key's distinct
  values, not the chunks: meant for titles, categories, tags, not for a unique value per chunk.

Negations (ne, none_of, must_not, exists false) are kept as complements while clauses combine, and a filter
that ends as one ("not archived") reaches FAISS as the ids it excludes, never as every other chunk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np

from searchsvc.domain import filters
from searchsvc.domain.filters import Condition, Filter, Metadata, Timestamp

# (ids, complemented): the chunks in `ids`, or when complemented every chunk but them.
_Set = tuple[frozenset[int] | set[int], bool]
RECENT_SELECTIONS = 8
_ALL: _Set = (frozenset(), True)


@dataclass(frozen=True)
class Selection:
    """What a filter allows: `ids`, or when `complemented` every live chunk but `ids`."""

    ids: np.ndarray  # int64 FAISS ids
    complemented: bool


class MetadataIndex:
    def __init__(self, analyze: Callable[[str], list[str]]) -> None:
        self._postings: dict[str, set[int]] = {}
        self._ranges: dict[tuple[str, str], dict[int, float]] = {}
        self._sorted: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._texts: dict[str, dict[str, set[int]]] = {}
        self._lock = threading.Lock()
        # Recent selections by filter, valid while nothing was written since: the pipeline asks may_match and
        # then the dense leg with one filter, and applications repeat theirs (a tenant, a category).
        self._generation = 0
        self._recent: OrderedDict[str, tuple[int, Selection]] = OrderedDict()
        self._terms_of = lru_cache(maxsize=65536)(lambda text: frozenset(analyze(text)))

    # --- writes
    def add(self, chunk_id: int, metadata: Metadata) -> None:
        self.add_many([chunk_id], metadata)

    def add_many(self, chunk_ids: list[int], metadata: Metadata) -> None:
        """Chunks that all carry `metadata`."""
        if not metadata:
            return
        with self._lock:
            self._generation += 1
            for term in filters.exact_terms(metadata):
                self._postings.setdefault(term, set()).update(chunk_ids)
            for kind, key, value in filters.range_values(metadata):
                values = self._ranges.setdefault((kind, key), {})
                values.update(dict.fromkeys(chunk_ids, value))
                self._sorted.pop((kind, key), None)
            for key, value in metadata.items():
                if isinstance(value, str):
                    self._texts.setdefault(key, {}).setdefault(value, set()).update(chunk_ids)

    def remove(self, chunk_id: int, metadata: Metadata) -> None:
        with self._lock:
            self._generation += 1
            for term in filters.exact_terms(metadata):
                _discard(self._postings, term, chunk_id)
            for kind, key, _ in filters.range_values(metadata):
                values = self._ranges.get((kind, key), {})
                values.pop(chunk_id, None)
                if not values:
                    self._ranges.pop((kind, key), None)
                self._sorted.pop((kind, key), None)
            for key, value in metadata.items():
                if isinstance(value, str) and key in self._texts:
                    _discard(self._texts[key], value, chunk_id)
                    if not self._texts[key]:
                        del self._texts[key]

    # --- reads
    def select(self, f: Filter) -> Selection:
        key = repr(f)  # not the Filter itself: (1,) == (True,), and eq 1 must not answer eq true
        with self._lock:
            recent = self._recent.get(key)
            if recent is not None and recent[0] == self._generation:
                self._recent.move_to_end(key)
                return recent[1]
            ids, complemented = self._filter(f)
            selection = Selection(np.fromiter(ids, dtype=np.int64, count=len(ids)), complemented)  # a copy
            self._recent[key] = (self._generation, selection)
            while len(self._recent) > RECENT_SELECTIONS:
                self._recent.popitem(last=False)
            return selection

    @staticmethod
    def any_selected(selection: Selection, live_count: int) -> bool:
        # Postings hold live chunks only, so a complement is empty exactly when it excludes all of them.
        return live_count > len(selection.ids) if selection.complemented else bool(len(selection.ids))

    def _filter(self, f: Filter) -> _Set:
        sets = [self._clause(c) for c in f.must]
        if f.should:
            sets.append(_any([self._clause(c) for c in f.should]))
        sets += [_not(self._clause(c)) for c in f.must_not]
        return _all(sets) if sets else _ALL

    def _clause(self, c: filters.Clause) -> _Set:
        if isinstance(c, Filter):
            return self._filter(c)
        if c.op in ("eq", "ne", "any_of", "none_of"):
            found = _any([(self._postings.get(filters.value_term(c.key, v), frozenset()), False) for v in c.values])
            return _not(found) if c.negated else found
        if c.op == "exists":
            present = (self._postings.get(filters.present_term(c.key), frozenset()), False)
            return present if c.exists else _not(present)
        if c.op == "range":
            return self._range(c), False
        return self._text_match(c), False

    def _range(self, c: Condition) -> set[int]:
        timestamps = any(isinstance(b, Timestamp) for b in (c.gt, c.gte, c.lt, c.lte))
        key = ("timestamp" if timestamps else "number", c.key)
        if key not in self._ranges:
            return set()
        if key not in self._sorted:
            ids, values = zip(*self._ranges[key].items())
            order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
            self._sorted[key] = (np.asarray(values, dtype=np.float64)[order], np.asarray(ids, dtype=np.int64)[order])
        values, ids = self._sorted[key]
        as_float = lambda b: float(b.micros) if isinstance(b, Timestamp) else float(b)  # noqa: E731
        lo, hi = 0, len(values)
        if c.gte is not None:
            lo = int(np.searchsorted(values, as_float(c.gte), "left"))
        if c.gt is not None:
            lo = int(np.searchsorted(values, as_float(c.gt), "right"))
        if c.lte is not None:
            hi = int(np.searchsorted(values, as_float(c.lte), "right"))
        if c.lt is not None:
            hi = int(np.searchsorted(values, as_float(c.lt), "left"))
        return set(ids[lo:hi].tolist()) if lo < hi else set()

    def _text_match(self, c: Condition) -> set[int]:
        return set().union(*(self._texts[c.key][v] for v in self._text_matching(c)))

    def text_matching_values(self, c: Condition) -> list[str]:
        """The key's distinct string values whose analyzed terms hold every term of `c.text`."""
        with self._lock:
            return self._text_matching(c)

    def _text_matching(self, c: Condition) -> list[str]:
        wanted = self._terms_of(c.text)
        if not wanted:  # a text of stopwords only matches nothing (filters.matches)
            return []
        return [v for v in self._texts.get(c.key, {}) if wanted <= self._terms_of(v)]


def _discard(postings: dict[str, set[int]], term: str, chunk_id: int) -> None:
    ids = postings.get(term)
    if ids is not None:
        ids.discard(chunk_id)
        if not ids:
            del postings[term]


def _not(s: _Set) -> _Set:
    return s[0], not s[1]


def _all(sets: Iterable[_Set]) -> _Set:
    """Intersection: the plain sets intersected (smallest first), minus what the complemented ones exclude."""
    plain = sorted((ids for ids, neg in sets if not neg), key=len)
    excluded = [ids for ids, neg in sets if neg]
    if not plain:
        return set().union(*excluded), True
    result = set(plain[0])
    for ids in plain[1:]:
        result &= ids
    for ids in excluded:
        result -= ids
    return result, False


def _any(sets: list[_Set]) -> _Set:
    """Union; with complements, not(A) or B = not(A - B)."""
    plain = [ids for ids, neg in sets if not neg]
    excluded = [ids for ids, neg in sets if neg]
    if not excluded:
        return (set().union(*plain) if len(plain) != 1 else plain[0]), False
    common = set(excluded[0]).intersection(*excluded[1:])
    for ids in plain:
        common -= ids
    return common, True
