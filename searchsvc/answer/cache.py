"""Answer cache: an in-memory LRU in front of a SQLite file under the index dir, with two kinds of entry.

- Exact: keyed by the normalized question and every setting that shapes the answer; looked up before retrieval.
- Similar (`answer.semantic_cache`): keyed by what the model would read -- the collection's write sequence and the
  ordered ids of the packed context chunks, plus the same settings -- and, within that key, reused only for a
  question whose embedding is within `answer.semantic_cache_min_cosine` of the cached question's. Keying on
  question similarity alone (GPTCache's way) hands one question's answer to another that merely sounds alike;
  here two questions must also retrieve the very same context, in the same order, from the same collection state.

Keys include the collection's write sequence, so any write (a reindex, a delete) makes its old entries
unreachable; they are also deleted on the next put for that collection and when the collection is deleted. Rows
hold AnswerResult JSON and float32 vectors (never pickle: the file is data, not code).

The file is an optimisation, never a reason to fail an answer: a SQLite error (a full disk: "database or disk is
full", an I/O error) is logged once a minute and the entry lives in memory only; a file that cannot be opened at
all leaves a memory-only cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from searchsvc.answer.types import AnswerResult
from searchsvc.ops.log_throttle import LogThrottle

log = logging.getLogger(__name__)


def normalize_query(query: str) -> str:
    """NFKC, case-folded, whitespace collapsed: "  What is  BM25?" and "what is bm25?" share an entry."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def cache_key(collection: str, version: int, query: str, params: dict[str, Any]) -> str:
    payload = json.dumps(
        {"c": collection, "v": version, "q": normalize_query(query), "p": params}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def context_key(collection: str, version: int, chunk_ids: Sequence[str], params: dict[str, Any]) -> str:
    """The key of a similar-question entry: the collection state, the packed context in order, the settings."""
    payload = json.dumps({"c": collection, "v": version, "ctx": list(chunk_ids), "p": params}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def unit(vector: Any) -> np.ndarray:
    v = np.asarray(vector, np.float32).ravel()
    return v / max(float(np.linalg.norm(v)), 1e-12)


SIMILAR_PER_CONTEXT = 8  # questions kept per context key (the most recent)


class AnswerCache:
    def __init__(self, path: Path, memory_entries: int = 1024) -> None:
        self.path = path
        self.memory_entries = memory_entries
        self._memory: OrderedDict[str, AnswerResult] = OrderedDict()
        # context key -> [(unit question vector, result)], most recent last; entries missing here are read from SQLite
        self._similar: OrderedDict[str, list[tuple[np.ndarray, AnswerResult]]] = OrderedDict()
        self._lock = threading.Lock()
        self._error_log = LogThrottle()
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a lost cache row costs one regeneration, not data
            db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, collection TEXT NOT NULL,"
                " version INTEGER NOT NULL, result TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS answers_collection ON answers (collection, version)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS similar (context TEXT NOT NULL, collection TEXT NOT NULL,"
                " version INTEGER NOT NULL, vector BLOB NOT NULL, result TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS similar_context ON similar (context)")
            db.execute("CREATE INDEX IF NOT EXISTS similar_collection ON similar (collection, version)")
            self._db = db
        except (sqlite3.Error, OSError) as exc:
            log.warning("answer cache %s unusable (%s): caching in memory only", path, exc)

    def _sql(self, statement: str, args: tuple = ()) -> list[tuple]:
        """Run one statement; on a SQLite error log (at most once a minute) and return no rows."""
        if self._db is None:
            return []
        try:
            return self._db.execute(statement, args).fetchall()
        except sqlite3.Error as exc:
            if self._error_log.allow():
                log.warning("answer cache %s: %s (answers are unaffected; repeats within %.0f s not logged)", self.path, exc, self._error_log.interval_s)
            return []

    def get(self, key: str) -> AnswerResult | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
            rows = self._sql("SELECT result FROM answers WHERE key = ?", (key,))
            if not rows:
                return None
            result = AnswerResult.from_json(json.loads(rows[0][0]))
            self._remember(key, result)
            return result

    def put(self, key: str, collection: str, version: int, result: AnswerResult) -> None:
        with self._lock:
            self._remember(key, result)
            self._sql("DELETE FROM answers WHERE collection = ? AND version < ?", (collection, version))
            self._sql(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                (key, collection, version, json.dumps(result.to_json(), ensure_ascii=False)),
            )

    def get_similar(self, context: str, vector: np.ndarray, min_cosine: float) -> tuple[AnswerResult, float] | None:
        """The answer cached under `context` for the question nearest to `vector` (unit length), with its cosine,
        if that is at least `min_cosine`."""
        with self._lock:
            entries = self._similar.get(context)
            if entries is None:
                rows = self._sql("SELECT vector, result FROM similar WHERE context = ? ORDER BY rowid", (context,))
                entries = [(np.frombuffer(v, np.float32), AnswerResult.from_json(json.loads(r))) for v, r in rows]
                self._remember_similar(context, entries)
            else:
                self._similar.move_to_end(context)
            best = max(((float(np.dot(v, vector)), r) for v, r in entries if v.shape == vector.shape),
                       key=lambda e: e[0], default=None)
            return (best[1], best[0]) if best is not None and best[0] >= min_cosine else None

    def put_similar(self, context: str, collection: str, version: int, vector: np.ndarray, result: AnswerResult) -> None:
        vector = np.ascontiguousarray(vector, np.float32)
        with self._lock:
            entries = [*self._similar.get(context, []), (vector, result)][-SIMILAR_PER_CONTEXT:]
            self._remember_similar(context, entries)
            self._sql("DELETE FROM similar WHERE collection = ? AND version < ?", (collection, version))
            self._sql("INSERT INTO similar VALUES (?, ?, ?, ?, ?)",
                      (context, collection, version, vector.tobytes(), json.dumps(result.to_json(), ensure_ascii=False)))
            self._sql("DELETE FROM similar WHERE context = ? AND rowid NOT IN (SELECT rowid FROM similar WHERE"
                      " context = ? ORDER BY rowid DESC LIMIT ?)", (context, context, SIMILAR_PER_CONTEXT))

    def drop_collection(self, collection: str) -> None:
        with self._lock:
            # Also the answers of searches over several collections ("a+b", multi.CollectionGroup) that named it.
            for table in ("answers", "similar"):
                self._sql(f"DELETE FROM {table} WHERE instr('+' || collection || '+', '+' || ? || '+') > 0", (collection,))
            # Memory entries are keyed by hash only; clearing all is simple and rare (collection deletes).
            self._memory.clear()
            self._similar.clear()

    def _remember(self, key: str, result: AnswerResult) -> None:
        self._lru_put(self._memory, key, result)

    def _remember_similar(self, context: str, entries: list[tuple[np.ndarray, AnswerResult]]) -> None:
        self._lru_put(self._similar, context, entries)

    def _lru_put(self, store: OrderedDict, key: str, value: Any) -> None:
        if self.memory_entries <= 0:
            return
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.memory_entries:
            store.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
