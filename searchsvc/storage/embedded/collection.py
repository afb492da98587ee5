"""A collection: its config, dense and keyword indexes, metadata postings, and durable storage.

Write path (one batch): check free space -> validate -> chunk -> embed (no lock held) -> append to the WAL and
fsync -> apply to the indexes and the docstore's open transaction -> ack. Recovery: load the last snapshot with
the docstore committed with it, replay WAL records newer than it. A checkpoint persists the FAISS index and
LlamaIndex's index store into a fresh directory and fsyncs it, then commits the docstore together with that
directory's name: the commit is the atomic switch. CURRENT mirrors the name for people and tools. Then the WAL
is emptied. Every step leaves a state that `open` can recover, and a step that fails (a full disk) leaves the
previous state in place.

Storage faults: a WAL append that fails is rolled back and reported (disk full: RESOURCE_EXHAUSTED, other I/O:
UNAVAILABLE); memory is updated only after the append succeeded. A fault the WAL cannot roll back, or any fsync
failure, makes the collection read-only (`read_only_reason`) until it is reopened; searches keep working.

On-disk layout under <index_dir>/<name>/:
    collection.json    config (written once, atomically)
    docstore.sqlite    chunk text and metadata (LlamaIndex's docstore); its committed meta names the live
                       snapshot and its seq (storage/embedded/sqlite_kv.py)
    CURRENT            a copy of that name (collections from before the docstore moved to SQLite: the pointer)
    snap-<seq>/        FAISS index + id map, LlamaIndex index_store JSON; state.json {"seq": n}. An HNSW graph is
                       written as storage/embedded/graph_files.py lays it out: its vectors in an append-only
                       file hard-linked from one snapshot to the next, so a snapshot writes the graph and the
                       rows added since the last one, not every vector again
    keyword/, keyword.seq   the tantivy keyword index and the last seq it committed
    wal.log            records after the snapshot (see storage/embedded/wal.py)
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import itertools
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from searchsvc.domain import filters
from searchsvc.domain.documents import DocumentView, StoredDocument, document_from_chunks
from searchsvc.domain.filters import Filter
from searchsvc.domain.types import (
    BACKENDS,
    DENSE_INDEX_KINDS,
    DENSE_QUANTIZATIONS,
    MAX_EF_SEARCH,
    MAX_KEYWORD_AVG_TERMS,
    RESERVED_METADATA,
    Chunk,
    CollectionConfig,
    Document,
    ScoredId,
)
from searchsvc.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, SearchsvcError, Unavailable
from searchsvc.ingest.batch import BatchPreparer, DocumentLimits, IndexReport
from searchsvc.ingest.chunking import Chunker
from searchsvc.platform.files import (
    FileLayer,
    free_bytes,
    fsync_dir,
    fsync_tree,
    is_disk_full,
    write_json_atomic,
    write_text_atomic,
)
from searchsvc.retrieve.analyzers import get_analyzer
from searchsvc.retrieve.external import EXTERNAL_MODEL, MAX_DIMENSION
from searchsvc.storage.embedded import graph_files
from searchsvc.storage.embedded.dense import DenseIndex, DenseIndexSpec
from searchsvc.storage.embedded.metadata_index import MetadataIndex
from searchsvc.storage.embedded.snapshot import PinnedCheckpoint
from searchsvc.storage.embedded.sqlite_kv import DocstoreFailed, SqliteKVStore, read_committed
from searchsvc.storage.embedded.tantivy_keyword import KeywordChunk, KeywordIndexFailed, TantivyKeywordIndex
from searchsvc.storage.embedded.wal import WalFailed, WriteAheadLog, iter_records

log = logging.getLogger(__name__)
KEYWORD_DIR = "keyword"  # the tantivy index, committed independently of the snapshots (see open)
DOCSTORE_FILE = "docstore.sqlite"
# Committed by checkpoints: every chunk's user metadata is in the docstore's chunk_metadata table (see
# _rebuild_derived_indexes); absent in a docstore from before the table, which open() fills once.
CHUNK_METADATA_COMPLETE = "chunk_metadata"
CHECKPOINT_RETRY_S = 30.0  # after a failed checkpoint (full disk), the WAL keeps everything; retry this much later
# A checkpoint writes a FAISS snapshot only once this many vectors were added since the last FAISS snapshot
# (or ten times as many removed); below it, it commits them to the docstore's dense log (~1.5 KB each), which
# start-up replays. Replaying an add is an HNSW insert (~3k/s on 2 cores at 1M chunks): this bounds a replay
# after kill -9 to ~7 s. A removal only marks a tombstone.
DENSE_SNAPSHOT_CHANGES = 20_000
# A filtered ListDocuments call examines at most this many documents, then returns a short page with a token
# to go on from (AIP-158 allows a short page): a selective filter must not make one call scan the collection.
LIST_SCAN_LIMIT = 50_000
KEYWORD_HEAL_INTERVAL_S = 1.0  # a failed keyword writer is replaced by the next write, at most this often


def user_metadata(node_metadata: dict) -> dict[str, str]:
    return {k: v for k, v in node_metadata.items() if k not in RESERVED_METADATA}


class Collection:
    def __init__(
        self,
        name: str,
        path: Path,
        config: CollectionConfig,
        dense: DenseIndex,
        limits: DocumentLimits,
        checkpoint_wal_bytes: int,
        min_free_disk_bytes: int = 0,
        files: FileLayer | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.config = config
        self.dense = dense
        refresh_s = max(config.refresh_interval_ms, 0) / 1000
        self.keyword = _open_keyword_index(path / KEYWORD_DIR, get_analyzer(config.analyzer), refresh_s)
        self.metadata = MetadataIndex(self.keyword.analyzer.analyze)  # text_match analyzes as the keyword leg
        self.chunker = Chunker(config.chunk_size, config.chunk_overlap)
        external = config.embedding_model == EXTERNAL_MODEL
        self.ingest = BatchPreparer(self.chunker, None if external else dense.embed_passages, dense.store.dimension, limits)
        self.checkpoint_wal_bytes = checkpoint_wal_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self.wal = WriteAheadLog(path / "wal.log", files)
        self._checkpoint_retry_at = 0.0
        self._dense_changes = 0  # since the FAISS snapshot: vectors added, plus removed ones at 1/10 (replay cost)
        self._keyword_heal_at = 0.0
        self._seq = 0
        self._document_count = 0
        self._write_lock = threading.Lock()
        self.closed = False
        self.closed_reason = ""

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def write_config(path: Path, config: CollectionConfig) -> None:
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / "collection.json", dataclasses.asdict(config))

    @staticmethod
    def read_config(path: Path) -> CollectionConfig:
        stored = json.loads((path / "collection.json").read_text(encoding="utf-8"))
        stored.setdefault("language", "en")  # written before collections had a language: English defaults
        return CollectionConfig(**stored)

    @classmethod
    def open(
        cls, path: Path, embed_model, dimension: int, *, limits: DocumentLimits, checkpoint_wal_bytes: int,
        min_free_disk_bytes: int = 0, files: FileLayer | None = None,
    ):
        """Load the snapshot and replay the WAL. Raises WalCorrupt (nothing changed) for a damaged mid-log."""
        started = time.perf_counter()
        config = cls.read_config(path)
        kvstore = SqliteKVStore(path / DOCSTORE_FILE)
        try:
            if "snapshot" not in kvstore.committed and (path / "CURRENT").exists():
                _migrate_json_docstore(path, kvstore)
            snapshot, seq = cls.current_snapshot(path, kvstore.committed)
            spec = DenseIndexSpec.of(config)
            if snapshot is None:
                dense = DenseIndex.create(embed_model, dimension, spec, kvstore)
            else:
                dense = DenseIndex.load(snapshot, embed_model, spec, kvstore=kvstore)
        except BaseException:
            kvstore.close()
            raise
        coll = cls(path.name, path, config, dense, limits, checkpoint_wal_bytes, min_free_disk_bytes, files)
        try:
            coll._recover(seq, faiss_seq=_snapshot_seq(snapshot))
        except BaseException:
            coll.keyword.close()  # release its writer lock: a reopen after `searchsvc repair` takes it again
            coll.wal.close()
            kvstore.close()
            raise
        log.info(
            "collection %s loaded: %d chunks, snapshot seq %d, %.2f s", coll.name, coll.chunk_count, seq, time.perf_counter() - started,
        )
        return coll

    def _recover(self, seq: int, faiss_seq: int) -> None:
        """Bring the indexes from the last commit (`seq`: the docstore; `faiss_seq`: the FAISS snapshot it names,
        then the dense log up to `seq`) and the keyword index's last commit up to the WAL's end."""
        coll = self
        coll._seq = seq
        records = coll.wal.open()  # first: a corrupt log fails the open before any costly rebuild
        for _, removed, added, vectors in coll.dense.kvstore.dense_log(after=faiss_seq):
            coll.dense.replay(removed, added, np.frombuffer(vectors, dtype=np.float32).reshape(len(added), coll.dimension))
            coll._count_dense_changes(added, removed)
        coll._rebuild_derived_indexes()
        wal_covers_keyword = bool(records) and records[0]["seq"] <= coll.keyword.committed_seq + 1
        if coll.keyword.committed_seq < seq and not wal_covers_keyword:
            # The keyword index commits before the WAL is emptied, so the WAL holds every record it misses, unless
            # it was never built (a collection from before it existed, a re-embed): then it is built from the
            # docstore (analysing every chunk). A crash between the docstore's commit and the keyword commit
            # leaves it behind the docstore, and the WAL replay below catches it up.
            coll._rebuild_keyword_index(seq)
        replayed = 0
        for record in records:
            # Each part skips what it already holds; replaying a record twice is harmless (see _apply).
            if record["seq"] > min(coll._seq, coll.keyword.committed_seq):
                coll._apply(record, dense=record["seq"] > coll._seq, keyword=record["seq"] > coll.keyword.committed_seq)
                coll._seq = max(coll._seq, record["seq"])
                replayed += 1
        coll._refresh_keyword()
        coll.keyword.start_refresher()
        if hasattr(coll.keyword.analyzer, "prepare_korean") and coll.dense.sample_has_hangul():
            coll.keyword.analyzer.prepare_korean()  # a collection that holds Korean: its first query shouldn't wait
        log.info("collection %s: %d WAL records replayed", coll.name, replayed)

    @staticmethod
    def current_snapshot(path: Path, committed: dict[str, str] | None = None) -> tuple[Path | None, int]:
        """The live snapshot directory and its seq: what the docstore committed (`committed`, or read from
        disk), else CURRENT in a collection that predates the SQLite docstore."""
        committed = read_committed(path / DOCSTORE_FILE) if committed is None else committed
        if "snapshot" in committed:
            return path / committed["snapshot"], int(committed["seq"])
        current = path / "CURRENT"
        if not current.exists():
            return None, 0
        snapshot = path / current.read_text(encoding="utf-8").strip()
        state = json.loads((snapshot / "state.json").read_text(encoding="utf-8"))
        return snapshot, int(state["seq"])

    def _rebuild_derived_indexes(self) -> None:
        """Metadata postings and the document count are derived from the docstore, so snapshots don't store them.
        The postings come from its chunk_metadata table (small rows); a docstore committed before that table
        existed fills it once from the nodes (committed, and flagged complete, at the next checkpoint)."""
        kvstore = self.dense.kvstore
        if kvstore.committed.get(CHUNK_METADATA_COMPLETE) != "1":
            found = [(chunk_id, user_metadata(metadata)) for chunk_id, metadata in self.dense.stored_metadata()]
            kvstore.put_chunk_metadata([(chunk_id, metadata) for chunk_id, metadata in found if metadata])
        # The postings hold FAISS ids, the dense store's own int objects (not copies: ~28 B per chunk and posting).
        faiss_ids = self.dense.all_faiss_ids()
        for metadata, chunk_ids in kvstore.chunk_metadata_groups().items():
            self.metadata.add_many([faiss_ids[c] for c in chunk_ids if c in faiss_ids], filters.from_json(json.loads(metadata)))
        del faiss_ids
        self._document_count = self.dense.document_count

    def _rebuild_keyword_index(self, seq: int) -> None:
        started = time.perf_counter()
        self.keyword.delete_all()
        batch, count = [], 0
        for chunk in self.dense.stored_chunks():
            batch.append(_keyword_chunk(chunk))
            if len(batch) == 1000:
                self.keyword.add(batch)
                count, batch = count + len(batch), []
        self.keyword.add(batch)
        self.keyword.applied(seq)
        self.keyword.commit()
        log.info("collection %s: keyword index built from %d chunks in %.1f s", self.name, count + len(batch), time.perf_counter() - started)

    def close(self, checkpoint: bool = True, reason: str = "") -> None:
        """`reason`: what writes racing the close are told (UNAVAILABLE, retry); none: FAILED_PRECONDITION."""
        with self._write_lock:
            self.closed_reason = reason or self.closed_reason
            self._close_locked(checkpoint)

    def _close_locked(self, checkpoint: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.keyword.stop_refresher()
        self.dense.close()  # the graph builder's last step ends first
        if checkpoint and (self.wal.size() > 0 or self._dense_changes or self.dense.graph_grew) and not self.read_only_reason:
            # With a FAISS snapshot: a stop can take a few seconds, and the next start then replays no dense log
            # (nor inserts again what the graph builder inserted since the last snapshot).
            self._try_checkpoint_locked(faiss_snapshot=True)
        self.keyword.close()
        self.wal.close()
        self.dense.kvstore.close()  # rolls back nothing: the checkpoint committed it, or the WAL holds it

    # ------------------------------------------------------------------ re-embed
    def chunks(self) -> tuple[int, dict[str, Chunk]]:
        """(sequence number, every live chunk by id), read consistently."""
        with self._write_lock:
            self._check_open()
            return self._seq, {c.id: c for c in self.dense.stored_chunks()}

    @contextmanager
    def write_reembedded(self, target: Path, config: CollectionConfig, dense: DenseIndex, done: dict[str, tuple[str, np.ndarray]]):
        """Hold the write lock and yield once `target` holds this collection's chunks re-embedded into `dense`
        (`config`'s model): a complete collection directory (config, snapshot, CURRENT written last) whose
        version is one past this one's, so cached answers keyed on the version never match it. `done`: chunk id ->
        (indexed text, vector) computed outside the lock; chunks written since are embedded here. Writers wait until
        the caller's swap is over, then find this collection closed."""
        with self._write_lock:
            self._check_open()
            chunks = list(self.dense.stored_chunks())
            # Chunks written (or rewritten with new text under the same id) since the vectors were computed.
            late = [c for c in chunks if done.get(c.id, ("", None))[0] != c.indexed_text]
            if late:
                vectors = dense.embed_passages([c.indexed_text for c in late])
                done.update({c.id: (c.indexed_text, v) for c, v in zip(late, vectors)})
            # A staging copy: its snapshot keeps the vectors pending, and the collection opened from it builds the
            # graph in the background (the write lock is not held for a graph build).
            dense.background = False
            if chunks:
                dense.add(chunks, np.stack([done[c.id][1] for c in chunks]))
            texts = self.dense.kvstore.all_document_texts()
            while part := dict(itertools.islice(texts, 2000)):
                dense.kvstore.put_document_texts(part)
            Collection.write_config(target, config)
            name = f"snap-{self._seq + 1:012d}"
            dense.persist(target / name)
            write_json_atomic(target / name / "state.json", {"seq": self._seq + 1})
            fsync_tree(target)
            dense.kvstore.commit(snapshot=name, seq=self._seq + 1)
            dense.kvstore.close()  # before the directory is renamed under it
            dense.close()
            write_text_atomic(target / "CURRENT", name)  # last: a staging dir with CURRENT is complete
            yield self

    def pin_checkpoint(self, staging: Path) -> PinnedCheckpoint:
        """A checkpoint at the current write sequence, held for a snapshot archive (storage/embedded/snapshot.py):
        under the write lock, checkpoint, hard-link the FAISS snapshot and the keyword index's files of it into
        `staging` (a new directory on this filesystem), and open a read transaction on the docstore, which sees
        that commit until it ends. Writes wait only for this, not for the archive."""
        with self._write_lock:
            self.check_writable()
            try:
                self._checkpoint_locked()
                name = self.dense.kvstore.committed["snapshot"]
                staging.mkdir(parents=True)
                shutil.copyfile(self.path / "collection.json", staging / "collection.json")
                (staging / name).mkdir()
                for f in (self.path / name).iterdir():
                    os.link(f, staging / name / f.name)
                # An HNSW snapshot's rows file is shared with later snapshots, which append to it: take its prefix.
                sizes = {f"{name}/{file}": size for file, size in graph_files.committed_sizes(staging / name).items()}
                self.keyword.link_committed(staging / KEYWORD_DIR)
                docstore = sqlite3.connect(f"{(self.path / DOCSTORE_FILE).as_uri()}?mode=ro", uri=True, check_same_thread=False)
                docstore.execute("BEGIN")
                docstore.execute("SELECT count(*) FROM meta").fetchone()  # the read transaction starts here
            except OSError as exc:
                raise self._storage_error(exc, "pin a checkpoint for a snapshot") from None
            return PinnedCheckpoint(staging, docstore, self._seq, name, self.document_count, self.chunk_count,
                                    dataclasses.asdict(self.config), sizes)

    def retire(self, reason: str) -> None:
        """Close without a checkpoint (the caller holds the write lock): later writes get UNAVAILABLE."""
        self.closed_reason = reason
        self._close_locked(checkpoint=False)

    # ------------------------------------------------------------------ writes
    def index_documents(self, docs: Sequence[Document]) -> IndexReport:
        started = time.perf_counter()
        self._heal_keyword()
        self.check_writable()
        self.check_free_space()  # before any work: refused up front, like Elasticsearch's flood stage
        batch = self.ingest.prepare(docs)  # no lock held: chunking and embedding are most of a batch's time
        prepared = time.perf_counter()
        replaced = self.upsert(batch.document_ids, batch.chunks, batch.vectors, batch.texts)
        log.debug(
            "%s: batch of %d docs / %d chunks: chunk and embed %.0f ms, commit %.0f ms",
            self.name, len(docs), len(batch.chunks), (prepared - started) * 1000, (time.perf_counter() - prepared) * 1000,
        )
        return IndexReport(len(batch.document_ids), replaced, len(batch.chunks), batch.errors)

    def upsert(self, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray,
               texts: dict[str, str] | None = None) -> int:
        """Replace each document in `document_ids` by its `chunks` (vectors row for row) and its text in `texts`
        (those the chunks do not reproduce), durably: returns after the WAL holds the batch (fsynced). Returns
        how many of the documents existed before."""
        raw_vectors = np.asarray(vectors, dtype=np.float32).tobytes()
        record = {
            "op": "upsert",
            "documents": list(document_ids),
            "texts": texts or {},
            # vars, not dataclasses.asdict: the same dict at 1/30 of the cost
            "chunks": [{**vars(c), "metadata": filters.to_json(c.metadata)} for c in chunks],
            "vectors": base64.b64encode(raw_vectors).decode("ascii"),
        }
        with self._write_lock:
            self.check_writable()
            replaced = self._commit(record, list(chunks), raw_vectors)
            self._maybe_checkpoint()
        if self.config.refresh_interval_ms < 0:
            self._refresh_keyword()
        return replaced

    def delete_documents(self, ids: Iterable[str]) -> tuple[int, int]:
        ids = list(dict.fromkeys(ids))
        self._heal_keyword()
        with self._write_lock:
            self.check_writable()
            stored = self.dense.chunk_ids_of_many(ids)
            present = [i for i in ids if i in stored]
            if present:
                self._commit({"op": "delete", "documents": present})
        if self.config.refresh_interval_ms < 0:
            self._refresh_keyword()
        return len(present), len(ids) - len(present)

    def _commit(self, record: dict, chunks: list[Chunk] | None = None, vectors: bytes | None = None) -> int:
        """WAL first (durable), then memory. Called with the write lock held. Returns documents replaced.
        `chunks` and `vectors`: the record's, as the caller had them before encoding (see _apply)."""
        record["seq"] = self._seq + 1
        try:
            self.wal.append(record)
        except OSError as exc:
            raise self._storage_error(exc, "write its log") from None
        except WalFailed:
            self.check_writable()
            raise
        self._seq = record["seq"]
        try:
            return self._apply(record, chunks=chunks, vectors=vectors)
        except DocstoreFailed:
            # Durable in the WAL, so acked; the docstore marked itself failed (read_only_reason), and reopening
            # replays this record from the WAL.
            return 0

    def _apply(self, record: dict, *, dense: bool = True, keyword: bool = True, chunks: list[Chunk] | None = None,
               vectors: bytes | None = None) -> int:
        """Apply one WAL record to the indexes: `dense` (with the docstore and metadata postings) and `keyword`.
        Returns how many of its documents existed before. Applying a record again is harmless: it sets its
        documents whole (deleted, or exactly these chunks), whatever they were. `chunks` and `vectors` (float32
        bytes): the record's own, from a writer that has them, so as not to decode what it just encoded (base64
        and chunk dicts: ~7% of a bulk load's writer thread)."""
        existed = 0
        chunks = _record_chunks(record) if chunks is None else chunks
        if keyword and not (dense and chunks):  # else it runs while FAISS inserts the chunks' vectors (below)
            self._apply_keyword(record, chunks)
        if not dense:
            return existed
        kvstore = self.dense.kvstore
        removed: list[str] = []
        replaced: list[str] = []
        stored = self.dense.chunk_ids_of_many(record["documents"])
        for doc_id in record["documents"]:
            old = stored.get(doc_id, [])
            existed += bool(old)
            # Every upserted document has at least one chunk (its text is non-empty).
            self._document_count += (record["op"] == "upsert") - bool(old)
            removed += old
            if old:
                replaced.append(doc_id)
        if vectors is None:
            vectors = base64.b64decode(record["vectors"]) if chunks else b""
        # Postings, vectors and documents change under the dense index's lock, which a filtered search holds from
        # selecting to searching (dense_search), and a document read from its chunk ids to its text: neither sees
        # a chunk in one and not the other.
        with self.dense.locked():
            kvstore.delete_document_texts(replaced)
            kvstore.put_document_texts(record.get("texts", {}))  # records from before texts were stored have none
            faiss_ids = self.dense.faiss_ids(removed)
            for chunk_id, metadata in kvstore.chunk_metadata(removed).items():
                if chunk_id in faiss_ids:
                    self.metadata.remove(faiss_ids[chunk_id], filters.from_json(metadata))
            kvstore.delete_chunk_metadata(removed)
            self.dense.remove(removed, rebuild=False)
            if chunks:
                def meanwhile() -> None:  # on this thread while FAISS inserts on another (DenseIndex.add)
                    kvstore.put_chunk_metadata([(c.id, filters.to_json(c.metadata)) for c in chunks if c.metadata])
                    added = self.dense.faiss_ids([c.id for c in chunks])
                    for c in chunks:
                        self.metadata.add(added[c.id], c.metadata)
                    if keyword:
                        self._apply_keyword(record, chunks)

                self.dense.add(chunks, np.frombuffer(vectors, dtype=np.float32).reshape(len(chunks), -1), rebuild=False,
                               meanwhile=meanwhile)
        self.dense.maybe_rebuild()
        # What this record did to the vectors, committed with the docstore at the next checkpoint: until a FAISS
        # snapshot holds it, start-up replays it from there (see _checkpoint_locked).
        kvstore.log_dense(record["seq"], removed, [c.id for c in chunks], vectors)
        self._count_dense_changes(chunks, removed)
        return existed

    def _count_dense_changes(self, added: Sequence, removed: Sequence) -> None:
        """What replaying the dense log would cost: an HNSW insert per vector added, a tombstone per removal."""
        self._dense_changes += len(added) + len(removed) / 10

    def _apply_keyword(self, record: dict, chunks: list[Chunk]) -> None:
        """The record is already durable in the WAL: a failing keyword writer must not fail its ack. Writes are
        refused (read_only_reason) until the next one replaces the writer (_heal_keyword)."""
        try:
            self.keyword.delete_documents(record["documents"])
            if chunks:
                self.keyword.add([_keyword_chunk(c) for c in chunks])
            self.keyword.applied(record["seq"])
        except KeywordIndexFailed:
            pass  # logged where it failed

    def _heal_keyword(self) -> None:
        """Replace a keyword writer that failed (a full disk while it wrote a segment) without a reopen: a fresh
        writer from its last commit, the WAL records after that commit replayed into it, then committed. The WAL
        holds them all: it is emptied only after a keyword commit. Until this succeeds writes are refused."""
        if not self.keyword.failure or time.monotonic() < self._keyword_heal_at:
            return
        with self._write_lock:
            if not self.keyword.failure or self.closed or self.wal.failure or self.dense.kvstore.failure:
                return
            self._keyword_heal_at = time.monotonic() + KEYWORD_HEAL_INTERVAL_S
            self.keyword.reset_writer()
            replayed = 0
            for record in iter_records(self.wal.path):
                if record["seq"] > self.keyword.committed_seq:
                    self._apply_keyword(record, _record_chunks(record))
                    replayed += 1
            self._refresh_keyword()
            if not self.keyword.failure:
                log.warning("collection %s: keyword index writer replaced, %d WAL records replayed into it", self.name, replayed)

    def refresh(self) -> None:
        """The keyword index refreshed now, not at the end of its refresh interval (the dense index is current
        once a write is acked)."""
        self._refresh_keyword()

    def _refresh_keyword(self) -> None:
        try:
            self.keyword.refresh()
        except KeywordIndexFailed:
            pass  # logged where it failed; read_only_reason reports it

    def _check_open(self) -> None:
        if self.closed and self.closed_reason:
            raise Unavailable(f"collection {self.name!r} {self.closed_reason}; retry")
        if self.closed:
            raise FailedPrecondition(f"collection {self.name!r} was deleted or the server is stopping")

    @property
    def writes_in_progress(self) -> int:
        return 0  # a write is visible whole, and `version` changes with it

    @property
    def read_only_reason(self) -> str:
        """Why writes are refused after a storage fault (empty: writable). Cleared only by reopening."""
        return self.wal.failure or self.keyword.failure or self.dense.kvstore.failure

    def check_writable(self) -> None:
        self._check_open()
        if self.read_only_reason == self.keyword.failure and is_disk_full_message(self.keyword.failure):
            raise ResourceExhausted(
                f"disk full: collection {self.name!r} could not write its keyword index ({self.keyword.failure}); "
                "nothing was written: free space and retry"
            )
        if self.read_only_reason:
            raise FailedPrecondition(
                f"collection {self.name!r} is read-only after a storage fault: {self.read_only_reason}. Searches "
                "still work; fix the disk, then reopen the collection (ReopenCollection, or restart the server)"
            )

    def check_free_space(self) -> None:
        """RESOURCE_EXHAUSTED while the index dir's filesystem is below the min_free_disk_bytes watermark."""
        if self.min_free_disk_bytes <= 0:
            return
        free = free_bytes(self.path)
        if free < self.min_free_disk_bytes:
            raise ResourceExhausted(
                f"disk full: collection {self.name!r} refuses writes while {free / 2**20:.1f} MiB are free under "
                f"{self.path.parent}, below the min_free_disk_bytes watermark ({self.min_free_disk_bytes / 2**20:.0f} "
                "MiB); nothing was written: free space and retry"
            )

    def _storage_error(self, exc: OSError, action: str) -> SearchsvcError:
        """A domain error for an environmental fault: the caller gets a precise code, the log one line."""
        state = f"; the collection is now read-only: {self.read_only_reason}" if self.read_only_reason else ""
        if is_disk_full(exc):
            log.warning("collection %s: disk full, could not %s%s", self.name, action, state)
            return ResourceExhausted(
                f"disk full: collection {self.name!r} could not {action} ({exc.strerror}); nothing was written"
                + (state or ": free space and retry")
            )
        log.warning("collection %s: I/O error, could not %s: %s%s", self.name, action, exc, state)
        return Unavailable(
            f"storage error: collection {self.name!r} could not {action} ({exc.strerror}); nothing was written"
            + (state or ": retry later")
        )

    # ------------------------------------------------------------------ checkpoints
    def _maybe_checkpoint(self) -> None:
        """Called after a commit: the batch is already durable in the WAL, so a failed checkpoint must not fail
        its ack. It is logged and retried later; the WAL keeps everything meanwhile."""
        if self.wal.size() >= self.checkpoint_wal_bytes and time.monotonic() >= self._checkpoint_retry_at:
            self._try_checkpoint_locked()

    def checkpoint(self) -> None:
        with self._write_lock:
            self.check_writable()
            try:
                self._checkpoint_locked()
            except OSError as exc:
                raise self._storage_error(exc, "write a checkpoint") from None

    def _try_checkpoint_locked(self, faiss_snapshot: bool = False) -> None:
        try:
            self._checkpoint_locked(faiss_snapshot)
        except (OSError, WalFailed, DocstoreFailed) as exc:
            self._checkpoint_retry_at = time.monotonic() + CHECKPOINT_RETRY_S
            log.warning(
                "collection %s: checkpoint at seq %d failed (%s); the WAL still holds every write, retrying in %.0f s",
                self.name, self._seq, exc, CHECKPOINT_RETRY_S,
            )

    def _checkpoint_locked(self, faiss_snapshot: bool = False) -> None:
        """Snapshot, commit the docstore naming it (the switch), empty the WAL. An error before the switch removes
        what this attempt wrote and leaves the old snapshot, the docstore's last commit and the WAL as they were;
        an error after it leaves WAL records the new snapshot already covers (replay skips them)."""
        started = time.perf_counter()
        kvstore = self.dense.kvstore
        name = kvstore.committed.get("snapshot", "")
        kind = f"a dense-log commit, {int(self._dense_changes)} vectors added after the last FAISS snapshot"
        if kvstore.committed.get("seq") == str(self._seq) and not (faiss_snapshot and (self._dense_changes or self.dense.graph_grew)):
            kind = "committed before"  # a retry after emptying the WAL failed
        elif name and self._dense_changes < DENSE_SNAPSHOT_CHANGES and not faiss_snapshot:
            # A small change: commit the docstore with its dense log and keep the FAISS snapshot, so the cost
            # follows what changed (a FAISS snapshot rewrites a flat index whole, and an HNSW graph's links).
            kvstore.commit(snapshot=name, seq=self._seq, **{CHUNK_METADATA_COMPLETE: 1})
        else:
            live, name = name, f"snap-{self._seq:012d}"
            if name == live:  # the same writes, a larger graph (the graph builder's work): a new directory still
                name = f"{name}-g{self.dense.store._faiss_index.ntotal}"
            tmp, final = self.path / f".tmp-{name}", self.path / name
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                self.dense.persist(tmp, previous=self.path / live if live else None)
                write_json_atomic(tmp / "state.json", {"seq": self._seq})
                fsync_tree(tmp)
                shutil.rmtree(final, ignore_errors=True)  # a leftover of an attempt that failed before the switch
                tmp.rename(final)
                fsync_dir(self.path)
                kvstore.trim_dense_log(self._seq)
                kvstore.commit(snapshot=name, seq=self._seq, **{CHUNK_METADATA_COMPLETE: 1})
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if kvstore.committed.get("snapshot") != name:
                    shutil.rmtree(final, ignore_errors=True)
                raise
            self._dense_changes = 0
            kind = "a FAISS snapshot"
        if self._current_name() != name:
            write_text_atomic(self.path / "CURRENT", name)  # a mirror: open() follows the docstore's commit
        self._commit_keyword()  # before the WAL is emptied: it may hold what the keyword index has not committed
        self.wal.reset()
        for old in self.path.glob("snap-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.path.glob(".tmp-snap-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log.info("collection %s: checkpoint at seq %d in %.2f s (%s)", self.name, self._seq, time.perf_counter() - started, kind)

    def _current_name(self) -> str:
        try:
            return (self.path / "CURRENT").read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def _commit_keyword(self) -> None:
        try:
            self.keyword.commit()
        except KeywordIndexFailed as exc:  # the WAL is kept: the next write (_heal_keyword) or a reopen replays it
            raise OSError(errno.ENOSPC if is_disk_full_message(str(exc)) else errno.EIO, str(exc)) from exc

    # ------------------------------------------------------------------ stats
    @property
    def version(self) -> int:
        """Sequence number of the last committed write: any index or delete changes it (answer-cache keys)."""
        return self._seq

    @property
    def document_count(self) -> int:
        return self._document_count

    @property
    def chunk_count(self) -> int:
        return self.dense.store.live_count

    @property
    def dimension(self) -> int:
        return self.dense.store._faiss_index.d

    @property
    def dense_index_in_use(self) -> str:
        return self.dense.kind

    @property
    def dense_ef_search(self) -> int:
        return self.dense.store.ef_search if self.dense.store.is_hnsw else 0

    @property
    def dense_backlog(self) -> int:
        return self.dense.backlog

    @property
    def dense_recall(self) -> float:
        calibration = self.dense.store.calibration
        return calibration.recall if calibration is not None and self.dense.store.is_hnsw else 0.0

    # ------------------------------------------------------------------ the storage seam (storage/base.py)
    def embed_query(self, query: str) -> np.ndarray:
        return self.dense.embed_query(query)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.dense.embed_passages(texts)

    def analyze_query(self, query: str) -> list[str]:
        return self.keyword.analyzer.analyze(query)

    def term_spans(self, text: str) -> list[tuple[str, int, int]]:
        return self.keyword.analyzer.spans(text)

    def may_match(self, filter: Filter | None) -> bool:
        if not filter:
            return True
        with self.dense.locked():
            return self.metadata.any_selected(self.metadata.select(filter), self.dense.live_count)

    def dense_search(
        self, vector: np.ndarray, k: int, filter: Filter | None = None, *, ef_search: int | None = None,
        exact: bool = False,
    ) -> list[ScoredId]:
        # A filter becomes the FAISS ids the metadata index allows, or those it excludes: FAISS searches
        # only the chunks it allows (dense.py).
        if not filter:
            return self.dense.search(vector, k, ef_search=ef_search, exact=exact)
        with self.dense.locked():  # the selection and the vectors of one moment (see _apply)
            selection = self.metadata.select(filter)
            if not self.metadata.any_selected(selection, self.dense.live_count):
                return []
            ids = {"excluded_ids" if selection.complemented else "allowed_ids": selection.ids}
            return self.dense.search(vector, k, ef_search=ef_search, exact=exact, **ids)

    def keyword_search(self, terms: Sequence[str], k: int, filter: Filter | None = None) -> list[ScoredId]:
        if filter and any(c.op == "text_match" for c in filter.conditions()):
            filter = self._text_matches_as_values(filter)
        return self.keyword.search_terms(terms, k, filter)

    def _text_matches_as_values(self, f: Filter) -> Filter:
        """tantivy holds metadata values, not their analyzed terms: each text_match becomes any_of over the
        key's distinct values that hold its terms (the metadata index knows and caches them)."""
        def clause(c):
            if isinstance(c, Filter):
                return self._text_matches_as_values(c)
            if c.op != "text_match":
                return c
            return filters.Condition(c.key, "any_of", tuple(self.metadata.text_matching_values(c)))  # none: no chunk
        return Filter(tuple(map(clause, f.must)), tuple(map(clause, f.should)), tuple(map(clause, f.must_not)))

    def similarities(self, vector: np.ndarray, chunk_ids: Sequence[str]) -> dict[str, float]:
        return self.dense.similarities(vector, chunk_ids)

    def vectors(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self.dense.stored_vectors(chunk_ids)

    def get_chunks(self, chunk_ids: Sequence[str]) -> dict[str, Chunk]:
        return self.dense.get_chunks(chunk_ids)

    # ------------------------------------------------------------------ documents (documents.py)
    def get_documents(self, document_ids: Sequence[str], view: DocumentView) -> dict[str, StoredDocument]:
        full = view is not DocumentView.BASIC
        with self.dense.locked():  # each document as one write left it (see _apply)
            stored = self.dense.chunk_ids_of_many(document_ids)
            chunk_ids = {d: stored[d] for d in document_ids if d in stored}  # in the order asked
            chunks = self.dense.get_chunks([c for ids in chunk_ids.values() for c in ids])
            texts = self.dense.kvstore.document_texts(list(chunk_ids)) if full else {}
            vectors = self.dense.stored_vectors(list(chunks)) if view is DocumentView.FULL_WITH_VECTORS else {}
        found = {}
        for doc_id, ids in chunk_ids.items():
            if ids:
                found[doc_id] = document_from_chunks(doc_id, [chunks[c] for c in ids], texts.get(doc_id) if full else "")
                found[doc_id].vectors = {c: vectors[c] for c in ids if c in vectors}
        return found

    def list_documents(self, filter: Filter | None, after: str, limit: int) -> tuple[list[str], str]:
        """In document id order. With a filter, each document's first chunk is tested against the filter's
        selection (metadata is the document's, on every chunk), scanning at most LIST_SCAN_LIMIT ids per call."""
        if not filter:
            ids = self.dense.document_ids_after(after, limit)
            return ids, ids[-1] if len(ids) == limit else ""
        found: list[str] = []
        scanned = 0
        while len(found) < limit and scanned < LIST_SCAN_LIMIT:
            page = self.dense.document_ids_after(after, max(limit, 1000))
            if not page:
                return found, ""
            with self.dense.locked():
                selection = self.metadata.select(filter)
                first = self.dense.faiss_ids([f"{d}#0" for d in page])
                ids = np.fromiter((first.get(f"{d}#0", -1) for d in page), dtype=np.int64, count=len(page))
                selected = np.isin(ids, selection.ids, invert=selection.complemented) & (ids >= 0)
            for doc_id, keep in zip(page, selected.tolist()):
                after = doc_id
                if keep:
                    found.append(doc_id)
                    if len(found) == limit:
                        break
            scanned += len(page)
        return found, after

    def count_documents(self, filter: Filter | None) -> int:
        """A document is counted by its first chunk (`<id>#0`): chunk ids end with their index."""
        if not filter:
            return self.document_count
        with self.dense.locked():
            selection = self.metadata.select(filter)
            firsts = sum(1 for c in self.dense.chunk_ids_at(selection.ids) if c is not None and c.endswith("#0"))
            return self.document_count - firsts if selection.complemented else firsts


def _open_keyword_index(path: Path, analyzer, refresh_s: float) -> TantivyKeywordIndex:
    """The keyword index is derived data (the snapshot's docstore plus the WAL hold everything in it): one that
    cannot be opened (damaged files) is set aside and rebuilt rather than failing the collection."""
    try:
        return TantivyKeywordIndex(path, analyzer, refresh_interval_s=refresh_s)
    except ValueError as exc:
        if "LockBusy" in str(exc):  # another writer holds it: a second server on this index dir
            raise
        log.warning("keyword index %s cannot be opened (%s): rebuilding it from the snapshot and the WAL", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        path.with_suffix(".seq").unlink(missing_ok=True)
        return TantivyKeywordIndex(path, analyzer, refresh_interval_s=refresh_s)


def is_disk_full_message(message: str) -> bool:
    """For errors that arrive as text (tantivy reports I/O errors inside a ValueError's message)."""
    return "No space left" in message or "Disk quota" in message


def _migrate_json_docstore(path: Path, kvstore: SqliteKVStore) -> None:
    """Move the docstore of a collection written before it lived in SQLite (LlamaIndex's SimpleKVStore JSON in
    the CURRENT snapshot) into `kvstore`, committed with that snapshot's name. Idempotent: a crash before the
    commit leaves the JSON as the pointer, and the next open migrates again."""
    snapshot, seq = Collection.current_snapshot(path, {})
    stored = json.loads((snapshot / "docstore.json").read_text(encoding="utf-8"))
    for collection, pairs in stored.items():
        kvstore.put_all(list(pairs.items()), collection=collection)
    kvstore.commit(snapshot=snapshot.name, seq=seq)
    (snapshot / "docstore.json").unlink()
    log.info("collection %s: moved the docstore of %s into %s", path.name, snapshot.name, DOCSTORE_FILE)


def _snapshot_seq(snapshot: Path | None) -> int:
    """The seq a FAISS snapshot directory holds (its state.json); 0 for none."""
    if snapshot is None:
        return 0
    return int(json.loads((snapshot / "state.json").read_text(encoding="utf-8"))["seq"])


def _record_chunks(record: dict) -> list[Chunk]:
    if record["op"] != "upsert":
        return []
    return [Chunk(**{**c, "metadata": filters.from_json(c["metadata"])}) for c in record["chunks"]]


def _keyword_chunk(chunk: Chunk) -> KeywordChunk:
    return KeywordChunk(chunk.id, chunk.document_id, chunk.indexed_text, chunk.metadata)


def validate_config_values(config: CollectionConfig) -> None:
    get_analyzer(config.analyzer)
    if config.backend not in BACKENDS:
        raise InvalidArgument("config.backend", f"must be one of {', '.join(BACKENDS)}")
    defaults = CollectionConfig("", "", 0, 0)
    dense_settings = ("dense_index", "dense_quantization", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "hnsw_target_recall")
    if config.backend == "qdrant" and any(getattr(config, f) != getattr(defaults, f) for f in dense_settings):
        raise InvalidArgument("config.dense_index", "configures the embedded backend's FAISS index; Qdrant indexes with "
                              "its own HNSW (set on the cluster; a search may still pass dense.ef_search)")
    if config.keyword_avg_terms and config.backend != "qdrant":
        raise InvalidArgument("config.keyword_avg_terms", "Qdrant backend only: the embedded backend's BM25 uses the exact "
                              "average length at query time")
    if not 0 <= config.keyword_avg_terms <= MAX_KEYWORD_AVG_TERMS:
        raise InvalidArgument("config.keyword_avg_terms", f"must be between 0 (the default) and {MAX_KEYWORD_AVG_TERMS}")
    if config.embedding_model == EXTERNAL_MODEL and not 1 <= config.dimension <= MAX_DIMENSION:
        raise InvalidArgument("config.dimension", f"must be between 1 and {MAX_DIMENSION} with embedding_model 'external'")
    if config.embedding_model != EXTERNAL_MODEL and config.dimension:
        raise InvalidArgument("config.dimension", "only with embedding_model 'external' (a model decides its own)")
    if config.dense_index not in DENSE_INDEX_KINDS:
        raise InvalidArgument("config.dense_index.kind", f"must be one of {', '.join(DENSE_INDEX_KINDS)}")
    if config.dense_quantization not in DENSE_QUANTIZATIONS:
        raise InvalidArgument("config.dense_index.quantization", f"must be one of {', '.join(DENSE_QUANTIZATIONS)}")
    if config.dense_quantization != "none" and config.dense_index == "flat":
        raise InvalidArgument("config.dense_index.quantization", "quantizes an HNSW graph: not with kind 'flat'")
    if not 4 <= config.hnsw_m <= 128:
        raise InvalidArgument("config.dense_index.m", "must be between 4 and 128")
    if not 8 <= config.hnsw_ef_construction <= 2048:
        raise InvalidArgument("config.dense_index.ef_construction", "must be between 8 and 2048")
    if not 1 <= config.hnsw_ef_search <= MAX_EF_SEARCH:
        raise InvalidArgument("config.dense_index.ef_search", f"must be between 1 and {MAX_EF_SEARCH}")
    if not 0 <= config.hnsw_target_recall < 1:  # NaN fails this too
        raise InvalidArgument("config.dense_index.target_recall", "must be in (0, 1), or 0 for none")
    if config.hnsw_target_recall and config.dense_index == "flat":
        raise InvalidArgument("config.dense_index.target_recall", "calibrates an HNSW graph: not with kind 'flat' (exact)")
    if config.chunk_size < 32 or config.chunk_size > 8192:
        raise InvalidArgument("config.chunk_size", "must be between 32 and 8192")
    if not 0 <= config.chunk_overlap < config.chunk_size:
        raise InvalidArgument("config.chunk_overlap", "must be >= 0 and < chunk_size")
