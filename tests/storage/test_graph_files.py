"""An HNSW graph's snapshot writes the graph and only the rows added since the live snapshot (graph_files.py):
each snapshot loads back exactly what it held (rows in the graph and rows still pending for the graph builder),
also after later ones appended to the rows file it shares, after the builder moved pending rows into the graph,
after a compaction, after a failed attempt, and inside a snapshot archive. Real FAISS graphs and files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.types import Chunk, CollectionConfig, Document
from searchsvc.errors import DataLoss
from searchsvc.retrieve.external import ExternalEmbedding
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.storage.embedded import collection as collection_module
from searchsvc.storage.embedded import graph_files
from searchsvc.storage.embedded import snapshot as archive
from searchsvc.storage.embedded.dense import DenseIndex, DenseIndexSpec

DIM = 16
HNSW = DenseIndexSpec(kind="hnsw", m=8, ef_construction=32, ef_search=64)
SQ8 = DenseIndexSpec(kind="hnsw", m=8, ef_construction=32, ef_search=64, quantization="sq8")


def unit(rows: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add(dense: DenseIndex, start: int, count: int) -> None:
    dense.add([Chunk(f"{i}#0", str(i), 0, f"text {i}", "", {}, 0, 6) for i in range(start, start + count)], unit(count, start))


def snapshot_of(dense: DenseIndex) -> dict:
    """What a snapshot must bring back: every stored row's id, node and vector, and the graph's answers."""
    store = dense.store
    queries = unit(5, 999)
    return {
        "ids": store._row_ids().tolist(), "nodes": list(store._node_at),
        "vectors": store._vectors_at(np.arange(store.rows)),
        "hits": [[h.chunk_id for h in dense.search(q, 5)] for q in queries],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["ids"] == b["ids"] and a["nodes"] == b["nodes"] and a["hits"] == b["hits"]
    np.testing.assert_array_equal(a["vectors"], b["vectors"])


def load(directory: Path, spec: DenseIndexSpec, kvstore) -> DenseIndex:
    return DenseIndex.load(directory, ExternalEmbedding(dimension=DIM), spec, kvstore=kvstore)


@pytest.mark.parametrize("spec", [HNSW, SQ8], ids=["flat-rows", "sq8-rows"])
def test_a_snapshot_appends_to_the_rows_of_the_last_and_each_loads_what_it_held(tmp_path, monkeypatch, spec):
    monkeypatch.setattr("searchsvc.storage.embedded.dense.AUTO_HNSW_MIN_CHUNKS", 100)  # SQ8 trains at 100 chunks
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, spec)
    dense.close()  # no background builder: this test moves rows into the graph itself
    add(dense, 0, 300)
    assert dense.kind == ("hnsw+sq8" if spec is SQ8 else "hnsw")
    for _ in range(5):
        dense._closed = False
        dense.build_step(seconds=1e-9)  # a few rows in the graph (a batch of 1 after the first), the rest pending
        dense._closed = True
    assert 0 < dense.store._faiss_index.ntotal < 300 and dense.backlog == 300 - dense.store._faiss_index.ntotal
    dense.persist(tmp_path / "s1")
    first = snapshot_of(dense)
    add(dense, 300, 200)
    dense.remove(["7#0", "301#0"])  # tombstones: the rows stay, their nodes go
    dense._closed = False
    dense.build_all()  # the pending rows move into the graph: their bytes in the shared file stay where they are
    assert dense.backlog == 0 and dense.store._faiss_index.ntotal == 500
    dense.persist(tmp_path / "s2", previous=tmp_path / "s1")
    second = snapshot_of(dense)

    rows1, rows2 = tmp_path / "s1" / graph_files.ROWS_FILE, tmp_path / "s2" / graph_files.ROWS_FILE
    assert rows1.stat().st_ino == rows2.stat().st_ino, "the second snapshot links the first one's rows"
    code_size = json.loads((tmp_path / "s2" / graph_files.LAYOUT_FILE).read_text())["code_size"]
    assert rows2.stat().st_size == 500 * code_size
    assert json.loads((tmp_path / "s1" / graph_files.LAYOUT_FILE).read_text())["rows"] == 300
    assert not (tmp_path / "s2" / "default__vector_store.json").exists(), "no whole-index FAISS file"

    assert_same(snapshot_of(load(tmp_path / "s2", spec, dense.kvstore)), second)
    # The first snapshot's file grew under it; it still loads its own 300 rows (its node list still names them all).
    old = load(tmp_path / "s1", spec, dense.kvstore)
    old.close()
    assert old.store.rows == 300 and old.backlog == len(first["ids"]) - old.store._faiss_index.ntotal and old.kind == dense.kind
    np.testing.assert_array_equal(old.store._vectors_at(np.arange(300)), first["vectors"])
    assert old.store._row_ids().tolist() == first["ids"]


def test_compaction_starts_a_new_rows_file_and_leaves_the_old_one_whole(tmp_path):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, HNSW)
    add(dense, 0, 200)
    dense.persist(tmp_path / "s1")
    before = (tmp_path / "s1" / graph_files.ROWS_FILE).read_bytes()
    dense.remove([f"{i}#0" for i in range(60)])  # past COMPACT_AT: a new graph of the 140 live rows
    assert dense.store.rows == 140 and dense.backlog == 0
    dense.persist(tmp_path / "s2", previous=tmp_path / "s1")
    assert (tmp_path / "s2" / graph_files.ROWS_FILE).stat().st_ino != (tmp_path / "s1" / graph_files.ROWS_FILE).stat().st_ino
    assert (tmp_path / "s1" / graph_files.ROWS_FILE).read_bytes() == before
    assert_same(snapshot_of(load(tmp_path / "s2", HNSW, dense.kvstore)), snapshot_of(dense))


def test_a_snapshot_after_a_failed_one_overwrites_what_that_one_appended(tmp_path, monkeypatch):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, HNSW)
    add(dense, 0, 100)
    dense.persist(tmp_path / "s1")
    add(dense, 100, 50)
    # The rows reach the shared file, then the graph's write fails: the rows file now holds 150 rows, s1 names 100.
    real_write_index = faiss.write_index

    def failing(index, path, *flags):
        raise RuntimeError(f"Error in faiss::FileIOWriter: write error in {path}: 0 != 1 (No space left on device)")

    monkeypatch.setattr(faiss, "write_index", failing)
    with pytest.raises(OSError):
        dense.persist(tmp_path / "failed", previous=tmp_path / "s1")
    monkeypatch.setattr(faiss, "write_index", real_write_index)
    shared = tmp_path / "s1" / graph_files.ROWS_FILE
    assert shared.stat().st_size == 150 * 4 * DIM
    with open(shared, "r+b") as f:  # as a torn append would leave them: rows past the 100 that s1 names are garbage
        f.seek(100 * 4 * DIM)
        f.write(b"\xff" * (30 * 4 * DIM))
    dense.remove(["120#0"])
    add(dense, 150, 30)
    dense.persist(tmp_path / "s2", previous=tmp_path / "s1")
    assert_same(snapshot_of(load(tmp_path / "s2", HNSW, dense.kvstore)), snapshot_of(dense))
    assert load(tmp_path / "s1", HNSW, dense.kvstore).store.rows == 100


def test_a_short_rows_file_is_data_loss_not_a_smaller_graph(tmp_path):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, HNSW)
    add(dense, 0, 50)
    dense.persist(tmp_path / "s1")
    rows = tmp_path / "s1" / graph_files.ROWS_FILE
    rows.write_bytes(rows.read_bytes()[: 49 * 4 * DIM])
    with pytest.raises(DataLoss, match="holds fewer rows than its graph.json names"):
        load(tmp_path / "s1", HNSW, dense.kvstore)


def test_an_archive_takes_the_pinned_rows_while_later_snapshots_append_to_them(tmp_path, monkeypatch):
    catalog = Catalog(load_settings(index_dir=tmp_path / "idx", default_language="en", checkpoint_wal_bytes=10**9), ModelRegistry())
    catalog.open_all()
    coll = catalog.create("g", CollectionConfig("external", "", 0, 0, refresh_interval_ms=-1, dimension=DIM, dense_index="hnsw"))
    vectors = unit(40, 7)
    coll.index_documents([Document(f"d{i}", f"doc {i}", vector=vectors[i].tolist()) for i in range(30)])
    monkeypatch.setattr(collection_module, "DENSE_SNAPSHOT_CHANGES", 0)  # every checkpoint writes a FAISS snapshot
    pinned = coll.pin_checkpoint(tmp_path / "staging")
    coll.index_documents([Document(f"d{i}", f"doc {i}", vector=vectors[i].tolist()) for i in range(30, 40)])
    coll.checkpoint()  # appends 10 rows to the rows file the staging directory links
    staged = tmp_path / "staging" / pinned.snapshot_dir / graph_files.ROWS_FILE
    assert staged.stat().st_size == 40 * 4 * DIM
    manifest, _ = archive.write_archive(pinned, "g@1", "g", tmp_path / "g.tar")
    pinned.docstore.close()
    assert manifest.members[f"{pinned.snapshot_dir}/{graph_files.ROWS_FILE}"]["size"] == 30 * 4 * DIM
    restored = catalog.restore(tmp_path / "g.tar", archive.verify(tmp_path / "g.tar"), "copy")
    assert restored.document_count == 30 and restored.dense_index_in_use == "hnsw"
    for i in range(30):
        assert restored.dense_search(vectors[i], 1)[0].chunk_id.startswith(f"d{i}#")
    catalog.close()


def test_an_hnsw_snapshot_in_the_whole_index_layout_still_loads_and_its_next_snapshot_is_in_the_new_one(tmp_path, monkeypatch):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, HNSW)
    add(dense, 0, 120)
    dense.remove(["5#0"])
    with monkeypatch.context() as patched:  # as servers before graph_files wrote it: one FAISS file, whole
        patched.setattr(graph_files, "appendable", lambda index: False)
        dense.persist(tmp_path / "old")
    assert (tmp_path / "old" / "default__vector_store.json").exists() and not graph_files.is_graph_snapshot(tmp_path / "old")
    loaded = load(tmp_path / "old", HNSW, dense.kvstore)
    assert_same(snapshot_of(loaded), snapshot_of(dense))
    add(loaded, 120, 30)
    loaded.persist(tmp_path / "new", previous=tmp_path / "old")
    assert graph_files.is_graph_snapshot(tmp_path / "new")
    assert_same(snapshot_of(load(tmp_path / "new", HNSW, dense.kvstore)), snapshot_of(loaded))
