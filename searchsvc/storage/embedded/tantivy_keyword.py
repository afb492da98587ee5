"""Keyword leg of a collection: BM25 over our analyzers' terms in a tantivy index on disk.

Why tantivy and not an in-memory bm25s matrix: bm25s bakes IDF and lengths into one immutable matrix, so every
refresh rebuilt it from all chunks (20 s at 1M chunks), and every start-up re-analysed every chunk (kiwi: ~300
pages/s). tantivy (Lucene's design, in Rust, on PyPI) keeps immutable segments with collection-wide statistics:
a refresh writes one small segment (~0.2 s for 1% new at 1M), a commit is fsynced, and opening the index maps
its files without reading any text. Scores are Lucene's BM25 (k1 1.2, b 0.75, its idf), over all segments.

Our analyzers still decide the terms (kiwi morphemes for Korean, the english chain…): each chunk's terms are
joined with spaces into a field whose tokenizer splits on whitespace only, so tantivy indexes them verbatim.

Differences from exact BM25 that tantivy shares with Lucene and Elasticsearch: field lengths are stored in 256
buckets (exact up to 40 terms; ~5% off for 41-60), and deleted chunks count in IDF until their segment merges.

Durability: the WAL stays the source of truth. After each commit, `<index>.seq` records the sequence number of
the last WAL record the commit holds (tantivy-py cannot set a commit payload, and a sentinel document would
count in BM25's statistics); on open, the collection replays WAL records after it. The file is written after
the commit, so it may lag the index but never lead it, and a lagging one is harmless: a record deletes its
documents by id before adding their chunks, so replaying it again changes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import tantivy

from searchsvc.domain import filters
from searchsvc.domain.filters import Filter, Metadata, Timestamp
from searchsvc.domain.types import ScoredId
from searchsvc.platform.files import fsync_dir, write_text_atomic
from searchsvc.retrieve.analyzers import Analyzer
from searchsvc.retrieve.refresher import DebouncedRefresher

log = logging.getLogger(__name__)

# Filters (searchsvc/domain/filters.py): eq, any_of, exists match raw terms in `meta` (filters.exact_terms); ranges
# match the JSON field `attrs`, numbers at attrs.n.<key> (f64) and timestamps at attrs.t.<key> (i64 microseconds).
# Indexes from before the format below lack both and are rebuilt once from the docstore.
FORMAT = "2"
FORMAT_FILE = "searchsvc-format"
WRITER_HEAP_BYTES = 32_000_000  # tantivy's indexing buffer; one writer thread (a 2-core box serves searches too)


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("doc", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("meta", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("body", tokenizer_name="terms", index_option="freq")  # no positions: BM25 only
    builder.add_json_field("attrs", tokenizer_name="raw", index_option="basic", fast=True)  # fast: range queries
    return builder.build()


class KeywordIndexFailed(RuntimeError):
    """The writer failed; nothing more is written until `reset_writer` (see `failure`)."""


@dataclass(frozen=True)
class KeywordChunk:
    chunk_id: str
    document_id: str
    text: str  # what the analyzer reads: title and text
    metadata: Metadata


class TantivyKeywordIndex:
    def __init__(self, path: Path, analyzer: Analyzer, *, refresh_interval_s: float = 1.0) -> None:
        self.path = path
        self.analyzer = analyzer
        if path.exists() and tantivy.Index.exists(str(path)) and _format(path) != FORMAT:
            log.info("keyword index %s predates typed filters: rebuilding it", path)
            shutil.rmtree(path)
            path.with_suffix(".seq").unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        created = not tantivy.Index.exists(str(path))
        if created:
            write_text_atomic(path / FORMAT_FILE, FORMAT)
        self._index = tantivy.Index(_schema(), path=str(path)) if created else tantivy.Index.open(str(path))
        # Tokenizers are not stored with the index: register ours on every open.
        self._index.register_tokenizer("terms", tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build())
        self._index.config_reader(reload_policy="manual")
        self._writer = self._index.writer(WRITER_HEAP_BYTES, 1)
        self._writer_lock = threading.Lock()  # tantivy-py's writer must not be used from two threads at once
        # What searches read, swapped as one: the committed searcher, and the documents deleted since it was
        # opened (their chunks are dropped from its hits). Deletes add to the live view's set; a commit publishes
        # a new view with an empty set, so a search still on the old view keeps the old set.
        self._view: tuple[tantivy.Searcher, set[str]] = (self._index.searcher(), set())
        # Set when the writer failed (a full disk while writing a segment): tantivy then drops what it was
        # writing, and later commits would succeed without it. No commit may follow: the collection refuses
        # writes, its WAL keeps everything, and the next write replays it into a fresh writer (reset_writer).
        self.failure = ""
        self._seq_path = path.with_suffix(".seq")
        self.committed_seq = int(self._seq_path.read_text()) if self._seq_path.exists() and not created else 0
        self._applied_seq = self.committed_seq
        self._changed = False
        self._refresher = DebouncedRefresher(self.commit, refresh_interval_s, "keyword-refresh", stop_on=(KeywordIndexFailed,))

    # --- writes (the collection serializes them under its write lock)
    def delete_documents(self, document_ids: Sequence[str]) -> None:
        with self._writer_lock, self._failing("delete"):
            for doc_id in document_ids:
                self._writer.delete_documents_by_term("doc", doc_id)
            self._view[1].update(document_ids)
            self._changed = True
        self._refresher.wake()

    def add(self, chunks: Sequence[KeywordChunk]) -> None:
        analyzed = self.analyzer.analyze_many([c.text for c in chunks])  # outside the lock: the costly part
        docs = []
        for chunk, terms in zip(chunks, analyzed):
            doc = tantivy.Document(id=chunk.chunk_id, doc=chunk.document_id)
            # Terms never contain whitespace, but the field splits on it: keep a stray one from splitting a term.
            doc.add_text("body", " ".join("".join(t.split()) for t in terms))
            for term in filters.exact_terms(chunk.metadata):
                doc.add_text("meta", term)
            ranges: dict[str, dict] = {}
            for kind, key, value in filters.range_values(chunk.metadata):
                ranges.setdefault(_RANGE_PATH[kind], {})[key] = int(value) if kind == "timestamp" else value
            if ranges:
                doc.add_json("attrs", ranges)
            docs.append(doc)
        with self._writer_lock, self._failing("add"):
            for doc in docs:
                self._writer.add_document(doc)
            self._changed = True
        self._refresher.wake()

    def delete_all(self) -> None:
        with self._writer_lock, self._failing("delete all"):
            self._writer.delete_all_documents()
            self._changed = True

    @contextmanager
    def _failing(self, action: str) -> Iterator[None]:
        """Refuse writes after a failure, and turn a writer error into one (with the writer lock held)."""
        if self.failure:
            raise KeywordIndexFailed(self.failure)
        try:
            yield
        except ValueError as exc:  # tantivy-py reports every writer error as ValueError
            self.failure = f"keyword index {action} failed: {exc}"
            log.error("%s: %s; writes are refused until a fresh writer has replayed the WAL", self.path, self.failure)
            raise KeywordIndexFailed(self.failure) from exc

    def reset_writer(self) -> None:
        """After a failure: drop the writer and everything it held since the last commit, and start a fresh one
        from that commit. The caller then replays the WAL records after `committed_seq` (Collection.heal)."""
        with self._writer_lock:
            try:
                self._writer.wait_merging_threads()  # consumes the writer and releases the index lock
            except ValueError as exc:
                log.info("keyword index %s: dropping the failed writer: %s", self.path, exc)
            self._writer = self._index.writer(WRITER_HEAP_BYTES, 1)
            self._applied_seq = self.committed_seq
            self._changed = False
            self.failure = ""
        self._refresher.resume()  # a failure halted it

    def applied(self, seq: int) -> None:
        """Every write up to WAL record `seq` has been handed to the index."""
        self._applied_seq = seq

    def commit(self) -> bool:
        """Make every write durable and searchable. Returns False if there was nothing to commit."""
        with self._writer_lock:
            if not self._changed and self._applied_seq == self.committed_seq:
                return False
            seq = self._applied_seq
            with self._failing("commit"):
                self._writer.commit()
            # tantivy renames meta.json after syncing the directory, not before: sync it again so that the
            # commit is on disk before the position that claims it (a lagging position is harmless, a leading one
            # would skip WAL records the index lost).
            fsync_dir(self.path)
            write_text_atomic(self._seq_path, str(seq))
            self._changed = False
            self._index.reload()
            # Under the writer lock: a delete now lands in the new view's set, not in a set about to be dropped.
            self._view = (self._index.searcher(), set())
            self.committed_seq = seq
        return True

    refresh = commit  # what the collection and the refresher call

    def link_committed(self, dest: Path) -> None:
        """Hard-link the files of the last commit into `dest` (and its seq file beside it), for a snapshot: the
        caller holds the collection's write lock and has just committed. Merges are stopped while the links are
        made (a merge ending meanwhile would replace segments); tantivy never rewrites a file in place, so the
        links keep this commit whatever the writer does next."""
        with self._writer_lock:
            if self._changed or self._applied_seq != self.committed_seq:
                raise RuntimeError(f"keyword index {self.path}: writes since its last commit")
            self._writer.wait_merging_threads()  # consumes the writer
            try:
                dest.mkdir(parents=True)
                for f in sorted(self.path.iterdir()):
                    if f.is_file() and not (f.name.startswith(".tantivy-") and f.name.endswith(".lock")):
                        os.link(f, dest / f.name)
                if self._seq_path.exists():
                    os.link(self._seq_path, dest.with_suffix(".seq"))
            finally:
                self._writer = self._index.writer(WRITER_HEAP_BYTES, 1)

    def start_refresher(self) -> None:
        self._refresher.start()

    def stop_refresher(self) -> None:
        self._refresher.stop()

    def close(self) -> None:
        """Stop refreshing and release the index's writer lock (uncommitted writes stay in the WAL)."""
        self.stop_refresher()
        with self._writer_lock:
            try:
                self._writer.wait_merging_threads()  # drops the writer, and with it whatever was not committed
            except ValueError as exc:  # the directory was moved away (a re-embed swapped it), or the writer failed
                log.warning("keyword index %s: closing its writer: %s", self.path, exc)

    # --- reads
    def __len__(self) -> int:
        """Chunks in the searchable view."""
        return self._view[0].num_docs

    def search(self, query: str, k: int, filter: Filter | None = None) -> list[ScoredId]:
        """Top-k chunks by BM25 over the analyzer's terms of `query` (see search_terms)."""
        return self.search_terms(self.analyzer.analyze(query), k, filter)

    def search_terms(self, terms: Sequence[str], k: int, filter: Filter | None = None) -> list[ScoredId]:
        """Top-k chunks by BM25 over analyzed `terms`. `filter` applies inside the search (its text_match
        conditions already turned into values: Collection.keyword_search)."""
        terms = ["".join(t.split()) for t in terms]  # the body field splits on whitespace: a term stays one term
        if k <= 0 or not terms:
            return []
        schema = self._index.schema
        bm25 = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(schema, "body", t)) for t in terms])
        if filter:
            # The filter must not add to the score: const_score(…, 0).
            matching = tantivy.Query.const_score_query(self._filter_query(filter), 0.0)
            bm25 = tantivy.Query.boolean_query([(tantivy.Occur.Must, bm25), (tantivy.Occur.Must, matching)])
        searcher, hidden = self._view
        # Deleted-but-visible chunks may take slots: fetch more, within bounds (a mass delete is hidden for at
        # most one refresh interval, and must not turn each search into a scan meanwhile).
        limit = k + min(len(hidden) * 4, 2000)
        hits = searcher.search(bm25, min(limit, max(searcher.num_docs, 1)), count=False).hits
        ranked = []
        for score, address in hits:
            chunk_id = searcher.doc(address)["id"][0]
            if hidden and chunk_id.rsplit("#", 1)[0] in hidden:
                continue
            ranked.append((float(score), chunk_id))
        ranked.sort(key=lambda sc: (-sc[0], sc[1]))  # deterministic order: score desc, then chunk id
        return [ScoredId(c, rank, s) for rank, (s, c) in enumerate(ranked[:k], start=1)]

    def _filter_query(self, f: Filter) -> tantivy.Query:
        Occur, Query = tantivy.Occur, tantivy.Query
        clauses = [(Occur.Must, self._clause_query(c)) for c in f.must]
        if f.should:
            clauses.append((Occur.Must, Query.boolean_query([(Occur.Should, self._clause_query(c)) for c in f.should])))
        clauses += [(Occur.MustNot, self._clause_query(c)) for c in f.must_not]
        if not any(occur == Occur.Must for occur, _ in clauses):
            clauses.append((Occur.Must, Query.all_query()))  # only exclusions: everything else matches
        return Query.boolean_query(clauses)

    def _clause_query(self, c: filters.Clause) -> tantivy.Query:
        Occur, Query = tantivy.Occur, tantivy.Query
        if isinstance(c, Filter):
            return self._filter_query(c)
        schema = self._index.schema
        if c.op in ("eq", "ne", "any_of", "none_of"):
            found = Query.boolean_query([(Occur.Should, Query.term_query(schema, "meta", filters.value_term(c.key, v)))
                                         for v in c.values])  # no values: matches nothing
            return _negated(found) if c.negated else found
        if c.op == "exists":
            present = Query.term_query(schema, "meta", filters.present_term(c.key))
            return present if c.exists else _negated(present)
        if c.op == "range":
            # One comparison per bound, intersected: tantivy 0.27 panics on a two-sided JSON range whose lower
            # bound is negative ("[-2.0 TO 0.5]"); one-sided ones are fine.
            timestamps = any(isinstance(b, Timestamp) for b in (c.gt, c.gte, c.lt, c.lte))
            field = f"attrs.{_RANGE_PATH['timestamp' if timestamps else 'number']}.{c.key}"  # keys: filters.TYPED_KEY
            parts = [self._index.parse_query(f"{field}:{op}{_literal(b)}", [])
                     for op, b in ((">", c.gt), (">=", c.gte), ("<", c.lt), ("<=", c.lte)) if b is not None]
            return Query.boolean_query([(Occur.Must, p) for p in parts])
        raise ValueError(f"the keyword index cannot evaluate {c.op}")  # text_match: see Collection.keyword_search


_RANGE_PATH = {"number": "n", "timestamp": "t"}


def _negated(q: tantivy.Query) -> tantivy.Query:
    return tantivy.Query.boolean_query([(tantivy.Occur.Must, tantivy.Query.all_query()), (tantivy.Occur.MustNot, q)])


def _literal(bound: float | Timestamp) -> str:
    return str(bound.micros) if isinstance(bound, Timestamp) else repr(float(bound))


def _format(path: Path) -> str:
    try:
        return (path / FORMAT_FILE).read_text().strip()
    except FileNotFoundError:
        return ""
