"""A collection stored in Qdrant (issue 16): one Qdrant collection per searchsvc collection.

Points are chunks, id = uuid5 of the chunk id (Qdrant takes only integers and UUIDs as point ids). Each has:
- the named dense vector "dense" (cosine; Qdrant stores it normalized);
- the named sparse vector "bm25" with `Modifier.IDF`: for each of the chunk's terms (the collection's analyzer
  on title + text, exactly what the embedded keyword leg indexes), the BM25 term-frequency part
  tf·(k1+1) / (tf + k1·(1 − b + b·len/avgdl)). Qdrant multiplies each query term's value by
  idf = ln(1 + (N − n + 0.5)/(n + 0.5)), computed from its own counts, so a query of term counts scores
  Σ idf · tf-part: BM25 with collection-wide IDF, as tantivy computes it;
- the payload: chunk id, document id, title, text, chunk index and offsets (chunk 0 also the document's text,
  where its chunks do not reproduce it: documents.py), the user metadata (typed, as JSON:
  filters.to_json), and for filters (searchsvc/domain/filters.py): `meta_pairs`, the exact-match terms of
  filters.exact_terms ("key\\x1fvalue" for strings; user keys may hold dots, which Qdrant would read as nested
  paths); `times`, timestamps as microseconds by key (ranges); `text_terms`, "key\\x1bterm" for each analyzed
  term of each string value (text_match). Ranges on numbers and exists read `metadata.<key>` (filter keys are
  filters.TYPED_KEY: no dots).

Term ids are the first 4 bytes of the term's BLAKE2b digest (Qdrant's sparse indices are u32). Two terms that
collide share a posting; over a 1M-term vocabulary that is ~100 pairs of rare terms.

qdrant-client is used directly, not through LlamaIndex's QdrantVectorStore: the pipeline needs each leg's own
top-k with its raw scores (QdrantVectorStore's hybrid mode fuses the two lists itself, with relative-score
fusion), point ids derived from chunk ids so a re-sent chunk overwrites its point, sparse values that are our
BM25 term-frequency parts, and a payload it can filter and read back without parsing LlamaIndex's serialized
node.

`avgdl`, the average terms per chunk in the length normalization, is baked into each chunk's weights when it is
written. It is the collection's `keyword_avg_terms`, fixed at creation, as Qdrant's own BM25 fixes `avg_len`:
a weight that depended on what had been written before would depend on the order of the writes, and on how many
servers made them, and no two loads of the same documents would score alike. tantivy (the embedded backend) uses
the exact current mean at query time; a reference within 2x of it moved nDCG@10 by at most 0.008 on SciFact,
autorag-ko and msmarco-kor (docs/decisions/0027-bm25-from-write-time-statistics.md). Collections made before
`keyword_avg_terms` (0) still take the running mean of what was written.

The statistics themselves are exact whatever the number of writers (`Statistics`): each server adds what it
writes and subtracts what it deletes or replaces, in metadata keys that only it writes, and a reader sums them.
Invariant, with no write in flight: the sums equal a recount of the points (their `n_terms`), provided no two servers
write the same document at the same moment (each would subtract the chunks they both replaced). A server that
died in the middle of a write left its counter odd: when it opens the collection again it repairs its share from
a recount (`finish_interrupted_write`). Scoring reads none of them: N and df are Qdrant's own, and the average
length is fixed, so results are exact in any case.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import uuid
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from qdrant_client import QdrantClient, models

from searchsvc.domain import filters
from searchsvc.domain.documents import DocumentView, StoredDocument, document_from_chunks
from searchsvc.domain.filters import Filter, Timestamp
from searchsvc.domain.types import Chunk, CollectionConfig, Document, ScoredId, indexed_text
from searchsvc.errors import FailedPrecondition
from searchsvc.ingest.batch import BatchPreparer, DocumentLimits, IndexReport
from searchsvc.ingest.chunking import Chunker
from searchsvc.retrieve.analyzers import Analyzer
from searchsvc.retrieve.embedding import embed_passages, embed_query
from searchsvc.retrieve.external import EXTERNAL_MODEL
from searchsvc.storage.qdrant.errors import qdrant_errors

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "bm25"
K1, B = 1.2, 0.75  # tantivy's (and Lucene's) BM25 parameters
_POINT_NAMESPACE = uuid.UUID("2f1d3c4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5")
_CONFIG_KEY = "searchsvc_config"
# Per-writer statistics in the collection's metadata: "<stat>@<writer id>", written by that writer only (Qdrant
# merges metadata keys on update, so writers never overwrite each other's). The bare keys are the totals of
# collections written before per-writer keys existed.
_STATS = ("terms", "chunks", "version")


@dataclasses.dataclass(frozen=True)
class Statistics:
    terms: int  # index terms in the collection's chunks
    chunks: int
    version: int  # writes so far, by every server: the answer cache's key
    writing: int = 0  # writers whose counter is odd: in the middle of a write (or died in one)

    @staticmethod
    def of(metadata: Mapping[str, Any], writer: str = "") -> "Statistics":
        """The sums over every writer's keys (`writer` given: that writer's own keys only, with no legacy totals)."""
        totals = dict.fromkeys(_STATS, 0)
        writing = 0
        for key, value in metadata.items():
            stat, _, who = key.partition("@")
            if stat in totals and (who == writer if writer else True):
                totals[stat] += int(value)
                writing += stat == "version" and bool(who) and int(value) % 2
        return Statistics(**totals, writing=writing)


def point_id(chunk_id: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, chunk_id))


def term_id(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


def text_term(key: str, term: str) -> str:
    return f"{key}\x1b{term}"


class QdrantCollection:
    """The storage seam (storage/base.py) over a Qdrant collection. Thread-safe: calls to the client are
    serialized (local mode is not thread-safe; a remote client does not mind)."""

    def __init__(self, client: QdrantClient, name: str, config: CollectionConfig, embed_model: BaseEmbedding | None,
                 dimension: int, analyzer: Analyzer, *, limits: DocumentLimits, lock: Any = None,
                 ordering: str = "weak", writer: str = "") -> None:
        self.client = client
        self.name = name
        self.config = config
        self.embed_model = embed_model
        self.analyzer = analyzer
        self._dimension = dimension
        # Around every client call: local mode's client is not thread-safe (the catalog shares one lock among the
        # collections of a local client; a remote client needs none, and gets a no-op).
        self._lock = lock or threading.RLock()
        self._write_lock = threading.Lock()
        self._ordering = models.WriteOrdering(ordering)  # which replica takes a write first (see config.py)
        # This server's id among the collection's writers (its statistics keys); the same across its restarts.
        self._writer = writer or uuid.uuid4().hex[:12]
        self._repair_pending = False  # statistics still to repair after an interrupted write (finish_interrupted_write)
        embed = None if config.embedding_model == EXTERNAL_MODEL else self.embed_passages
        self.ingest = BatchPreparer(Chunker(config.chunk_size, config.chunk_overlap), embed, dimension, limits)
        # text_match terms of metadata strings: a document's chunks repeat its metadata, sources their values.
        self._value_terms = functools.lru_cache(maxsize=4096)(lambda value: tuple(dict.fromkeys(analyzer.analyze(value))))

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, client: QdrantClient, name: str, config: CollectionConfig, embed_model: BaseEmbedding | None,
               dimension: int, analyzer: Analyzer, *, limits: DocumentLimits, lock: Any = None, ordering: str = "weak",
               layout: Mapping[str, int] | None = None, writer: str = "") -> "QdrantCollection":
        """`layout`: shard_number, replication_factor, write_consistency_factor of the new Qdrant collection."""
        coll = cls(client, name, config, embed_model, dimension, analyzer, limits=limits, lock=lock,
                   ordering=ordering, writer=writer)
        with coll._lock, qdrant_errors(f"creating collection {name!r}"):
            try:
                coll._create(layout or {})
            except BaseException:
                if coll._made:  # half made (its payload indexes failed): not left behind to be found later
                    client.delete_collection(name)
                raise
        return coll

    def _create(self, layout: Mapping[str, int]) -> None:
        client, name, config, dimension = self.client, self.name, self.config, self._dimension
        self._made = False
        client.create_collection(
            name,
            vectors_config={DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata={_CONFIG_KEY: dataclasses.asdict(config)},
            **layout,
        )
        self._made = True
        for field, schema in (("document_id", models.PayloadSchemaType.KEYWORD), ("meta_pairs", models.PayloadSchemaType.KEYWORD),
                              ("chunk_index", models.PayloadSchemaType.INTEGER)):
            with warnings.catch_warnings():  # local mode ignores payload indexes, and says so; a cluster uses them
                warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
                client.create_payload_index(name, field, field_schema=schema, wait=True)

    @staticmethod
    def stored_config(client: QdrantClient, name: str) -> CollectionConfig | None:
        """The config a searchsvc collection keeps in its Qdrant collection's metadata (None: not ours)."""
        metadata = client.get_collection(name).config.metadata or {}
        stored = metadata.get(_CONFIG_KEY)
        return CollectionConfig(**stored) if stored else None

    def check_dimension(self) -> None:
        """An opened collection's dense vectors must be what its embedder makes (a Qdrant collection changed
        behind searchsvc's back, or a model of another size under the stored name, would fail every write)."""
        with self._calls():
            vectors = self.client.get_collection(self.name).config.params.vectors
        size = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
        if size != self._dimension:
            raise FailedPrecondition(f"the Qdrant collection's {DENSE!r} vectors are {size}-d; this collection's "
                                     f"embedding ({self.config.embedding_model}) gives {self._dimension}-d")

    @contextmanager
    def _calls(self) -> Iterator[None]:
        """One caller at a time on the client; its failures as the service's errors."""
        with self._lock, qdrant_errors(f"reading or writing collection {self.name!r}"):
            yield

    def _metadata(self) -> Mapping[str, Any]:
        return self.client.get_collection(self.name).config.metadata or {}

    # A writer's counter works as a seqlock: odd while one of its writes is under way (points may be half in),
    # even once it is done. A reader that saw no odd counter before and the same total after read one state.
    def _begin_write(self) -> Statistics:
        """Mark a write under way (before any point changes); this writer's statistics as marked, for `_written`.
        The caller holds the write lock: this server's keys have one writer, so they cannot change meanwhile."""
        if self._repair_pending and self._repair_statistics():
            self._repair_pending = False
        own = Statistics.of(self._metadata(), self._writer)
        if own.version % 2 == 0:  # (odd already: this server's previous run died in a write; it stays marked)
            own = dataclasses.replace(own, version=own.version + 1)
            self.client.update_collection(self.name, metadata={f"version@{self._writer}": own.version})
        return own

    def _written(self, own: Statistics, terms: int, chunks: int) -> None:
        """Record a finished write in this writer's keys (`own`: as `_begin_write` left them): the terms and chunks
        it added (negative: removed), its counter even again."""
        self.client.update_collection(self.name, metadata={
            f"terms@{self._writer}": own.terms + terms, f"chunks@{self._writer}": own.chunks + chunks,
            f"version@{self._writer}": own.version + 1})

    def finish_interrupted_write(self, attempts: int = 3) -> bool:
        """At open: a counter of this server's left odd means its previous run died in the middle of a write. That
        write's points are whatever Qdrant had applied, and its statistics were not recorded. The counter is made
        even (readers stop waiting for it) and this server's share of the statistics is repaired from a recount;
        while other servers keep writing, the repair is tried again before each of this server's writes. True if
        there was such a write."""
        with self._write_lock, self._calls():
            own = Statistics.of(self._metadata(), self._writer)
            if own.version % 2 == 0:
                return False
            self.client.update_collection(self.name, metadata={f"version@{self._writer}": own.version + 1})
            self._repair_pending = not any(self._repair_statistics() for _ in range(attempts))
        if self._repair_pending:
            log.warning("collection %s: statistics not repaired yet after an interrupted write (other servers are "
                        "writing); tried again before this server's next write", self.name)
        return True

    def _repair_statistics(self) -> bool:
        """One try: recount every point while no other server writes (their counters even, and unchanged across
        the recount), and make this server's share whatever makes the sums equal the recount."""
        def others(metadata) -> dict:
            return {k: v for k, v in metadata.items() if k.startswith("version@") and k != f"version@{self._writer}"}

        before = self._metadata()
        if any(int(v) % 2 for v in others(before).values()):
            return False  # a write under way: its points would count, its statistics not yet
        terms, chunks = self._stored(models.Filter())
        after = self._metadata()
        if others(after) != others(before):
            return False
        own, total = Statistics.of(after, self._writer), Statistics.of(after)
        self.client.update_collection(self.name, metadata={f"terms@{self._writer}": own.terms + terms - total.terms,
                                                           f"chunks@{self._writer}": own.chunks + chunks - total.chunks})
        log.info("collection %s: statistics repaired from a recount (%+d terms, %+d chunks)", self.name,
                 terms - total.terms, chunks - total.chunks)
        return True

    @property
    def writes_in_progress(self) -> int:
        """Writers whose counter is odd: a write under way, or a server that died in one and has not restarted."""
        with self._calls():
            return Statistics.of(self._metadata()).writing

    # ------------------------------------------------------------------ the seam: reads
    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def version(self) -> int:
        """The collection's write counter, kept in its Qdrant metadata: the same for every server on the cluster
        and across restarts (answers are cached per version)."""
        with self._calls():
            return Statistics.of(self._metadata()).version

    def embed_query(self, query: str) -> np.ndarray:
        return embed_query(self.embed_model, query)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return embed_passages(self.embed_model, texts)

    def analyze_query(self, query: str) -> list[str]:
        return self.analyzer.analyze(query)

    def term_spans(self, text: str) -> list[tuple[str, int, int]]:
        return self.analyzer.spans(text)

    def may_match(self, filter: Filter | None) -> bool:
        return True  # a filter that matches nothing costs Qdrant one cheap lookup per leg

    def dense_search(self, vector: np.ndarray, k: int, filter: Filter | None = None, *,
                     ef_search: int | None = None, exact: bool = False) -> list[ScoredId]:
        params = models.SearchParams(hnsw_ef=ef_search, exact=exact) if ef_search or exact else None
        with self._calls():
            found = self.client.query_points(self.name, query=np.asarray(vector, dtype=np.float32).tolist(), using=DENSE,
                                             query_filter=self._filter(filter), limit=k, search_params=params,
                                             with_payload=["chunk_id"]).points
        return _ranked(found)

    def keyword_search(self, terms: Sequence[str], k: int, filter: Filter | None = None) -> list[ScoredId]:
        counts = _term_counts(terms)
        if not counts or k <= 0:
            return []
        query = models.SparseVector(indices=list(counts), values=[float(v) for v in counts.values()])
        with self._calls():
            found = self.client.query_points(self.name, query=query, using=SPARSE, query_filter=self._filter(filter),
                                             limit=k, with_payload=["chunk_id"]).points
        return _ranked(found)

    def similarities(self, vector: np.ndarray, chunk_ids: Sequence[str]) -> dict[str, float]:
        if not chunk_ids:
            return {}
        with self._calls():
            found = self.client.retrieve(self.name, [point_id(c) for c in chunk_ids], with_payload=["chunk_id"], with_vectors=[DENSE])
        query = np.asarray(vector, dtype=np.float32)
        return {p.payload["chunk_id"]: float(np.asarray(p.vector[DENSE], dtype=np.float32) @ query) for p in found}

    def vectors(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not chunk_ids:
            return {}
        with self._calls():
            found = self.client.retrieve(self.name, [point_id(c) for c in chunk_ids], with_payload=["chunk_id"], with_vectors=[DENSE])
        return {p.payload["chunk_id"]: np.asarray(p.vector[DENSE], dtype=np.float32) for p in found}

    def get_chunks(self, chunk_ids: Sequence[str]) -> dict[str, Chunk]:
        if not chunk_ids:
            return {}
        with self._calls():
            found = self.client.retrieve(self.name, [point_id(c) for c in chunk_ids], with_payload=True)
        return {p.payload["chunk_id"]: _chunk(p.payload) for p in found}

    # ------------------------------------------------------------------ the seam: documents (documents.py)
    def get_documents(self, document_ids: Sequence[str], view: DocumentView) -> dict[str, StoredDocument]:
        vectors = [DENSE] if view is DocumentView.FULL_WITH_VECTORS else False
        wanted = models.Filter(must=[_match_any("document_id", list(document_ids))])
        points, offset = [], None
        with self._calls():
            while True:
                found, offset = self.client.scroll(self.name, scroll_filter=wanted, limit=1000, offset=offset,
                                                   with_payload=True, with_vectors=vectors)
                points += found
                if offset is None:
                    break
        by_document: dict[str, list] = {}
        for p in points:
            by_document.setdefault(p.payload["document_id"], []).append(p)
        documents = {}
        for doc_id, mine in by_document.items():
            chunks = [_chunk(p.payload) for p in mine]
            stored = next((p.payload["document_text"] for p in mine if "document_text" in p.payload), None)
            doc = document_from_chunks(doc_id, chunks, stored if view is not DocumentView.BASIC else "")
            if vectors:
                doc.vectors = {p.payload["chunk_id"]: np.asarray(p.vector[DENSE], dtype=np.float32) for p in mine}
            documents[doc_id] = doc
        return documents

    def list_documents(self, filter: Filter | None, after: str, limit: int) -> tuple[list[str], str]:
        """In point id order of the documents' first chunks; a position is Qdrant's next page offset."""
        with self._calls():
            found, offset = self.client.scroll(self.name, scroll_filter=self._first_chunks(filter), limit=limit,
                                               offset=after or None, with_payload=["document_id"], with_vectors=False)
        return [p.payload["document_id"] for p in found], "" if offset is None else str(offset)

    def count_documents(self, filter: Filter | None) -> int:
        with self._calls():
            return self.client.count(self.name, count_filter=self._first_chunks(filter), exact=True).count

    def _first_chunks(self, filter: Filter | None) -> models.Filter:
        """Each document once (its chunk 0), where its metadata (every chunk's) matches `filter`."""
        first = _match("chunk_index", 0)
        return models.Filter(must=[first, translated]) if (translated := self._filter(filter)) else models.Filter(must=[first])

    @property
    def chunk_count(self) -> int:
        with self._calls():
            return self.client.count(self.name, exact=True).count

    @property
    def document_count(self) -> int:
        """Every document has a chunk 0."""
        with self._calls():
            return self.client.count(self.name, count_filter=models.Filter(must=[_match("chunk_index", 0)]), exact=True).count

    # ------------------------------------------------------------------ the seam: writes
    def refresh(self) -> None:
        """Nothing to do: writes are acked once Qdrant applied them (wait=True), searchable by both legs."""

    def index_documents(self, docs: Sequence[Document]) -> IndexReport:
        batch = self.ingest.prepare(docs)
        replaced = self.upsert(batch.document_ids, batch.chunks, batch.vectors, batch.texts)
        return IndexReport(len(batch.document_ids), replaced, len(batch.chunks), batch.errors)

    def upsert(self, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray,
               texts: dict[str, str] | None = None) -> int:
        """New points first (a replaced chunk is overwritten in place), then the documents' stale chunks: a
        search never finds a document missing. Returns once Qdrant acknowledged both (wait=True). A text the
        chunks do not reproduce goes in the payload of the document's chunk 0 (`document_text`)."""
        analyzed = self.analyzer.analyze_many([c.indexed_text for c in chunks]) if chunks else []
        with self._write_lock, self._calls():
            points = self._points(chunks, vectors, analyzed, texts or {})
            # what the documents held before: their chunks are overwritten or deleted below
            existed, old_terms, old_chunks = self._stored_documents(document_ids)
            own = self._begin_write()
            if points:
                self.client.upsert(self.name, points=points, wait=True, ordering=self._ordering)
            self._written(own, sum(map(len, analyzed)) - old_terms, len(points) - old_chunks)
            if existed:
                stale = models.Filter(must=[_match_any("document_id", sorted(existed))],
                                      must_not=[models.HasIdCondition(has_id=[p.id for p in points])])
                self.client.delete(self.name, points_selector=models.FilterSelector(filter=stale), wait=True,
                                   ordering=self._ordering)
        return len(existed)

    def import_chunks(self, chunks: Sequence[Chunk], vectors: np.ndarray, texts: dict[str, str] | None = None) -> None:
        """Chunks copied from another collection into this new one: written as they are, without replacing
        whole documents (a document's chunks may arrive in different calls)."""
        analyzed = self.analyzer.analyze_many([c.indexed_text for c in chunks]) if chunks else []
        with self._write_lock, self._calls():
            points = self._points(chunks, vectors, analyzed, texts or {})
            old_terms, old_chunks = self._stored(models.Filter(must=[models.HasIdCondition(has_id=[p.id for p in points])])) \
                if points else (0, 0)
            own = self._begin_write()
            if points:
                self.client.upsert(self.name, points=points, wait=True, ordering=self._ordering)
            self._written(own, sum(map(len, analyzed)) - old_terms, len(points) - old_chunks)

    def _points(self, chunks: Sequence[Chunk], vectors: np.ndarray, analyzed: list[list[str]],
                texts: Mapping[str, str]) -> list:
        """The chunks as points, their BM25 weights taken with the collection's fixed average length (module
        docstring). A collection made before that was fixed takes the running mean, these chunks included."""
        avgdl = float(self.config.keyword_avg_terms)
        if not avgdl:
            stats = Statistics.of(self._metadata())
            terms, count = stats.terms + sum(len(t) for t in analyzed), stats.chunks + len(chunks)
            avgdl = terms / count if terms else 1.0  # chunks of stopwords only have no terms
        return [
            models.PointStruct(
                id=point_id(c.id),
                vector={DENSE: v.tolist(), SPARSE: _bm25_vector(t, avgdl)},
                payload={"chunk_id": c.id, "document_id": c.document_id, "chunk_index": c.index, "title": c.title,
                         "text": c.text, "start_char": c.start_char, "end_char": c.end_char, "n_terms": len(t),
                         **self._filter_payload(c.metadata),
                         **({"document_text": texts[c.document_id]} if c.index == 0 and c.document_id in texts else {})},
            )
            for c, v, t in zip(chunks, np.asarray(vectors, dtype=np.float32), analyzed)
        ]

    def _filter(self, f: Filter | None) -> models.Filter | None:
        """The filter in Qdrant's language (the same boolean shape)."""
        if not f:
            return None
        return models.Filter(must=[self._clause(c) for c in f.must] or None,
                             should=[self._clause(c) for c in f.should] or None,
                             must_not=[self._clause(c) for c in f.must_not] or None)

    def _clause(self, c: filters.Clause):
        if isinstance(c, Filter):
            return self._filter(c) or models.Filter()
        if c.op in ("eq", "ne", "any_of", "none_of"):
            terms = [filters.value_term(c.key, v) for v in c.values]
            found = _match_any("meta_pairs", terms) if terms else _NOTHING
            return models.Filter(must_not=[found]) if c.negated else found
        if c.op == "exists":
            empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=f"metadata.{c.key}"))
            return models.Filter(must_not=[empty]) if c.exists else empty
        if c.op == "range":
            bounds = {n: getattr(c, n) for n in ("gt", "gte", "lt", "lte") if getattr(c, n) is not None}
            if any(isinstance(b, Timestamp) for b in bounds.values()):
                return models.FieldCondition(key=f"times.{c.key}", range=models.Range(**{n: b.micros for n, b in bounds.items()}))
            return models.FieldCondition(key=f"metadata.{c.key}", range=models.Range(**bounds))
        terms = list(dict.fromkeys(self.analyzer.analyze(c.text)))
        return models.Filter(must=[_match("text_terms", text_term(c.key, t)) for t in terms]) if terms else _NOTHING

    def _filter_payload(self, metadata: filters.Metadata) -> dict:
        payload = {"metadata": filters.to_json(metadata), "meta_pairs": filters.exact_terms(metadata)}
        if times := {key: int(value) for kind, key, value in filters.range_values(metadata) if kind == "timestamp"}:
            payload["times"] = times
        if texts := [text_term(key, term) for key, value in metadata.items() if isinstance(value, str)
                     for term in self._value_terms(value)]:
            payload["text_terms"] = texts
        return payload

    def delete_documents(self, document_ids: Iterable[str]) -> tuple[int, int]:
        ids = list(dict.fromkeys(document_ids))
        with self._write_lock, self._calls():
            existed, terms, chunks = self._stored_documents(ids)
            if existed:
                gone = models.Filter(must=[_match_any("document_id", sorted(existed))])
                own = self._begin_write()
                self.client.delete(self.name, points_selector=models.FilterSelector(filter=gone), wait=True,
                                   ordering=self._ordering)
                self._written(own, -terms, -chunks)
        return len(existed), len(ids) - len(existed)

    def _stored(self, which: models.Filter) -> tuple[int, int]:
        """The index terms and chunks of the stored points `which` selects."""
        terms = chunks = 0
        for page in self._pages(which, ["n_terms"]):
            terms, chunks = terms + self._terms(page), chunks + len(page)
        return terms, chunks

    def _stored_documents(self, document_ids: Sequence[str]) -> tuple[set[str], int, int]:
        """The documents among `document_ids` that are stored (their chunk 0 is), and the index terms and chunks
        they hold, from one scroll of their points."""
        if not document_ids:
            return set(), 0, 0
        which = models.Filter(must=[_match_any("document_id", list(document_ids))])
        points = [p for page in self._pages(which, ["document_id", "chunk_index", "n_terms"]) for p in page]
        existed = {p.payload["document_id"] for p in points if p.payload.get("chunk_index") == 0}
        theirs = [p for p in points if p.payload["document_id"] in existed]
        return existed, self._terms(theirs), len(theirs)

    def _pages(self, which: models.Filter, fields: list[str]) -> Iterator[list[models.Record]]:
        offset = None
        while True:
            found, offset = self.client.scroll(self.name, scroll_filter=which, limit=1000, offset=offset,
                                               with_payload=fields, with_vectors=False)
            yield found
            if offset is None:
                return

    def _terms(self, points: Sequence[models.Record]) -> int:
        """The points' index terms: recorded since issue 40 (`n_terms`), analyzed again for older points."""
        older = [p.id for p in points if "n_terms" not in (p.payload or {})]
        terms = sum(int(p.payload["n_terms"]) for p in points if "n_terms" in (p.payload or {}))
        if older:
            terms += sum(len(self.analyzer.analyze(indexed_text(p.payload["title"], p.payload["text"])))
                         for p in self.client.retrieve(self.name, older, with_payload=["title", "text"]))
        return terms

    # ------------------------------------------------------------------ state (what the service reports)
    @property
    def dense_index_in_use(self) -> str:
        return "qdrant"

    @property
    def dense_ef_search(self) -> int:
        return 0  # the cluster's own HNSW settings

    @property
    def dense_recall(self) -> float:
        return 0.0

    @property
    def dense_backlog(self) -> int:
        return 0  # Qdrant's optimizer indexes on its own

    @property
    def read_only_reason(self) -> str:
        return ""  # Qdrant reports its own faults per call (UNAVAILABLE, RESOURCE_EXHAUSTED)

    def check_writable(self) -> None:
        pass

    def check_free_space(self) -> None:
        pass

    def close(self, checkpoint: bool = True, reason: str = "") -> None:
        pass  # the client belongs to the catalog; Qdrant holds every acked write already


def _chunk(m: Mapping) -> Chunk:
    return Chunk(m["chunk_id"], m["document_id"], m["chunk_index"], m["text"], m["title"], filters.from_json(m["metadata"]),
                 m["start_char"], m["end_char"])


def _term_counts(terms: Sequence[str]) -> dict[int, int]:
    """Term ids and how often each occurs (a repeated query term counts again, as in tantivy's query)."""
    counts: Counter[int] = Counter(term_id("".join(t.split())) for t in terms)
    return dict(counts)


def _bm25_vector(terms: Sequence[str], avgdl: float) -> models.SparseVector:
    counts = _term_counts(terms)
    norm = K1 * (1 - B + B * len(terms) / avgdl)
    return models.SparseVector(indices=list(counts), values=[tf * (K1 + 1) / (tf + norm) for tf in counts.values()])


def _ranked(points) -> list[ScoredId]:
    """Equal scores by chunk id: Qdrant returns ties in its internal order, which depends on the order of the
    writes, so two servers' copies of the same documents would otherwise rank ties differently."""
    ordered = sorted(points, key=lambda p: (-p.score, p.payload["chunk_id"]))
    return [ScoredId(p.payload["chunk_id"], rank, float(p.score)) for rank, p in enumerate(ordered, start=1)]


def _match(key: str, value) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _match_any(key: str, values: list) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchAny(any=values))


_NOTHING = models.HasIdCondition(has_id=[])  # a condition no point meets
