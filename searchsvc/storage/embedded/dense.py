"""Dense leg: a LlamaIndex VectorStoreIndex over FAISS (inner product on normalized embeddings = cosine).

Text and metadata live in LlamaIndex's docstore, kept on disk in SQLite (storage/embedded/sqlite_kv.py); FAISS holds only
vectors, keyed by an IndexIDMap so chunks can be deleted and their vectors read back (for the cosine of hits
that only the keyword leg found).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np
from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.constants import DATA_KEY, TYPE_KEY
from llama_index.core.data_structs.data_structs import IndexDict, IndexStruct
from llama_index.core.schema import BaseNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.storage.docstore.keyval_docstore import KVDocumentStore
from llama_index.core.storage.docstore.utils import doc_to_json, json_to_doc
from llama_index.core.storage.index_store import SimpleIndexStore
from llama_index.core.storage.index_store.utils import json_to_index_struct
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryResult
from llama_index.vector_stores.faiss import FaissMapVectorStore, FaissVectorStore

from searchsvc.domain import filters
from searchsvc.domain.types import AUTO_HNSW_MIN_CHUNKS, RESERVED_METADATA, Chunk, CollectionConfig, ScoredId
from searchsvc.retrieve.embedding import embed_passages, embed_query
from searchsvc.storage.embedded import graph_builder, graph_files
from searchsvc.storage.embedded import pending as pending_rows
from searchsvc.storage.embedded.pending import PendingRows
from searchsvc.storage.embedded.recall import MIN_QUERIES, SAMPLE_QUERIES, Calibration, calibrate
from searchsvc.storage.embedded.sqlite_kv import SqliteKVStore

log = logging.getLogger(__name__)
NODE_IDS_FILE = "node_ids.json"  # FilterableFaissStore.persist
CALIBRATE_FROM = 1000  # vectors: a smaller graph keeps the configured efSearch (its beam covers most of it anyway)
# Calibrated again once the graph has grown by this factor: recall at a fixed efSearch falls as a graph grows.
RECALIBRATE_GROWTH = 1.25
# ...and when a backlog drains, on the graph it leaves, once that graph has grown this much since: the last vectors
# of a bulk load are the queries (a calibration up to RECALIBRATE_GROWTH old lost 0.02-0.03 recall@10 on a cheap graph).
SETTLE_GROWTH = 1.05
COMPACT_AT = 0.2  # tombstone share of an HNSW graph that triggers a rebuild (searches walk dead nodes too)
# FAISS inserts run here while the writer goes on with the same batch's other writes (add_vectors' `meanwhile`).
# Writers are serialized per collection; two workers let two collections' writers insert at once. FAISS keeps its
# OpenMP default (every core): one thread per core fewer, leaving a core to the writer, was slower (1,333 vs 1,572
# docs/s into a 100-150k HNSW graph on 2 cores).
_INSERTS = ThreadPoolExecutor(2, thread_name_prefix="faiss-insert")


@dataclass(frozen=True)
class DenseIndexSpec:
    """The collection's dense index settings (CollectionConfig.dense_index and hnsw_*)."""

    kind: str = CollectionConfig.dense_index
    m: int = CollectionConfig.hnsw_m
    ef_construction: int = CollectionConfig.hnsw_ef_construction
    ef_search: int = CollectionConfig.hnsw_ef_search
    quantization: str = CollectionConfig.dense_quantization
    target_recall: float = CollectionConfig.hnsw_target_recall

    @classmethod
    def of(cls, config: CollectionConfig) -> "DenseIndexSpec":
        return cls(config.dense_index, config.hnsw_m, config.hnsw_ef_construction, config.hnsw_ef_search, config.dense_quantization,
                   config.hnsw_target_recall)

    def new_hnsw(self, dimension: int, training: np.ndarray | None = None) -> faiss.IndexIDMap:
        """An empty graph; with SQ8 quantization and `training` vectors, an 8-bit one whose per-dimension ranges
        are trained on them (without them, float32: the quantizer has nothing to learn its ranges from yet)."""
        if self.quantization == "sq8" and training is not None:
            graph = faiss.IndexHNSWSQ(dimension, faiss.ScalarQuantizer.QT_8bit, self.m, faiss.METRIC_INNER_PRODUCT)
            graph.train(training)
        else:
            graph = faiss.IndexHNSWFlat(dimension, self.m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        graph.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap(graph)


def _without_reverse_map(index: Any) -> Any:
    """An IndexIDMap over the same inner index and ids. Snapshots written before IndexIDMap replaced IndexIDMap2
    load as IndexIDMap2, whose id -> row hash map (~40 B per vector) nothing here reads: rows are found by a
    binary search of the sorted id list (FilterableFaissStore._positions)."""
    if not isinstance(index, faiss.IndexIDMap2):
        return index
    plain = graph_files.id_map_over(index.index, faiss.vector_to_array(index.id_map))
    index.own_fields = False  # the inner index now belongs to `plain`
    return plain


class FilterableFaissStore(FaissMapVectorStore):
    """FaissMapVectorStore with what LlamaIndex's version lacks (0.7.0):

    - `add` assigns ids from a monotonic counter in one bulk `add_with_ids`; upstream uses `ntotal` as the next
      id, which collides with a live id after any delete, and adds one vector per call. Ids only grow, so the
      IDMap's id list stays sorted (a flat remove keeps order, HNSW never removes): `_positions` relies on it.
    - `query` honours `VectorStoreQuery.node_ids` as a true pre-filter (upstream raises on filters), so metadata
      filters cost no candidate slots, and takes `ef_search` and `exact`.
    - An HNSW index inside the IDMap. FAISS's HNSW cannot remove a vector, so a delete leaves a tombstone: the
      id leaves the node maps at once, searches skip it through an IDSelector, and `compacted()` rebuilds the
      graph without tombstones once they are COMPACT_AT of it.
    - `vectors(node_ids)` reads stored vectors back.
    - An HNSW store acks a write without inserting it into the graph: its vectors wait in `pending`, the
      appendable flat tail a background worker moves into the graph (graph_builder.py), and a search scans them
      exactly beside its graph search. Rows are the graph's rows then the pending ones, all in id order.
    - FAISS id -> node id is a list parallel to FAISS's rows (`_node_at`, None for a tombstone) instead of
      upstream's dict (~50 B less per chunk; a hit's row is a binary search of the sorted ids away), and the
      IDMap is an IndexIDMap, without IndexIDMap2's hash map.
    """

    def __init__(self, faiss_index: Any, ef_search: int = DenseIndexSpec.ef_search) -> None:
        super().__init__(faiss_index=_without_reverse_map(faiss_index))
        self._faiss_id_to_node_id_map = None  # replaced by _node_at: an upstream path still using it must fail loudly
        self._node_at: list[str | None] = []  # the node id of each FAISS row, in row order; None: a tombstone
        self._next_id = 0
        self._ef_search = ef_search
        self._tombstones: set[int] = set()
        self._skip_tombstones: tuple | None = None  # (IDSelectorNot, the batch it references), built lazily
        self._rows_file: graph_files.RowsFile | None = None  # what the last graph snapshot read or written holds
        self._previous_snapshot: Path | None = None  # see linking_rows_from
        self._calibration: Calibration | None = None
        self._pending = PendingRows(self._faiss_index.d)  # HNSW only: acked rows the graph does not hold yet

    @classmethod
    def new(cls, dimension: int, spec: DenseIndexSpec = DenseIndexSpec()) -> "FilterableFaissStore":
        index = spec.new_hnsw(dimension) if spec.kind == "hnsw" else faiss.IndexIDMap(faiss.IndexFlatIP(dimension))
        return cls(index, spec.ef_search)

    @contextmanager
    def linking_rows_from(self, previous: Path | None) -> Iterator[None]:
        """Within it, `persist` of an HNSW graph links its rows file from the snapshot directory `previous` (the
        live one) and appends only the rows added since: upstream's persist(persist_path) has no room for it."""
        self._previous_snapshot = previous
        try:
            yield
        finally:
            self._previous_snapshot = None

    def persist(self, persist_path: str = "", fs: Any = None) -> None:
        """An HNSW graph as graph_files writes it (the rows added since the previous snapshot appended to its
        rows file), any other index as upstream writes it at `persist_path`; and beside it NODE_IDS_FILE: a JSON
        list of the node id of every stored FAISS id, in FAISS's own id order (null for a tombstone). Upstream's
        id_map.json holds both maps as JSON objects; loading it at 1M chunks parsed 2M keys and kept every node
        id string twice."""
        if graph_files.appendable(self._faiss_index):
            directory = Path(persist_path).parent
            self._rows_file = graph_files.write(self._faiss_index, directory, self._previous_snapshot, self._rows_file, self.pending)
        else:
            FaissVectorStore.persist(self, persist_path, fs)
        names = self._node_at
        with open(os.path.join(os.path.dirname(persist_path), NODE_IDS_FILE), "w", encoding="utf-8") as f:
            json.dump(names, f, ensure_ascii=False)
        if self.calibration is not None:
            self.calibration.write(Path(persist_path).parent)

    @classmethod
    def from_persist_path(cls, persist_path: str, fs: Any = None) -> "FilterableFaissStore":
        directory = Path(persist_path).parent
        node_ids_path, rows_file, names = directory / NODE_IDS_FILE, None, None
        if graph_files.is_graph_snapshot(directory):
            index, rows_file, pending = graph_files.read(directory)
            store = cls(index)
            store.pending = pending
        elif not node_ids_path.exists():  # a snapshot written before NODE_IDS_FILE: upstream's id_map.json
            upstream = super().from_persist_path(persist_path, fs)
            store = cls(upstream._faiss_index)
            node_of = upstream._faiss_id_to_node_id_map
            names = [node_of.get(i) for i in store._ids().tolist()]
        else:
            store = cls(faiss.read_index(persist_path))
        if names is None:
            with open(node_ids_path, encoding="utf-8") as f:
                names = json.load(f)
        stored_ids = store._row_ids().tolist()
        store._rows_file = rows_file
        store._node_at = names
        store._node_id_to_faiss_id_map = {n: i for n, i in zip(names, stored_ids) if n is not None}
        # Rows with no node are tombstones (only an HNSW index keeps deleted vectors).
        store._tombstones = {i for n, i in zip(names, stored_ids) if n is None}
        store._next_id = max(stored_ids) + 1 if stored_ids else 0
        store.calibration = Calibration.read(directory)
        return store

    @property
    def is_hnsw(self) -> bool:
        return isinstance(faiss.downcast_index(self._faiss_index.index), faiss.IndexHNSW)

    @property
    def is_quantized(self) -> bool:
        inner = faiss.downcast_index(self._faiss_index.index)
        return isinstance(inner, faiss.IndexHNSW) and isinstance(faiss.downcast_index(inner.storage), faiss.IndexScalarQuantizer)

    @property
    def dimension(self) -> int:
        return self._faiss_index.d

    @property
    def calibration(self) -> Calibration | None:
        """efSearch calibrated to the collection's recall target (DenseIndex.maybe_calibrate); persisted beside
        the graph."""
        return self._calibration

    @calibration.setter
    def calibration(self, value: Calibration | None) -> None:
        self._calibration = value

    @property
    def ef_search(self) -> int:
        """The beam width a search uses unless it sets its own: the calibrated one, else the configured one."""
        return self.calibration.ef_search if self.calibration is not None else self._ef_search

    @property
    def pending(self) -> PendingRows:
        """Acked rows the graph does not hold yet (pending.py), searched exactly."""
        return self._pending

    @pending.setter
    def pending(self, value: PendingRows) -> None:
        self._pending = value

    @property
    def rows(self) -> int:
        """Stored rows: the graph's (tombstones included) and the pending ones."""
        return self._faiss_index.ntotal + len(self.pending)

    @property
    def backlog(self) -> int:
        """Vectors acked but not in the graph yet (searched exactly meanwhile)."""
        return len(self.pending)

    def insert_pending(self, n: int) -> int:
        """Move up to `n` of the oldest pending rows into the graph (the caller holds the index's lock: FAISS
        cannot insert while it searches). Returns how many moved."""
        ids, vectors = self.pending.head(n)
        if len(ids):
            self._faiss_index.add_with_ids(vectors, ids)  # copies them
            self.pending.drop(len(ids))
        return len(ids)

    @property
    def live_count(self) -> int:  # not __len__: LlamaIndex tests stores for truth ("store or a default one")
        return len(self._node_id_to_faiss_id_map)

    # --- writes
    def add(self, nodes: list[BaseNode], **add_kwargs: Any) -> list[str]:
        if nodes:
            self.add_vectors([n.id_ for n in nodes], np.asarray([n.get_embedding() for n in nodes], dtype=np.float32))
        return [n.id_ for n in nodes]

    def add_vectors(self, node_ids: list[str], vectors: np.ndarray, meanwhile: Callable[[], None] | None = None) -> None:
        """Insert the vectors of `node_ids`. `meanwhile`: the caller's other work for the same batch, run on this
        thread while FAISS inserts on another: FAISS releases the GIL, and an HNSW insert costs ~0.3 ms per vector
        at 1M, ~40% of a bulk load's writer thread when it ran alone (profiled at 150k chunks). The new ids are
        booked first, so `meanwhile` can read them (faiss_ids), and unbooked if FAISS refuses the vectors; an
        exception from `meanwhile` is raised once FAISS holds them (its rows and the id list stay parallel)."""
        if stale := [n for n in node_ids if n in self._node_id_to_faiss_id_map]:
            self.delete_nodes(stale)  # a re-added id replaces its vector instead of leaving two behind one id
        ids = np.arange(self._next_id, self._next_id + len(node_ids), dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(node_ids), self.dimension):
            raise ValueError(f"{len(node_ids)} node ids with vectors of shape {vectors.shape} for dimension {self.dimension}")
        self._next_id += len(node_ids)
        self._node_id_to_faiss_id_map.update(zip(node_ids, ids.tolist()))
        self._node_at.extend(node_ids)
        failed: BaseException | None = None
        try:
            if self.is_hnsw:  # acked now, in the graph later (graph_builder.py)
                self.pending.append(ids, self._as_stored(vectors))
                if meanwhile is not None:
                    try:
                        meanwhile()
                    except BaseException as exc:  # noqa: BLE001 - raised below: the rows are stored
                        failed = exc
            elif meanwhile is None:
                self._faiss_index.add_with_ids(vectors, ids)
            else:
                inserting = _INSERTS.submit(self._faiss_index.add_with_ids, vectors, ids)
                try:
                    meanwhile()
                except BaseException as exc:  # noqa: BLE001 - raised below, once FAISS is done with this batch
                    failed = exc
                inserting.result()
        except BaseException:  # FAISS added no row: neither do the maps
            for node_id in node_ids:
                self._node_id_to_faiss_id_map.pop(node_id, None)
            del self._node_at[len(self._node_at) - len(node_ids):]
            self._next_id -= len(node_ids)
            raise
        if failed is not None:
            raise failed

    def delete_nodes(self, node_ids: list[str] | None = None, filters: Any = None, **delete_kwargs: Any) -> None:
        if filters is not None or node_ids is None:
            raise ValueError("delete by node ids")
        faiss_id_of = self._node_id_to_faiss_id_map
        gone = np.asarray([f for n in node_ids if (f := faiss_id_of.pop(n, None)) is not None], dtype=np.int64)
        if not len(gone):
            return
        node_at = self._node_at
        for row in self._positions(gone).tolist():
            node_at[row] = None
        if self.is_hnsw:  # the graph keeps the vectors: tombstones until compaction
            self._tombstones.update(gone.tolist())
            self._skip_tombstones = None
        else:  # a flat index drops the rows, keeping the order of the rest
            self._faiss_index.remove_ids(faiss.IDSelectorBatch(gone))
            self._node_at = [n for n in node_at if n is not None]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self.delete_nodes([ref_doc_id])

    def needs_compaction(self) -> bool:
        return bool(self._tombstones) and len(self._tombstones) >= COMPACT_AT * self.rows

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(faiss ids, vectors) of every live vector, in id order: copies, safe to use after the lock is gone.
        From an SQ8 graph, the decoded vectors: quantizing them again gives the same codes."""
        ids = self._row_ids()
        positions = self._live_positions(ids)
        return ids[positions], self._vectors_at(positions)

    def _tombstone_ids(self) -> np.ndarray:
        """The tombstones' FAISS ids, as a new array."""
        return np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))

    def _tombstone_mask(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are tombstones."""
        return np.isin(ids, self._tombstone_ids())

    def _live_positions(self, ids: np.ndarray) -> np.ndarray:
        """The positions of the live vectors among `ids` (the graph's, or every row's), in id order."""
        return np.flatnonzero(~self._tombstone_mask(ids))

    def replace_index(self, index: Any, built_from: int, calibration: Calibration | None = None,
                      pending: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Swap in `index`, built from the live vectors when the store's id counter was `built_from` (the caller
        serializes writers, so nothing was added or deleted since), with its efSearch calibration if any;
        `pending`: (ids, vectors) of the live vectors it left for the graph builder (all the others it holds)."""
        assert built_from == self._next_id, "the store changed while its replacement was built"
        self._faiss_index = index
        self._rows_file = None  # a new graph: its snapshot starts a new rows file
        self._node_at = [n for n in self._node_at if n is not None]  # the live rows, as live_vectors gave them
        self._tombstones = set()
        self._skip_tombstones = None
        self.calibration = calibration
        self.pending = PendingRows(index.d)
        if pending is not None:
            self.pending.append(pending[0], self._as_stored(pending[1]))

    def _as_stored(self, vectors: np.ndarray) -> np.ndarray:
        """`vectors` as the graph's storage will hold them: an SQ8 graph's decoded codes, so that a pending row
        reads, scores and snapshots the same before and after it moves into the graph."""
        storage = self._storage()
        if isinstance(storage, faiss.IndexScalarQuantizer) and len(vectors):
            return storage.sa_decode(storage.sa_encode(vectors))
        return vectors

    def calibrated(self, target: float, queries: np.ndarray, lock: Any) -> Calibration:
        """Calibrate this store's graph to `target` with `queries`, vectors it does not hold. The caller keeps the
        graph's writers out (the graph is only read, as by searches); `lock` (the index's) is held while the live
        rows and the tombstones are read, which writers change."""
        with lock:
            live = self._live_positions(self._ids())
            ids = self._ids()[live]
            batch = faiss.IDSelectorBatch(self._tombstone_ids())
        selector = faiss.IDSelectorNot(batch)  # only points to the batch, which this frame keeps alive
        return calibrate(self._faiss_index, queries, live, ids, self._graph_vectors_at, target, selector)

    # --- reads
    def _ids(self) -> np.ndarray:
        """A view of the graph's faiss ids (tombstones included), in storage order = ascending; valid until the
        next write."""
        n = self._faiss_index.ntotal
        return faiss.rev_swig_ptr(self._faiss_index.id_map.data(), n) if n else np.empty(0, dtype=np.int64)

    def _row_ids(self) -> np.ndarray:
        """Every row's faiss id: the graph's, then the pending ones (a view when nothing is pending)."""
        return np.concatenate([self._ids(), self.pending.ids()]) if len(self.pending) else self._ids()

    def _storage(self) -> Any:
        inner = faiss.downcast_index(self._faiss_index.index)
        return faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner

    def _float_vectors(self) -> np.ndarray | None:
        """A view of every stored float32 vector, or None for an SQ8 graph (codes, decoded on demand)."""
        storage, n, d = self._storage(), self._faiss_index.ntotal, self._faiss_index.d
        if isinstance(storage, faiss.IndexScalarQuantizer):
            return None
        return faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d) if n else np.empty((0, d), dtype=np.float32)

    def _vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at these row positions (decoded from SQ8 codes where quantized), as a new array."""
        graph_rows = self._faiss_index.ntotal
        if len(self.pending) and len(positions) and np.max(positions) >= graph_rows:
            positions = np.asarray(positions, dtype=np.int64)
            out = np.empty((len(positions), self.dimension), dtype=np.float32)
            waiting = positions >= graph_rows
            out[waiting] = self.pending.vectors_at(positions[waiting] - graph_rows)
            out[~waiting] = self._graph_vectors_at(positions[~waiting])
            return out
        return self._graph_vectors_at(positions)

    def _graph_vectors_at(self, positions: np.ndarray) -> np.ndarray:
        floats = self._float_vectors()
        if floats is not None:
            return floats[positions]
        if len(positions) == 0:
            return np.empty((0, self._faiss_index.d), dtype=np.float32)
        return self._storage().reconstruct_batch(np.ascontiguousarray(positions, dtype=np.int64))

    def _positions(self, faiss_ids: np.ndarray) -> np.ndarray:
        """The row of each stored id: a binary search of the graph's ids, or of the pending ones (all above)."""
        if not len(self.pending):
            return np.searchsorted(self._ids(), faiss_ids)
        faiss_ids = np.asarray(faiss_ids, dtype=np.int64)
        waiting = faiss_ids >= self.pending.ids()[0]
        rows = np.empty(len(faiss_ids), dtype=np.int64)
        rows[~waiting] = np.searchsorted(self._ids(), faiss_ids[~waiting])
        rows[waiting] = self._faiss_index.ntotal + self.pending.rows_of(faiss_ids[waiting])
        return rows

    def query(self, query: VectorStoreQuery, ef_search: int | None = None, exact: bool = False,
              allowed_ids: np.ndarray | None = None, excluded_ids: np.ndarray | None = None, lock: Any = None,
              **kwargs: Any) -> VectorStoreQueryResult:
        """`allowed_ids` / `excluded_ids`: the FAISS ids a filter allows, or those it excludes (live ones only);
        `query.node_ids` too names allowed chunks (LlamaIndex's way, by chunk id). `lock`: what writers and the
        graph builder hold, held here except while the pending rows are scanned (a scan of 800k takes ~60 ms: other
        searches, writers and the builder go on meanwhile)."""
        if query.filters is not None:
            raise ValueError("pass allowed chunk ids as VectorStoreQuery.node_ids")
        lock = lock if lock is not None else contextlib.nullcontext()
        with lock:
            scores, ids, waiting = self._query_locked(query, ef_search, exact, allowed_ids, excluded_ids)
        if waiting is not None:  # the pending rows as they stood, scanned outside the lock; merged by score
            vector, k, allowed, excluded, pending, tombstones = waiting
            waiting_scores, waiting_ids = _pending_top(pending, tombstones, vector, k, allowed, excluded)
            scores, ids = np.concatenate([scores, waiting_scores]), np.concatenate([ids, waiting_ids])
            best = np.argsort(-scores, kind="stable")[:k]
            scores, ids = scores[best], ids[best]
        with lock:
            found = ids >= 0
            node_at, faiss_id_of = self._node_at, self._node_id_to_faiss_id_map  # one lookup each: pydantic
            rows = self._positions(ids[found]).tolist()
            # A hit deleted while the pending rows were scanned (and its row compacted away, maybe) is left out.
            hits = [(s, n) for s, r, i in zip(scores[found].tolist(), rows, ids[found].tolist())
                    if r < len(node_at) and (n := node_at[r]) is not None and faiss_id_of.get(n) == i]
        return VectorStoreQueryResult(similarities=[s for s, _ in hits], ids=[n for _, n in hits])

    def _query_locked(self, query: VectorStoreQuery, ef_search: int | None, exact: bool, allowed_ids: np.ndarray | None,
                      excluded_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """(scores, ids) of the graph's (or the exact path's) hits, and what a scan of the pending rows needs,
        taken at the same moment, or None."""
        vector = np.asarray(query.query_embedding, dtype=np.float32)
        k = min(query.similarity_top_k, self.live_count)
        allowed = allowed_ids
        if query.node_ids is not None:
            faiss_id_of = self._node_id_to_faiss_id_map
            allowed = np.asarray([faiss_id_of[n] for n in query.node_ids if n in faiss_id_of], dtype=np.int64)
        excluded = excluded_ids if excluded_ids is not None and len(excluded_ids) else None
        if allowed is not None:
            k = min(k, len(allowed))
        elif excluded is not None:
            k = min(k, self.live_count - len(excluded))
        empty = np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        if k <= 0:
            return *empty, None
        hnsw = self.is_hnsw
        waiting = None
        if hnsw and (exact or (allowed is not None and len(allowed) <= AUTO_HNSW_MIN_CHUNKS)):
            # A graph walk under a selective filter visits ~1/selectivity nodes per hit and loses recall; an
            # exact scan of the few allowed vectors is both cheaper and exact (Qdrant plans filtered searches
            # the same way).
            scores, ids = self._exact(vector, k, allowed, excluded)
        else:
            # faiss's Python wrappers keep what each selector points to (its bitmap, Not's and And's inputs).
            sel = None
            if allowed is not None:
                sel = self._bitmap_selector(allowed)
            else:
                if hnsw and self._tombstones:
                    sel = self._tombstone_selector()
                if excluded is not None:
                    outside = faiss.IDSelectorNot(self._bitmap_selector(excluded))
                    sel = outside if sel is None else faiss.IDSelectorAnd(sel, outside)
            if hnsw:
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef_search or self.ef_search, k))
            else:
                params = faiss.SearchParameters(sel=sel) if sel is not None else None
            if self._faiss_index.ntotal:
                found_scores, found_ids = self._faiss_index.search(vector[np.newaxis, :], k, params=params)
                scores, ids = found_scores[0], found_ids[0]
            else:
                scores, ids = empty
            if len(self.pending):
                tombstones = self._tombstone_ids() if self._tombstones else None
                waiting = (vector, k, allowed, excluded, self.pending.snapshot(), tombstones)
        return scores, ids, waiting

    def _bitmap_selector(self, ids: np.ndarray) -> Any:
        """FAISS's bitmap id selector: built in ~0.3 ms for 50k of 100k ids, against 6 ms for IDSelectorBatch's
        hash set."""
        mask = np.zeros(max(self._next_id, 1), dtype=bool)
        mask[ids] = True
        return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))

    def _tombstone_selector(self) -> Any:
        if self._skip_tombstones is None:
            batch = faiss.IDSelectorBatch(self._tombstone_ids())
            self._skip_tombstones = (faiss.IDSelectorNot(batch), batch)  # the Not only points to the batch: keep both
        return self._skip_tombstones[0]

    def _exact(self, vector: np.ndarray, k: int, allowed: np.ndarray | None, excluded: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            graph_ids = self._ids()
            if (floats := self._float_vectors()) is not None:
                scores = floats @ vector
            else:  # decoded a block at a time: an SQ8 graph holds no float copy, and 1M of them would be 1.5 GB
                block = 65536
                scores = np.concatenate([
                    self._graph_vectors_at(np.arange(i, min(i + block, len(graph_ids)))) @ vector
                    for i in range(0, len(graph_ids), block)
                ] or [np.empty(0, dtype=np.float32)])
            if len(self.pending):
                scores = np.concatenate([scores, self.pending.scores(vector)])
            ids = self._row_ids()
            if self._tombstones:
                scores[self._tombstone_mask(ids)] = -np.inf
            if excluded is not None:
                scores[np.isin(ids, excluded)] = -np.inf
        else:
            allowed = np.sort(allowed)
            ids, scores = allowed, self._vectors_at(self._positions(allowed)) @ vector
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], ids[top]

    def node_ids_of(self, faiss_ids: np.ndarray) -> list[str | None]:
        """The node id at each of these live FAISS ids (None for a tombstone)."""
        node_at = self._node_at
        return [node_at[p] for p in self._positions(faiss_ids).tolist()]

    def present(self, node_ids: Sequence[str]) -> list[str]:
        """The ids among `node_ids` that have a live vector, in order."""
        faiss_id_of = self._node_id_to_faiss_id_map
        return [n for n in node_ids if n in faiss_id_of]

    def vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        if not node_ids:
            return np.empty((0, self.dimension), dtype=np.float32)
        faiss_id_of = self._node_id_to_faiss_id_map
        faiss_ids = np.asarray([faiss_id_of[n] for n in node_ids], dtype=np.int64)
        return self._vectors_at(self._positions(faiss_ids))


class StoreNodeIds(MutableMapping):
    """IndexDict.nodes_dict of a VectorStoreIndex whose vector store keeps no text: upstream maps each vector id
    to the node id, which for this store is the node id itself, so a real dict is a second copy of every id (~50 B
    per chunk). This view answers from the FAISS store's node map. Writes are no-ops: IndexDict records what the
    store recorded a moment before (add_node after add_vectors; delete after delete_nodes)."""

    def __init__(self, store: FilterableFaissStore) -> None:
        self._store = store

    def __getitem__(self, node_id: str) -> str:
        if node_id in self._store._node_id_to_faiss_id_map:
            return node_id
        raise KeyError(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._store._node_id_to_faiss_id_map

    def __iter__(self) -> Iterator[str]:
        return iter(self._store._node_id_to_faiss_id_map)

    def __len__(self) -> int:
        return len(self._store._node_id_to_faiss_id_map)

    def __setitem__(self, vector_id: str, node_id: str) -> None:
        if vector_id != node_id:
            raise ValueError(f"vector id {vector_id!r} is not node id {node_id!r}")

    def __delitem__(self, node_id: str) -> None:
        pass


class DeferredIndexStore(SimpleIndexStore):
    """LlamaIndex's SimpleIndexStore, serializing each index struct when the store is persisted or read instead
    of on every change.

    VectorStoreIndex.insert_nodes and delete_nodes call `add_index_struct` after every batch, and KVIndexStore
    turns the whole struct (every node id in the collection, through dataclasses_json) into JSON each time: at
    30-40k chunks that was 82% of ingest time, and it grows with the collection. The struct the index mutates is
    the object passed in, so keeping it and serializing at persist time stores the same JSON once per checkpoint.
    """

    def __init__(self, simple_kvstore: Any = None) -> None:
        super().__init__(simple_kvstore)
        self._pending: dict[str, IndexStruct] = {}

    def add_index_struct(self, index_struct: IndexStruct) -> None:
        self._pending[index_struct.index_id] = index_struct

    def _flush(self) -> None:
        for struct in self._pending.values():
            if isinstance(struct, IndexDict):
                # What index_struct_to_json writes, without dataclasses_json's per-value typing checks (0.6 s per
                # checkpoint at 30k chunks): every IndexDict field is already a JSON type. Except nodes_dict: for
                # a vector store that keeps no text it maps each node id to itself, which the FAISS store's own
                # node map already persists, so it is written empty and rebuilt from that map at load
                # (DenseIndex.load): 1M ids parsed and held twice less.
                data = json.dumps({f.name: getattr(struct, f.name) if f.name != "nodes_dict" else {} for f in dataclasses.fields(struct)})
                self._kvstore.put(struct.index_id, {TYPE_KEY: struct.get_type(), DATA_KEY: data}, collection=self._collection)
            else:
                super().add_index_struct(struct)
        self._pending.clear()

    def delete_index_struct(self, key: str) -> None:
        self._pending.pop(key, None)
        super().delete_index_struct(key)

    def get_index_struct(self, struct_id: str | None = None) -> IndexStruct | None:
        self._flush()
        if struct_id is None:
            structs = self.index_structs()
            assert len(structs) == 1
            return structs[0]
        stored = self._kvstore.get(struct_id, collection=self._collection)
        return None if stored is None else _struct_from_json(stored)

    def index_structs(self) -> list[IndexStruct]:
        self._flush()
        return [_struct_from_json(s) for s in self._kvstore.get_all(collection=self._collection).values()]

    def persist(self, *args: Any, **kwargs: Any) -> None:
        self._flush()
        super().persist(*args, **kwargs)

    def to_dict(self) -> dict:
        self._flush()
        return super().to_dict()


def _struct_from_json(stored: dict) -> IndexStruct:
    """json_to_index_struct, with an IndexDict built directly: dataclasses_json decoded its node map value by
    value (2.4 s of a 6.9 s start-up at 60k chunks)."""
    if stored[TYPE_KEY] == IndexDict.get_type():
        return IndexDict(**json.loads(stored[DATA_KEY]))
    return json_to_index_struct(stored)


class PlainRefDocStore(KVDocumentStore):
    """LlamaIndex's KVDocumentStore, writing each document's RefDocInfo as a plain dict.

    KVDocumentStore turns the RefDocInfo of a node's document into a dict through dataclasses_json for every
    node it adds, ~0.3 ms each in typing checks: 24% of ingest time for one-chunk documents (profiled at 25-30k
    chunks). The dict is the one `to_dict` returns for JSON-typed metadata, which is all a chunk carries.
    """

    def _get_kv_pairs_for_insert(self, node: BaseNode, ref_doc_info: Any, store_text: bool) -> tuple:
        if ref_doc_info is None or not node.ref_doc_id:
            return super()._get_kv_pairs_for_insert(node, ref_doc_info, store_text)
        if node.node_id not in ref_doc_info.node_ids:
            ref_doc_info.node_ids.append(node.node_id)
        if not ref_doc_info.metadata:
            ref_doc_info.metadata = node.metadata or {}
        plain = {"node_ids": list(ref_doc_info.node_ids), "metadata": dict(ref_doc_info.metadata)}
        node_pair = (node.node_id, doc_to_json(node)) if store_text else None
        return node_pair, (node.node_id, {"doc_hash": node.hash, "ref_doc_id": node.ref_doc_id}), (node.ref_doc_id, plain)

    def _merge_ref_doc_kv_pairs(self, ref_doc_kv_pairs: dict) -> list[tuple[str, dict]]:
        """As upstream, except that a document keeps its first node's metadata (upstream's merge keeps the last
        node's), which is what inserting its nodes one at a time leaves: DenseIndex.add inserts a batch at once."""
        merged = []
        for key, pairs in ref_doc_kv_pairs.items():
            node_ids = list(dict.fromkeys(n for _, value in pairs for n in value.get("node_ids", [])))
            merged.append((key, {"node_ids": node_ids, "metadata": pairs[0][1].get("metadata", {})}))
        return merged

    def add_chunks(self, chunks: Sequence[Chunk]) -> None:
        """add_documents(the nodes of `chunks`, allow_update=True), writing the same rows (node, metadata and
        RefDocInfo) without building a TextNode per chunk and dumping it through pydantic. Collection.index_documents
        of 40k one-chunk documents into a flat index, in one process: 332 -> 183-245 us of CPU per document.
        test_batched_add_stores_what_llamaindex_insert_nodes_stores holds the rows equal to upstream's."""
        stored = self._kvstore.get_many(list(dict.fromkeys(c.document_id for c in chunks)), collection=self._ref_doc_collection)
        node_rows, metadata_rows = [], []
        ref_doc_pairs: dict[str, list[tuple[str, dict]]] = {}
        for chunk in chunks:
            node, metadata = _node_json(chunk)
            node_rows.append((chunk.id, node))
            metadata_rows.append((chunk.id, metadata))
            before = stored.get(chunk.document_id, {})
            # What _get_kv_pairs_for_insert makes of this node; the merge below is add_documents' own.
            info = {"node_ids": [*before.get("node_ids", []), chunk.id],
                    "metadata": dict(before.get("metadata") or node[DATA_KEY]["metadata"])}
            ref_doc_pairs.setdefault(chunk.document_id, []).append((chunk.document_id, info))
        ref_doc_rows = self._merge_ref_doc_kv_pairs(ref_doc_pairs)
        self._kvstore.put_all(node_rows, collection=self._node_collection)
        self._kvstore.put_all(metadata_rows, collection=self._metadata_collection)
        self._kvstore.put_all(ref_doc_rows, collection=self._ref_doc_collection)

    def get_nodes(self, node_ids: list[str], raise_error: bool = True) -> list[BaseNode]:
        """One query for all ids instead of one per id (a search fetches its hits together)."""
        found = self._kvstore.get_many(list(node_ids), collection=self._node_collection)
        if raise_error and (missing := [n for n in node_ids if n not in found]):
            raise ValueError(f"Node {missing[0]} not found")
        return [json_to_doc(found[n]) for n in node_ids if n in found]


class DenseIndex:
    """Chunks in a VectorStoreIndex; callers pass embeddings they computed in batches. Writers are serialized by
    the caller (the collection's write lock); searches may run alongside them."""

    def __init__(self, index: VectorStoreIndex, store: FilterableFaissStore, embed_model: BaseEmbedding, spec: DenseIndexSpec) -> None:
        self.index = index
        self.store = store
        self.embed_model = embed_model
        self.spec = spec
        # FAISS indexes are not safe for concurrent add/remove and search; LlamaIndex's dict stores neither.
        self._lock = threading.RLock()
        # Held by whatever changes or reads the graph outside `_lock`: the graph builder's step, a snapshot, a
        # rebuild. Taken before `_lock`, never inside it.
        self._graph_lock = threading.Lock()
        self._closed = False
        self.background = True  # False: pending vectors wait for build_step / build_all on the caller's thread
        self.last_write = 0.0  # time.monotonic() of the last add: the graph builder yields to a collection being written
        self._batch = 16  # rows per graph-builder step, adapted to its time budget
        self._snapshot_graph_rows = store._faiss_index.ntotal  # the graph's rows in the last snapshot written or read

    @classmethod
    def create(
        cls, embed_model: BaseEmbedding, dimension: int, spec: DenseIndexSpec = DenseIndexSpec(), kvstore: SqliteKVStore | None = None,
    ) -> "DenseIndex":
        """A new, empty index whose docstore is `kvstore` (empty too; default: an in-memory SQLite database)."""
        kvstore = kvstore if kvstore is not None else SqliteKVStore(":memory:")
        store = FilterableFaissStore.new(dimension, spec)
        storage = StorageContext.from_defaults(vector_store=store, docstore=PlainRefDocStore(kvstore), index_store=DeferredIndexStore())
        index = VectorStoreIndex(nodes=[], storage_context=storage, embed_model=embed_model)
        index.index_struct.nodes_dict = StoreNodeIds(store)
        return cls(index, store, embed_model, spec)

    @classmethod
    def load(cls, persist_dir: Path, embed_model: BaseEmbedding, spec: DenseIndexSpec = DenseIndexSpec(), *, kvstore: SqliteKVStore) -> "DenseIndex":
        """The FAISS snapshot in `persist_dir` over `kvstore`, the docstore committed with it."""
        store = FilterableFaissStore.from_persist_dir(str(persist_dir))
        store._ef_search = spec.ef_search
        if not spec.target_recall:
            store.calibration = None
        storage = StorageContext.from_defaults(
            vector_store=store, persist_dir=str(persist_dir),
            docstore=PlainRefDocStore(kvstore),
            index_store=DeferredIndexStore.from_persist_dir(str(persist_dir)),
        )
        index = load_index_from_storage(storage, embed_model=embed_model)
        index.index_struct.nodes_dict = StoreNodeIds(store)  # persisted empty (see _flush)
        dense = cls(index, store, embed_model, spec)
        dense.maybe_rebuild()  # an "auto" collection that grew past the threshold before HNSW existed
        dense._wake_builder()  # the snapshot's pending vectors
        return dense

    @property
    def kind(self) -> str:
        """The index in use now: "flat", "hnsw" or "hnsw+sq8"."""
        if not self.store.is_hnsw:
            return "flat"
        return "hnsw+sq8" if self.store.is_quantized else "hnsw"

    def persist(self, persist_dir: Path, previous: Path | None = None) -> None:
        """Raises OSError (with its errno) when the disk is full or failing, whichever writer hit it. `previous`:
        the live snapshot directory, whose rows an HNSW graph's snapshot links instead of writing them again.

        Takes no lock: it only reads, and so do searches; the writers it must not overlap are serialized with
        it by the caller. Holding the lock here stalled every search for the whole checkpoint (~400 ms at 100k
        chunks)."""
        try:
            with self._graph_lock, self.store.linking_rows_from(previous):
                if self.store.backlog and not graph_files.appendable(self.store._faiss_index):
                    with self._lock:  # a whole-index FAISS file has no room for pending rows: into the graph first
                        self.store.insert_pending(self.store.backlog)
                self.index.storage_context.persist(persist_dir=str(persist_dir))
                self._snapshot_graph_rows = self.store._faiss_index.ntotal
        except RuntimeError as exc:
            if (error := _as_os_error(exc)) is None:
                raise
            raise error from exc

    # --- writes
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the index's lock (re-entrant) across several steps: the collection keeps its metadata postings
        and the vectors changing together, and a filtered search sees both at one moment."""
        with self._lock:
            yield

    def add(self, chunks: Sequence[Chunk], embeddings: np.ndarray, *, rebuild: bool = True,
            meanwhile: Callable[[], None] | None = None) -> None:
        """What VectorStoreIndex.insert_nodes does for a vector store that keeps no text (vectors to the store,
        the node to the index struct and the docstore), with the batch kept whole: upstream copies each node
        and calls the docstore once per node (one SQLite round of reads and writes each), and the vectors go in
        as arrays rather than per-node lists. Measured at 20-25k chunks: ~30% of ingest time was that loop.
        The docstore gets the rows its add_documents would write (PlainRefDocStore.add_chunks).
        The docstore writes, then the caller's `meanwhile` (which may read the new chunks' faiss_ids), run while
        FAISS inserts the vectors (FilterableFaissStore.add_vectors)."""
        def to_docstore() -> None:  # runs while FAISS inserts the vectors (add_vectors)
            # IndexDict.add_node would only set nodes_dict[id] = id: a view of the store's node map (StoreNodeIds).
            self.docstore.add_chunks(chunks)
            self.index.storage_context.index_store.add_index_struct(self.index.index_struct)
            if meanwhile is not None:
                meanwhile()

        with self._lock:
            self.store.add_vectors([c.id for c in chunks], embeddings, meanwhile=to_docstore)
        self.last_write = time.monotonic()
        if rebuild:
            self.maybe_rebuild()
        self._wake_builder()

    def replay(self, removed: Sequence[str], added: Sequence[str], vectors: np.ndarray) -> None:
        """Redo one write's effect on the vectors alone (the docstore already holds it): start-up applying the
        docstore's dense log onto an older FAISS snapshot."""
        with self._lock:  # the index struct's nodes_dict is a view of the store (StoreNodeIds): nothing else to redo
            if removed:
                self.store.delete_nodes(list(removed))
            if added:
                self.store.add_vectors(list(added), vectors)
        self.maybe_rebuild()
        self._wake_builder()

    def remove(self, chunk_ids: Sequence[str], *, rebuild: bool = True) -> None:
        """`rebuild` False: the caller calls maybe_rebuild itself, outside any lock it holds (a rebuild runs
        outside the index's lock so that searches go on)."""
        if chunk_ids:
            with self._lock:
                self.index.delete_nodes(list(chunk_ids), delete_from_docstore=True)
            if rebuild:
                self.maybe_rebuild()

    def maybe_rebuild(self) -> None:
        """A new HNSW graph when an "auto" flat index reaches AUTO_HNSW_MIN_CHUNKS, or when an SQ8 collection's
        float graph reaches it (the quantizer learns its ranges from those vectors): an empty graph, with every
        live vector pending for the graph builder, so the writer does not wait for the build. When tombstones fill
        COMPACT_AT of a graph: a compacted graph built here of the live vectors (searches meanwhile go on against
        the old one; the writer that triggered it waits, ~7k vectors/s on 2 cores), its efSearch calibrated if the
        recall target asks."""
        store = self.store
        big = store.live_count >= AUTO_HNSW_MIN_CHUNKS
        grow = self.spec.kind == "auto" and not store.is_hnsw and big
        quantize = self.spec.quantization == "sq8" and store.is_hnsw and not store.is_quantized and big
        if not (grow or quantize or (store.is_hnsw and store.needs_compaction())):
            return
        started = time.perf_counter()
        with self._graph_lock:  # the builder's steps wait: this replaces their graph
            with self._lock:
                ids, vectors = store.live_vectors()
                built_from = store._next_id
            # An SQ8 graph learns its per-dimension ranges from these vectors (decoded ones, when compacting).
            index = self.spec.new_hnsw(store.dimension, training=vectors if self.spec.quantization == "sq8" and big else None)
            if grow or quantize:
                with self._lock:
                    store.replace_index(index, built_from, pending=(ids, vectors))
                log.info("dense index: a new %s graph; its %d vectors wait for the graph builder", self.kind, len(ids))
                self._wake_builder()
                return
            calibration = None
            if self.spec.target_recall and len(ids) >= CALIBRATE_FROM:
                # The newest vectors go in last, after they served as the calibration's unseen queries (ids stay
                # ascending in the graph, as _positions needs).
                held = len(ids) - SAMPLE_QUERIES
                index.add_with_ids(vectors[:held], ids[:held])
                calibration = calibrate(index, vectors[held:], np.arange(held), ids[:held], vectors.__getitem__, self.spec.target_recall)
                index.add_with_ids(vectors[held:], ids[held:])
            else:
                index.add_with_ids(vectors, ids)
            del vectors
            with self._lock:
                store.replace_index(index, built_from, calibration)
        log.info("dense index: compacted the %s graph of %d vectors (M=%d, efConstruction=%d) in %.1f s",
                 self.kind, len(ids), self.spec.m, self.spec.ef_construction, time.perf_counter() - started)

    # --- the graph builder's side (graph_builder.py)
    @property
    def backlog(self) -> int:
        """Vectors acked but not in the graph yet."""
        return self.store.backlog

    def _wake_builder(self) -> None:
        if self.store.backlog and not self._closed and self.background:
            graph_builder.BUILDER.wake(self)

    def build_step(self, seconds: float = graph_builder.STEP_S) -> int:
        """Move a batch of pending vectors into the graph, sized to hold the index's lock (which searches wait
        for) about `seconds`; calibrate efSearch first when it is due (maybe_calibrate). Returns how many moved."""
        with self._graph_lock:
            store = self.store
            if self._closed or not store.backlog:
                return 0
            self.maybe_calibrate()
            batch = self._batch
            if store.backlog > SAMPLE_QUERIES and self._settling_due(adding=min(batch, store.backlog)):
                batch = min(batch, store.backlog - SAMPLE_QUERIES)  # the last SAMPLE_QUERIES wait to be the queries
            started = time.perf_counter()
            with self._lock:
                moved = store.insert_pending(batch)
            per_row = (time.perf_counter() - started) / max(moved, 1)
            self._batch = max(1, min(graph_builder.MAX_BATCH, int(seconds / max(per_row, 1e-6))))
            return moved

    def build_all(self) -> None:
        """Insert every pending vector now, on this thread (tests, benches, `searchsvc` tools)."""
        while self.build_step(seconds=1.0):
            pass

    def close(self) -> None:
        """No graph-builder step runs on this index after this returns (a running one is waited for)."""
        with self._graph_lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def graph_grew(self) -> bool:
        """Whether the graph holds rows the last snapshot has only as pending ones (the builder's work since)."""
        return self.store._faiss_index.ntotal != self._snapshot_graph_rows

    def _settling_due(self, adding: int = 0) -> bool:
        """Whether the graph, with `adding` more rows, has grown SETTLE_GROWTH since its last calibration (a
        draining backlog's last vectors then calibrate it)."""
        done = self.store.calibration
        return bool(self.spec.target_recall) and done is not None and self.store._faiss_index.ntotal + adding >= SETTLE_GROWTH * done.vectors

    def maybe_calibrate(self) -> None:
        """With a recall target: calibrate the graph's efSearch when it was never calibrated (or for another
        target), whenever it would grow past RECALIBRATE_GROWTH times its size at the last calibration (HNSW's
        recall at a given efSearch falls as the graph grows), and when a backlog is down to its last SAMPLE_QUERIES
        vectors once the graph grew SETTLE_GROWTH since (build_step holds those back for it). The queries: the
        oldest pending vectors, which the graph does not hold yet (fewer than MIN_QUERIES: a later, larger backlog
        calibrates). Run by the graph builder, the graph's only writer, under the graph lock; searches only read,
        so the index's lock is not held. ~log1.25(n / 1,000) times in a collection's life, more when backlogs
        drain often (printed by `searchsvc bench --recall`)."""
        target, store = self.spec.target_recall, self.store
        graph_rows = store._faiss_index.ntotal
        if not target or not store.is_hnsw or store.backlog < MIN_QUERIES or graph_rows < CALIBRATE_FROM:
            return
        done = store.calibration
        growing = graph_rows + min(store.backlog, self._batch) >= RECALIBRATE_GROWTH * done.vectors if done else True
        settling = store.backlog <= SAMPLE_QUERIES and self._settling_due()
        if done is not None and done.target == target and not growing and not settling:
            return
        with self._lock:  # a copy: a writer may append meanwhile (never into these rows, but into their block)
            _, unseen = store.pending.head(SAMPLE_QUERIES)
            unseen = unseen.copy()
        store.calibration = store.calibrated(target, unseen, self._lock)

    # --- reads
    @property
    def docstore(self):
        return self.index.docstore

    def chunk_ids_of(self, document_id: str) -> list[str]:
        return self.chunk_ids_of_many([document_id]).get(document_id, [])

    def chunk_ids_of_many(self, document_ids: Sequence[str]) -> dict[str, list[str]]:
        """The chunk ids of each stored document among `document_ids` (absent ones are left out), read in one
        query: a bulk load of 1,000 documents spent ~9% of its ingest thread on a RefDocInfo lookup per document."""
        found = self.kvstore.get_many(list(document_ids), collection=self.docstore._ref_doc_collection)
        return {d: list(info["node_ids"]) for d, info in found.items() if info.get("node_ids")}

    @property
    def kvstore(self) -> SqliteKVStore:
        return self.docstore._kvstore

    def stored_metadata(self) -> Iterator[tuple[str, dict]]:
        """(chunk id, node metadata) of every stored chunk, SQLite extracting the metadata from each node's JSON
        (building 60k TextNodes took 2.2 s of start-up; parsing whole nodes in Python, most of that)."""
        column = f"json_extract(value, '$.{DATA_KEY}.metadata')"
        for chunk_id, metadata in self.kvstore.iterate_raw(self.docstore._node_collection, column=column):
            yield chunk_id, json.loads(metadata)

    def stored_chunks(self) -> Iterator[Chunk]:
        """Every stored chunk, a page of rows at a time, read from the nodes' JSON without building nodes."""
        for _, stored in self.kvstore.iterate(self.docstore._node_collection):
            data = stored[DATA_KEY]
            yield _chunk_of(data["id_"], data["text"], data["metadata"])

    def sample_has_hangul(self, rows: int = 1000) -> bool:
        """Whether any of the first `rows` stored chunks (in id order) has Hangul in its text."""
        from searchsvc.retrieve.analyzers import HANGUL_SCRIPT

        column = f"json_extract(value, '$.{DATA_KEY}.text')"
        for _, (_, text) in zip(range(rows), self.kvstore.iterate_raw(self.docstore._node_collection, page=rows, column=column)):
            if text and HANGUL_SCRIPT.search(text):
                return True
        return False

    @property
    def live_count(self) -> int:
        return self.store.live_count

    def faiss_ids(self, chunk_ids: Sequence[str]) -> dict[str, int]:
        """The FAISS id of each live chunk among `chunk_ids` (ids are stable: a graph rebuild keeps them; a
        chunk written again gets a new one)."""
        faiss_id_of = self.store._node_id_to_faiss_id_map
        return {c: faiss_id_of[c] for c in chunk_ids if c in faiss_id_of}

    def all_faiss_ids(self) -> dict[str, int]:
        with self._lock:
            return dict(self.store._node_id_to_faiss_id_map)

    @property
    def document_count(self) -> int:
        return self.kvstore.count(self.docstore._ref_doc_collection)

    def document_ids_after(self, after: str, limit: int) -> list[str]:
        """Up to `limit` stored document ids past `after`, in id order."""
        return self.kvstore.keys_after(after, limit, collection=self.docstore._ref_doc_collection)

    def chunk_ids_at(self, faiss_ids: np.ndarray) -> list[str | None]:
        """The chunk id at each live FAISS id (the caller holds `locked()`, so none goes meanwhile)."""
        return self.store.node_ids_of(faiss_ids)

    def get_nodes(self, chunk_ids: Sequence[str], raise_error: bool = True) -> list[BaseNode]:
        return self.docstore.get_nodes(list(chunk_ids), raise_error=raise_error)

    def get_chunks(self, chunk_ids: Sequence[str]) -> dict[str, Chunk]:
        """The stored chunks among `chunk_ids`, read from the nodes' JSON in one query without building nodes."""
        found = self.kvstore.get_many(list(chunk_ids), collection=self.docstore._node_collection)
        chunks = {}
        for chunk_id, stored in found.items():
            data = stored[DATA_KEY]
            chunks[chunk_id] = _chunk_of(data["id_"], data["text"], data["metadata"])
        return chunks

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return embed_passages(self.embed_model, texts)

    def embed_query(self, query: str) -> np.ndarray:
        return embed_query(self.embed_model, query)

    def search(
        self, query_vector: np.ndarray, k: int, allowed: set[str] | None = None, *, ef_search: int | None = None, exact: bool = False,
        allowed_ids: np.ndarray | None = None, excluded_ids: np.ndarray | None = None,
    ) -> list[ScoredId]:
        """Top-k chunk ids by cosine. Queries the index's vector store directly: fusion needs ids and scores,
        and a VectorIndexRetriever would also load and deserialize every candidate node from the docstore
        (~3 ms for 50 candidates here); the pipeline fetches text only for the hits it returns."""
        query = VectorStoreQuery(
            query_embedding=query_vector.tolist(),
            similarity_top_k=k,
            node_ids=None if allowed is None else list(allowed),
        )
        result = self.store.query(query, ef_search=ef_search, exact=exact, allowed_ids=allowed_ids, excluded_ids=excluded_ids,
                                  lock=self._lock)
        return [ScoredId(node_id, rank, score) for rank, (node_id, score) in enumerate(zip(result.ids, result.similarities), start=1)]

    def stored_vectors(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            chunk_ids = self.store.present(chunk_ids)
            if not chunk_ids:
                return {}
            return dict(zip(chunk_ids, self.store.vectors(chunk_ids)))

    def similarities(self, query_vector: np.ndarray, chunk_ids: Sequence[str]) -> dict[str, float]:
        with self._lock:
            chunk_ids = self.store.present(chunk_ids)  # a chunk deleted since a leg found it has none
            if not chunk_ids:
                return {}
            vectors = self.store.vectors(chunk_ids)
        return dict(zip(chunk_ids, (vectors @ query_vector).tolist()))


def _pending_top(pending: list[tuple[np.ndarray, np.ndarray]], tombstones: np.ndarray | None, vector: np.ndarray, k: int,
                 allowed: np.ndarray | None, excluded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The top `k` of `pending` ((ids, vectors) blocks: PendingRows.snapshot) by an exact scan, skipping what the
    graph search skips."""
    ids, scores = pending_rows.scan(pending, vector)
    if tombstones is not None:
        scores[np.isin(ids, tombstones)] = -np.inf
    if allowed is not None:
        scores[~np.isin(ids, allowed)] = -np.inf
    if excluded is not None:
        scores[np.isin(ids, excluded)] = -np.inf
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.isfinite(scores[top])]
    return scores[top], ids[top]


def _node_metadata(chunk: Chunk) -> dict:
    return {
        **filters.to_json(chunk.metadata),
        "document_id": chunk.document_id,
        "title": chunk.title,
        "chunk_index": chunk.index,
        "start_char": chunk.start_char,
        "end_char": chunk.end_char,
    }


def _to_node(chunk: Chunk, embedding: list[float] | None) -> TextNode:
    metadata = _node_metadata(chunk)
    return TextNode(
        id_=chunk.id,
        text=chunk.text,
        metadata=metadata,
        embedding=embedding,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.document_id)},
        # We embed `title + text` ourselves; LlamaIndex must not append metadata to the text.
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=list(metadata),
    )


@functools.cache
def _node_template() -> dict:
    """TextNode.to_dict() of a node as _to_node builds it: the fields every chunk's node shares, as the installed
    LlamaIndex writes them."""
    return _to_node(Chunk("", "", 0, "", "", {}, 0, 0), None).to_dict()


def _node_json(chunk: Chunk) -> tuple[dict, dict]:
    """(doc_to_json(_to_node(chunk, None)), the docstore's metadata row of that node) from plain dicts. The hash
    is TextNode.hash: sha256 of the text and the metadata dict's str()."""
    template = _node_template()
    metadata = _node_metadata(chunk)
    keys = list(metadata)
    source = {**template["relationships"][NodeRelationship.SOURCE.value], "node_id": chunk.document_id, "metadata": {}}
    data = {
        **template, "id_": chunk.id, "text": chunk.text, "metadata": metadata, "excluded_embed_metadata_keys": keys,
        "excluded_llm_metadata_keys": list(keys), "relationships": {NodeRelationship.SOURCE.value: source},
    }
    doc_hash = hashlib.sha256((chunk.text + str(metadata)).encode("utf-8", "surrogatepass")).hexdigest()
    return {DATA_KEY: data, TYPE_KEY: _TEXT_NODE_TYPE}, {"doc_hash": doc_hash, "ref_doc_id": chunk.document_id}


_TEXT_NODE_TYPE = TextNode.get_type()


def node_to_chunk(node: BaseNode) -> Chunk:
    """The inverse of _to_node: what a re-embed needs to rebuild a collection from its docstore."""
    return _chunk_of(node.node_id, node.get_content(), node.metadata)


def _chunk_of(chunk_id: str, text: str, m: dict) -> Chunk:
    return Chunk(
        id=chunk_id,
        document_id=m["document_id"],
        index=int(m["chunk_index"]),
        text=text,
        title=m.get("title", ""),
        metadata=filters.from_json({k: v for k, v in m.items() if k not in RESERVED_METADATA}),
        start_char=int(m["start_char"]),
        end_char=int(m["end_char"]),
    )


# faiss.write_index reports a failed write as RuntimeError("... write error in <path>: ... (<strerror>)"): give it
# back its errno, so a full disk during a checkpoint is handled as one, not as a bug.
_ERRNO_BY_MESSAGE = {os.strerror(code): code for code in errno.errorcode}


def _as_os_error(exc: RuntimeError) -> OSError | None:
    message = str(exc)
    match = re.search(r"write error in .*\(([^()]+)\)\s*$", message)
    if match is None or match.group(1) not in _ERRNO_BY_MESSAGE:
        return None
    return OSError(_ERRNO_BY_MESSAGE[match.group(1)], f"{match.group(1)} (faiss: {message.strip()})")
