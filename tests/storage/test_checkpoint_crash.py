"""kill -9 at every step of a checkpoint on the storage as it is now (FAISS snapshot directory, SQLite docstore
whose commit is the switch, tantivy keyword index, WAL), and a collection from before the SQLite docstore.

The crashing process is real: a spawned child indexes, arms SIGKILL at one step, and checkpoints; the parent
reopens what it left and checks every acked write."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.filters import from_pairs
from searchsvc.domain.types import CollectionConfig, Document, SearchMode, SearchParams
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.pipeline import SearchPipeline
from searchsvc.storage.embedded.collection import DOCSTORE_FILE, Collection

DIM = 8
# A checkpoint either writes a FAISS snapshot ("full") or commits the vectors' changes to the docstore's dense
# log and keeps the FAISS snapshot ("delta"); both end with the docstore commit (the switch) and the WAL reset.
STEPS = ["before-docstore-commit", "after-docstore-commit", "after-keyword-commit", "after-wal-reset"]
# An HNSW graph's FAISS snapshot appends to the rows file it shares with the live snapshot (graph_files.py): a
# crash after that append must leave the live snapshot loading only its own rows. The steps after the docstore
# commit do nothing to the rows file that a flat index's steps don't already test.
CASES = (
    [("full", "after-persist", "flat")] + [(mode, step, "flat") for mode in ("full", "delta") for step in STEPS]
    + [("full", step, "hnsw") for step in ["after-persist"] + STEPS[:2]]
)


def vector(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def document(i: int, version: int = 1) -> Document:
    parity = "even" if (i + version) % 2 else "odd"  # a replacement changes it: the filter postings must follow
    return Document(f"d{i}", f"document {i} version{version} word{i}", metadata={"parity": parity}, vector=vector(i * 10 + version))


def filtered(catalog: Catalog, coll, parity: str) -> set[str]:
    """The dense leg's filter (the metadata postings; the keyword leg filters inside tantivy)."""
    params = SearchParams("", mode=SearchMode.DENSE, top_k=50, filter=from_pairs({"parity": parity}), query_vector=vector(0))
    hits = SearchPipeline(catalog.models).search(coll, params).hits
    return {h.document_id for h in hits}


def open_catalog(index_dir: Path) -> Catalog:
    catalog = Catalog(load_settings(index_dir=index_dir, default_language="en", checkpoint_wal_bytes=10**9), ModelRegistry())
    catalog.open_all()
    return catalog


def expected() -> dict[str, str]:
    """What the child acks: d0-d9, then d3 deleted and d5 replaced by version 2, then d10-d11."""
    docs = {f"d{i}": document(i).text for i in range(12)}
    del docs["d3"]
    docs["d5"] = document(5, 2).text
    return docs


def crash_during_checkpoint(index_dir: str, mode: str, step: str, dense_index: str) -> None:
    import searchsvc.storage.embedded.collection

    catalog = open_catalog(Path(index_dir))
    # The keyword index commits only at checkpoints here, so a crash inside one can leave it behind the docstore.
    coll = catalog.create("c", CollectionConfig("external", "", 0, 0, refresh_interval_ms=600_000, dimension=DIM, dense_index=dense_index))
    coll.index_documents([document(i) for i in range(10)])
    coll.checkpoint()  # a previous FAISS snapshot, so the crash falls between two commits
    searchsvc.storage.embedded.collection.DENSE_SNAPSHOT_CHANGES = 0 if mode == "full" else 10**9
    coll.delete_documents(["d3"])
    coll.index_documents([document(5, 2)])
    coll.index_documents([document(10), document(11)])

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def after(obj, name):
        original = getattr(obj, name)
        setattr(obj, name, lambda *a, **k: (original(*a, **k), kill()))

    if step == "after-persist":
        after(coll.dense, "persist")
    elif step == "before-docstore-commit":
        coll.dense.kvstore.commit = lambda **meta: kill()
    elif step == "after-docstore-commit":
        after(coll.dense.kvstore, "commit")
    elif step == "after-keyword-commit":
        after(coll, "_commit_keyword")
    else:
        after(coll.wal, "reset")
    coll.checkpoint()
    raise AssertionError("not killed")


@pytest.mark.parametrize("mode,step,dense_index", CASES)
def test_kill9_at_each_checkpoint_step_loses_no_acked_write(tmp_path, caplog, mode, step, dense_index):
    child = multiprocessing.get_context("spawn").Process(target=crash_during_checkpoint, args=(str(tmp_path), mode, step, dense_index))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL

    caplog.set_level("INFO", logger="searchsvc.storage.embedded.collection")
    catalog = open_catalog(tmp_path)
    assert "keyword index built from" not in caplog.text, "the WAL still held what the keyword index missed"
    coll = catalog.get("c")
    assert coll.dense_index_in_use == dense_index
    want = expected()
    stored = {c.document_id: c.text for c in coll.dense.stored_chunks()}
    assert stored == want
    assert coll.document_count == len(want) and coll.chunk_count == len(want)
    pipeline = SearchPipeline(catalog.models)
    for doc_id in want:
        i, version = int(doc_id[1:]), 2 if doc_id == "d5" else 1
        hits = pipeline.search(coll, SearchParams("", mode=SearchMode.DENSE, top_k=1, query_vector=vector(i * 10 + version))).hits
        assert [h.document_id for h in hits] == [doc_id]
        hits = pipeline.search(coll, SearchParams(f"word{i}", mode=SearchMode.KEYWORD, top_k=1)).hits
        assert [h.document_id for h in hits] == [doc_id]
    hits = pipeline.search(coll, SearchParams("version2", mode=SearchMode.KEYWORD, top_k=5)).hits
    assert [h.document_id for h in hits] == ["d5"], "the replaced text is gone from the keyword leg"
    even = {d for d in want if (int(d[1:]) + (2 if d == "d5" else 1)) % 2}
    assert filtered(catalog, coll, "even") == even and filtered(catalog, coll, "odd") == set(want) - even
    snapshot, seq = Collection.current_snapshot(tmp_path / "c")
    new_snapshot = mode == "full" and step not in ("after-persist", "before-docstore-commit")
    assert (snapshot.name != "snap-000000000001") == new_snapshot, snapshot  # else the dense log was replayed onto it
    assert (tmp_path / "c" / "CURRENT").read_text() in (snapshot.name, "snap-000000000001")
    coll.index_documents([document(20)])  # writable after the crash
    catalog.close()
    again = open_catalog(tmp_path)
    assert again.get("c").document_count == len(want) + 1
    again.close()


def test_a_collection_from_before_the_sqlite_docstore_is_migrated_once(tmp_path):
    """The previous format: the docstore as LlamaIndex's SimpleDocumentStore JSON inside the snapshot, CURRENT
    the pointer, no docstore.sqlite; WAL records after the snapshot."""
    from llama_index.core.storage.docstore import SimpleDocumentStore

    catalog = open_catalog(tmp_path)
    coll = catalog.create("c", CollectionConfig("external", "", 0, 0, refresh_interval_ms=-1, dimension=DIM))
    coll.index_documents([document(i) for i in range(4)])
    coll.checkpoint()
    nodes = list(coll.dense.docstore.docs.values())
    coll.index_documents([document(4)])  # WAL only
    snapshot, seq = Collection.current_snapshot(tmp_path / "c")
    coll.keyword.close()
    coll.wal.close()
    coll.dense.kvstore.close()
    legacy = SimpleDocumentStore()
    legacy.add_documents(nodes)
    legacy.persist(str(snapshot / "docstore.json"))  # what the previous version's checkpoint wrote
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "c" / f"{DOCSTORE_FILE}{suffix}").unlink(missing_ok=True)
    assert (tmp_path / "c" / "CURRENT").read_text() == snapshot.name

    migrated = open_catalog(tmp_path)
    coll = migrated.get("c")
    assert sorted(c.document_id for c in coll.dense.stored_chunks()) == ["d0", "d1", "d2", "d3", "d4"]
    assert coll.document_count == 5
    assert not (snapshot / "docstore.json").exists()
    committed = json.loads(json.dumps(coll.dense.kvstore.committed))
    assert committed == {"snapshot": snapshot.name, "seq": str(seq)}
    hits = SearchPipeline(migrated.models).search(coll, SearchParams("word2", mode=SearchMode.KEYWORD, top_k=1)).hits
    assert [h.text for h in hits] == [document(2).text]
    assert filtered(migrated, coll, "even") == {"d0", "d2", "d4"}, "filter postings built from the migrated nodes"
    migrated.close()  # a checkpoint in the new format
    again = open_catalog(tmp_path)
    assert again.get("c").document_count == 5
    assert again.get("c").dense.kvstore.committed["chunk_metadata"] == "1"
    assert filtered(again, again.get("c"), "odd") == {"d1", "d3"}
    again.close()
