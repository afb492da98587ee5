"""kill -9 while the graph builder inserts acked vectors into the HNSW graph, and while a compaction builds the
graph that replaces it (the embedded index's merge): no acked vector is lost, and the reopened collection finds
every one of them, then drains its backlog.

The crashing process is real: a spawned child indexes (each batch acked once it is in the WAL), arms SIGKILL
inside the graph builder or the compaction, and waits for it; the parent reopens what it left."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.types import CollectionConfig, Document, SearchMode, SearchParams
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.pipeline import SearchPipeline

DIM = 8
DOCS = 3000
BATCH = 500


def vector(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def document(i: int) -> Document:
    return Document(f"d{i}", f"document {i}", vector=vector(i))


def open_catalog(index_dir: Path) -> Catalog:
    catalog = Catalog(load_settings(index_dir=index_dir, default_language="en", checkpoint_wal_bytes=10**9), ModelRegistry())
    catalog.open_all()
    return catalog


def deleted(case: str) -> set[str]:
    return {f"d{i}" for i in range(0, 1000)} if case == "compaction" else set()


def crash(index_dir: str, case: str) -> None:
    from searchsvc.storage.embedded import collection as collection_module
    from searchsvc.storage.embedded import dense as dense_module
    from searchsvc.storage.embedded import graph_builder

    collection_module.DENSE_SNAPSHOT_CHANGES = 0  # every checkpoint writes a FAISS snapshot

    def kill(*_a, **_k) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    catalog = open_catalog(Path(index_dir))
    coll = catalog.create("c", CollectionConfig("external", "", 0, 0, refresh_interval_ms=600_000, dimension=DIM, dense_index="hnsw"))
    wake = graph_builder.BUILDER.wake
    graph_builder.BUILDER.wake = lambda index: None  # the graph waits while every batch is acked
    for start in range(0, DOCS, BATCH):
        coll.index_documents([document(i) for i in range(start, start + BATCH)])
        if start == 1000:
            for _ in range(5):
                coll.dense.build_step(seconds=1e-9)  # a batch of one after the first
            coll.checkpoint()  # a snapshot of a half-built graph: graph rows and pending rows
    store_class = dense_module.FilterableFaissStore
    if case == "build":
        insert, steps = store_class.insert_pending, [0]

        def dying_insert(store, n):  # the third step dies between FAISS taking the rows and the pending list letting go
            steps[0] += 1
            if steps[0] == 3:
                ids, vectors = store.pending.head(n)
                store._faiss_index.add_with_ids(vectors, ids)
                kill()
            return insert(store, n)

        store_class.insert_pending = dying_insert
        graph_builder.BUILDER.wake = wake
        coll.dense._wake_builder()  # the background thread takes it from here
    else:
        coll.dense.build_all()
        coll.checkpoint()
        store_class.replace_index = kill  # the compacted graph is built; the crash comes before it is swapped in
        coll.delete_documents(sorted(deleted(case)))  # a third of the graph: past COMPACT_AT, compacts inline
    time.sleep(60)
    raise AssertionError("not killed")


@pytest.mark.parametrize("case", ["build", "compaction"])
def test_kill9_in_a_graph_build_or_a_compaction_loses_no_acked_vector(tmp_path, case):
    child = multiprocessing.get_context("spawn").Process(target=crash, args=(str(tmp_path), case))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL

    catalog = open_catalog(tmp_path)
    coll = catalog.get("c")
    # The delete that triggered the compaction was in the WAL (fsynced before it was applied): it is replayed.
    want = {f"d{i}" for i in range(DOCS)} - deleted(case)
    assert {c.document_id for c in coll.dense.stored_chunks()} == want and coll.chunk_count == len(want)
    pipeline = SearchPipeline(catalog.models)

    def top(i: int) -> str:
        hits = pipeline.search(coll, SearchParams("", mode=SearchMode.DENSE, top_k=1, query_vector=vector(i), exact=True)).hits
        return hits[0].document_id

    sample = sorted(want, key=lambda d: int(d[1:]))[::37]
    assert [top(int(d[1:])) for d in sample] == sample  # found while some are still pending (scanned exactly)
    coll.dense.build_all()
    assert coll.dense_backlog == 0 and coll.dense.store._faiss_index.ntotal == coll.dense.store.rows
    assert [top(int(d[1:])) for d in sample] == sample
    catalog.close()
