"""A LlamaIndex key-value store in one SQLite file: the collection's docstore (chunk text, metadata, the
document -> chunks map) on disk instead of in the Python heap.

LlamaIndex ships in-memory, Redis, Mongo, Postgres, Firestore, DynamoDB and DuckDB key-value stores; none is an
embedded, transactional row store (DuckDB is columnar: single-row writes are its slow path), so this one is
written here, on the stdlib's sqlite3, behind LlamaIndex's own `BaseKVStore` so `KVDocumentStore` and
`VectorStoreIndex` use it unchanged.

Beside the key-value rows, `document_text` holds the texts of documents whose chunks do not reproduce them
(searchsvc/domain/documents.py); `chunk_metadata` holds each chunk's user metadata alone (small JSON, only for chunks
that have any), which start-up reads to rebuild the filter postings without parsing whole nodes; and `dense_log` keeps what each write did to the dense index (chunk ids removed, chunk ids
and float32 vectors added) since the last FAISS snapshot, so a checkpoint can commit it instead of rewriting the
whole FAISS index; start-up replays it onto that snapshot.

Transactions follow the collection's checkpoints, not its writes. Every acked write is already durable in the
collection's WAL, so writes go into one open transaction, and `commit(snapshot, seq)` makes them durable together
with the name of the FAISS snapshot they match: that commit is the collection's atomic switch to a new
checkpoint. A crash before it leaves the previous commit (SQLite rolls the open transaction back at open), whose
snapshot and the WAL records after it reproduce everything. Uncommitted rows are visible to this connection, so
searches read chunks the moment they are acked.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from llama_index.core.storage.kvstore.types import DEFAULT_BATCH_SIZE, DEFAULT_COLLECTION, BaseKVStore

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunk_metadata (chunk_id TEXT PRIMARY KEY, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS document_text (document_id TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dense_log (
    seq INTEGER PRIMARY KEY,
    removed TEXT NOT NULL,
    added TEXT NOT NULL,
    vectors BLOB NOT NULL
);
"""


class DocstoreFailed(RuntimeError):
    """The open transaction was lost (SQLite rolls it back on some I/O errors, a full disk among them): what it
    held since the last commit exists only in the WAL now, so the collection must be reopened to replay it."""


class SqliteKVStore(BaseKVStore):
    """One connection, shared by the writer and searches under a lock; values are JSON text."""

    def __init__(self, path: Path | str, *, cache_mib: int = 64) -> None:
        self.path = str(path)
        # isolation_level=None: this class issues BEGIN/COMMIT itself (the module would commit before DDL).
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self.failure = ""
        conn = self._conn
        conn.execute("PRAGMA journal_mode=WAL")  # appends only; a torn write is a frame its checksum rejects
        conn.execute("PRAGMA synchronous=FULL")  # a commit is a checkpoint's switch: fsync it
        # The open transaction's dirty pages stay in this cache until the commit, so writes between checkpoints
        # (one checkpoint_wal_bytes of WAL, ~30k chunks) rarely touch the disk at all.
        conn.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        conn.executescript(_SCHEMA)
        self.committed: dict[str, str] = dict(conn.execute("SELECT key, value FROM meta").fetchall())

    # ------------------------------------------------------------------ transactions
    def _begin_locked(self) -> None:
        """Refuse work after a failure; otherwise join the open transaction or start one."""
        if self.failure:
            raise DocstoreFailed(self.failure)
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    def _write(self, sql: str, rows: list[tuple] | tuple) -> sqlite3.Cursor:
        with self._lock:
            self._begin_locked()
            try:
                return self._conn.executemany(sql, rows) if isinstance(rows, list) else self._conn.execute(sql, rows)
            except sqlite3.Error as exc:
                # The write belongs to a WAL record that is already acked, and the other indexes may hold the
                # rest of it: whether or not SQLite kept the transaction, only a reopen (replaying the WAL from
                # the last commit) makes the docstore whole again.
                self.failure = f"docstore {self.path}: a write failed ({exc})"
                log.error("%s; reopen the collection to replay its WAL", self.failure)
                raise DocstoreFailed(self.failure) from exc

    def commit(self, **meta: str | int) -> None:
        """Make every write since the last commit durable, together with `meta` (the snapshot it matches), which
        `committed` then holds. Raises OSError for a full or failing disk: the transaction then stays open for a
        retry, unless SQLite rolled it back, which sets `failure`."""
        values = {k: str(v) for k, v in meta.items()}
        with self._lock:
            self._begin_locked()
            try:
                self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if not self._conn.in_transaction:
                    self.failure = f"docstore {self.path}: uncommitted writes were rolled back after {exc}"
                    log.error("%s; reopen the collection to replay them from its WAL", self.failure)
                raise _as_os_error(exc) from exc
            self.committed.update(values)

    def close(self) -> None:
        """Closing rolls back an open transaction: the WAL still holds what it had."""
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ reads
    def _pages(self, sql: str, params: tuple, after: str | int, page: int) -> Iterator[tuple]:
        """Rows of `sql` (its last two parameters: the key to start after, the page size; its first column: that
        key, ascending), a page at a time: bounded memory, and the lock is never held while the caller works."""
        while True:
            with self._lock:
                rows = self._conn.execute(sql, (*params, after, page)).fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def _select_in(self, sql: str, params: tuple, keys: list[str]) -> list[tuple]:
        """Rows of `sql`, whose `{}` takes an IN list of `keys`, in statements of at most 500 keys."""
        rows: list[tuple] = []
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            with self._lock:
                rows += self._conn.execute(sql.format(",".join("?" * len(part))), (*params, *part)).fetchall()
        return rows

    # ------------------------------------------------------------------ BaseKVStore
    def put(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        self.put_all([(key, val)], collection)

    def put_all(self, kv_pairs: list[tuple[str, dict]], collection: str = DEFAULT_COLLECTION, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if kv_pairs:
            self._write(
                "INSERT OR REPLACE INTO kv (collection, key, value) VALUES (?, ?, ?)",
                [(collection, key, json.dumps(val)) for key, val in kv_pairs],
            )

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM kv WHERE collection = ? AND key = ?", (collection, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, keys: list[str], collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        """Values of the keys present, in a few statements instead of one per key."""
        rows = self._select_in("SELECT key, value FROM kv WHERE collection = ? AND key IN ({})", (collection,), keys)
        return {key: json.loads(value) for key, value in rows}

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        return dict(self.iterate(collection))

    def iterate(self, collection: str = DEFAULT_COLLECTION, *, page: int = 2000) -> Iterator[tuple[str, dict]]:
        """Every (key, value) of `collection` in key order, read a page at a time (bounded memory, and the lock
        is never held while the caller works)."""
        for key, raw in self.iterate_raw(collection, page=page):
            yield key, json.loads(raw)

    def iterate_raw(self, collection: str = DEFAULT_COLLECTION, *, page: int = 2000, column: str = "value") -> Iterator[tuple[str, str]]:
        """As `iterate`, with the stored JSON text, or an SQL expression over it as `column`."""
        sql = f"SELECT key, {column} FROM kv WHERE collection = ? AND key > ? ORDER BY key LIMIT ?"
        return self._pages(sql, (collection,), "", page)

    def keys_after(self, after: str, limit: int, collection: str = DEFAULT_COLLECTION) -> list[str]:
        """Up to `limit` keys of `collection` past `after`, in order."""
        with self._lock:
            rows = self._conn.execute("SELECT key FROM kv WHERE collection = ? AND key > ? ORDER BY key LIMIT ?",
                                      (collection, after, limit)).fetchall()
        return [key for key, in rows]

    def count(self, collection: str = DEFAULT_COLLECTION) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM kv WHERE collection = ?", (collection,)).fetchone()[0]

    # ------------------------------------------------------------------ chunk metadata
    def put_chunk_metadata(self, rows: list[tuple[str, dict]]) -> None:
        if rows:
            self._write("INSERT OR REPLACE INTO chunk_metadata (chunk_id, metadata) VALUES (?, ?)",
                        [(chunk_id, json.dumps(metadata)) for chunk_id, metadata in rows])

    def delete_chunk_metadata(self, chunk_ids: list[str]) -> None:
        if chunk_ids:
            self._write("DELETE FROM chunk_metadata WHERE chunk_id = ?", [(c,) for c in chunk_ids])

    def chunk_metadata(self, chunk_ids: list[str]) -> dict[str, dict]:
        rows = self._select_in("SELECT chunk_id, metadata FROM chunk_metadata WHERE chunk_id IN ({})", (), chunk_ids)
        return {chunk_id: json.loads(metadata) for chunk_id, metadata in rows}

    def chunk_metadata_groups(self, *, page: int = 20000) -> dict[str, list[str]]:
        """Every chunk's metadata as stored (JSON text) -> the ids of the chunks that carry exactly it. Chunks
        share metadata (a document's chunks, a source, a category), so callers parse each distinct value once:
        parsing 1M rows one by one was most of a 1M-chunk collection's start-up."""
        groups: dict[str, list[str]] = {}
        sql = "SELECT chunk_id, metadata FROM chunk_metadata WHERE chunk_id > ? ORDER BY chunk_id LIMIT ?"
        for chunk_id, metadata in self._pages(sql, (), "", page):
            groups.setdefault(metadata, []).append(chunk_id)
        return groups

    # ------------------------------------------------------------------ document texts
    def put_document_texts(self, texts: dict[str, str]) -> None:
        if texts:
            self._write("INSERT OR REPLACE INTO document_text (document_id, text) VALUES (?, ?)", list(texts.items()))

    def delete_document_texts(self, document_ids: list[str]) -> None:
        if document_ids:
            self._write("DELETE FROM document_text WHERE document_id = ?", [(d,) for d in document_ids])

    def document_texts(self, document_ids: list[str]) -> dict[str, str]:
        return dict(self._select_in("SELECT document_id, text FROM document_text WHERE document_id IN ({})", (), document_ids))

    def all_document_texts(self, *, page: int = 2000) -> Iterator[tuple[str, str]]:
        sql = "SELECT document_id, text FROM document_text WHERE document_id > ? ORDER BY document_id LIMIT ?"
        return self._pages(sql, (), "", page)

    # ------------------------------------------------------------------ dense log
    def log_dense(self, seq: int, removed: list[str], added: list[str], vectors: bytes) -> None:
        self._write("INSERT OR REPLACE INTO dense_log (seq, removed, added, vectors) VALUES (?, ?, ?, ?)",
                    (seq, json.dumps(removed), json.dumps(added), vectors))

    def dense_log(self, after: int, *, page: int = 200) -> Iterator[tuple[int, list[str], list[str], bytes]]:
        """(seq, removed chunk ids, added chunk ids, their vectors as float32 bytes) of each write after `after`."""
        sql = "SELECT seq, removed, added, vectors FROM dense_log WHERE seq > ? ORDER BY seq LIMIT ?"
        for seq, removed, added, vectors in self._pages(sql, (), after, page):
            yield seq, json.loads(removed), json.loads(added), vectors

    def trim_dense_log(self, upto: int) -> None:
        """Drop the entries a FAISS snapshot at `upto` holds (part of the next commit)."""
        self._write("DELETE FROM dense_log WHERE seq <= ?", (upto,))

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return self._write("DELETE FROM kv WHERE collection = ? AND key = ?", (collection, key)).rowcount > 0

    async def aput(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        self.put(key, val, collection)

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        return self.get(key, collection)

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        return self.get_all(collection)

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return self.delete(key, collection)


def _as_os_error(exc: sqlite3.Error) -> OSError:
    """SQLite's errors as the collection's storage faults: a full disk is ENOSPC, anything else EIO."""
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, f"{'No space left on device' if full else 'I/O error'} (sqlite: {exc})")


def read_committed(path: Path) -> dict[str, str]:
    """The committed meta of the docstore at `path`, read without writing (a server may hold it open); {} if
    there is none."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError:  # created, never committed: no tables yet
        return {}
    finally:
        conn.close()
