"""The dense leg's LlamaIndex storage: the index struct, serialized only at persist time (DeferredIndexStore),
holds exactly the live chunks when it is written and read back."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from searchsvc.domain.types import Chunk
from searchsvc.retrieve.external import ExternalEmbedding
from searchsvc.storage.embedded.dense import DeferredIndexStore, DenseIndex, DenseIndexSpec

DIM = 4


def chunks(*ids: str) -> list[Chunk]:
    return [Chunk(f"{i}#0", i, 0, f"text of {i}", "", {}, 0, 10) for i in ids]


def unit(rows: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_index_struct_is_written_once_at_persist_and_matches_the_live_chunks(tmp_path, monkeypatch):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    store = dense.index.storage_context.index_store
    assert isinstance(store, DeferredIndexStore)
    writes = []
    kvstore = store._kvstore  # every serialized struct is put here
    original = type(kvstore).put
    monkeypatch.setattr(type(kvstore), "put", lambda self, key, val, collection=None: (
        writes.append(1) if collection == store._collection else None) or original(self, key, val, collection))

    vectors = unit(3, seed=1)
    for i, c in enumerate(chunks("a", "b", "c")):  # one batch each, as BulkIndex requests
        dense.add([c], vectors[i : i + 1])
    dense.remove(["b#0"])
    assert writes == [], "nothing serialized per batch"
    dense.persist(tmp_path / "snap")
    assert writes == [1], "serialized once, at persist"

    loaded = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), kvstore=dense.kvstore)
    assert sorted(loaded.index.index_struct.nodes_dict.values()) == ["a#0", "c#0"]
    assert [s.chunk_id for s in loaded.search(vectors[2], k=3)] == ["c#0", "a#0"]
    loaded.add(chunks("d"), unit(1, seed=2))  # a reloaded index keeps deferring, and persists again whole
    loaded.persist(tmp_path / "snap2")
    again = DenseIndex.load(tmp_path / "snap2", ExternalEmbedding(dimension=DIM), kvstore=loaded.kvstore)
    assert sorted(again.index.index_struct.nodes_dict.values()) == ["a#0", "c#0", "d#0"]


def test_searches_go_on_while_a_checkpoint_persists(tmp_path, monkeypatch):
    """A checkpoint only reads the index: searches must not wait for it (it took ~400 ms at 100k chunks)."""
    import threading

    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    vectors = unit(3, seed=1)
    dense.add(chunks("a", "b", "c"), vectors)
    storage = dense.index.storage_context
    entered, release = threading.Event(), threading.Event()
    original = type(storage).persist

    def slow_persist(self, *args, **kwargs):
        entered.set()
        release.wait(10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(storage), "persist", slow_persist)
    writer = threading.Thread(target=dense.persist, args=(tmp_path / "snap",))
    writer.start()
    try:
        assert entered.wait(5)
        result: list = []
        reader = threading.Thread(target=lambda: result.append(dense.search(vectors[0], k=1)))
        reader.start()
        reader.join(2)
        assert result and result[0][0].chunk_id == "a#0", "the search finished while the checkpoint was still writing"
    finally:
        release.set()
        writer.join()


def test_the_plain_ref_doc_store_writes_what_llamaindex_writes():
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.storage.docstore.types import RefDocInfo

    from searchsvc.storage.embedded.dense import PlainRefDocStore, _to_node
    from searchsvc.storage.embedded.sqlite_kv import SqliteKVStore

    chunk = Chunk("d#1", "d", 1, "text", "title", {"lang": "ko", "year": "2024"}, 0, 4)
    node = _to_node(chunk, [0.0] * DIM)
    ours = PlainRefDocStore(SqliteKVStore(":memory:"))._get_kv_pairs_for_insert(node, RefDocInfo(node_ids=["d#0"]), True)
    theirs = SimpleDocumentStore()._get_kv_pairs_for_insert(node, RefDocInfo(node_ids=["d#0"]), True)
    assert ours == theirs


def test_the_deferred_index_store_writes_what_llamaindex_writes(tmp_path):
    import json

    from llama_index.core.storage.index_store.utils import index_struct_to_json, json_to_index_struct

    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    dense.add(chunks("a", "b"), unit(2, seed=1))
    struct = dense.index.index_struct
    store = dense.index.storage_context.index_store
    store._flush()
    ours = store._kvstore.get(struct.index_id, collection=store._collection)
    theirs = index_struct_to_json(struct)
    # The same, but for nodes_dict (id -> the same id), which load rebuilds from the FAISS store's node map.
    assert ours.keys() == theirs.keys() and json.loads(ours["__data__"]) == {**json.loads(theirs["__data__"]), "nodes_dict": {}}
    assert json_to_index_struct(ours).index_id == struct.index_id and struct.nodes_dict == {"a#0": "a#0", "b#0": "b#0"}
    dense.persist(tmp_path / "snap")
    loaded = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), kvstore=dense.kvstore)
    assert loaded.index.index_struct.nodes_dict == struct.nodes_dict


def test_stored_metadata_reads_what_the_nodes_hold(tmp_path):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    dense.add([Chunk("a#0", "a", 0, "text a", "A", {"lang": "ko"}, 0, 6), Chunk("b#0", "b", 0, "text b", "", {}, 0, 6)], unit(2, seed=1))
    dense.persist(tmp_path / "snap")
    loaded = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), kvstore=dense.kvstore)
    assert dict(loaded.stored_metadata()) == {n.node_id: n.metadata for n in loaded.docstore.docs.values()}
    assert type(loaded.index.index_struct).__name__ == "IndexDict" and set(loaded.index.index_struct.nodes_dict.values()) == {"a#0", "b#0"}


def test_batched_add_stores_what_llamaindex_insert_nodes_stores():
    from searchsvc.domain.filters import Timestamp
    from searchsvc.storage.embedded.dense import _to_node

    typed = {"lang": "en", "year": 2024, "score": 0.5, "draft": False, "tags": ("x", "y"), "at": Timestamp(1_700_000_000_000_000)}
    multi = [Chunk(f"m#{i}", "m", i, f"part {i} of m", "M", typed, i * 10, i * 10 + 9) for i in range(3)]
    korean = Chunk("k#0", "k", 0, "한국어 본문입니다 \u2028 \"quoted\"", "제목", {"분류": "금융"}, 0, 20)
    batch = multi + chunks("a", "b") + [korean]
    vectors = unit(len(batch) + 1, seed=7)
    # A document that already has chunks gets one more (ids and metadata merge into its RefDocInfo).
    later = Chunk("m#3", "m", 3, "part 3 of m", "M", {"lang": "de"}, 30, 39)
    ours = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    ours.add(batch, vectors[:-1])
    ours.add([later], vectors[-1:])
    upstream = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    upstream.index.insert_nodes([_to_node(c, v) for c, v in zip(batch, vectors[:-1].tolist())])
    upstream.index.insert_nodes([_to_node(later, vectors[-1].tolist())])

    for collection in ("docstore/data", "docstore/metadata", "docstore/ref_doc_info"):
        assert ours.kvstore.get_all(collection) == upstream.kvstore.get_all(collection), collection
    assert ours.chunk_ids_of("m") == ["m#0", "m#1", "m#2", "m#3"]
    assert ours.get_nodes(["k#0"])[0].hash == _to_node(korean, None).hash
    assert ours.index.index_struct.nodes_dict == upstream.index.index_struct.nodes_dict
    assert [s.chunk_id for s in ours.search(vectors[1], k=1)] == ["m#1"]


def test_a_snapshot_with_upstreams_id_map_loads_the_same_maps(tmp_path):
    """Snapshots written before node_ids.json hold LlamaIndex's id_map.json (both maps as JSON objects)."""
    import os

    from llama_index.vector_stores.faiss import FaissMapVectorStore

    from searchsvc.storage.embedded.dense import NODE_IDS_FILE, FilterableFaissStore

    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    dense.add(chunks("a", "b", "c"), unit(3, seed=1))
    dense.remove(["b#0"])
    ours, upstream = tmp_path / "ours", tmp_path / "upstream"
    for path in (ours, upstream):
        path.mkdir()
    dense.store.persist(str(ours / "default__vector_store.json"))
    # Upstream's format, as a snapshot written before NODE_IDS_FILE holds it (upstream keeps a reverse dict).
    dense.store._faiss_id_to_node_id_map = {i: n for i, n in zip(dense.store._ids().tolist(), dense.store._node_at) if n}
    FaissMapVectorStore.persist(dense.store, str(upstream / "default__vector_store.json"))
    dense.store._faiss_id_to_node_id_map = None
    assert (ours / NODE_IDS_FILE).exists() and not (upstream / NODE_IDS_FILE).exists()
    for path in (ours, upstream):
        loaded = FilterableFaissStore.from_persist_path(str(path / "default__vector_store.json"))
        assert loaded._node_id_to_faiss_id_map == dense.store._node_id_to_faiss_id_map == {"a#0": 0, "c#0": 2}
        assert loaded._node_at == dense.store._node_at == ["a#0", "c#0"]  # flat: the deleted row is gone
        assert loaded._next_id == 3 and os.path.exists(path / "default__vector_store.json")


def test_a_snapshot_with_an_idmap2_loads_without_its_reverse_map_and_answers_the_same(tmp_path):
    """Snapshots written before IndexIDMap replaced IndexIDMap2 hold an IDMap2 (with a hash map of every id); the
    store swaps it for a plain IDMap over the same rows and ids, and every query, read and delete still works."""
    import faiss
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from searchsvc.storage.embedded.dense import FilterableFaissStore

    vectors = unit(6, seed=3)
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    dense.add(chunks("a", "b", "c", "d", "e", "f"), vectors)
    dense.remove(["b#0"])
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))  # what the same writes produced before
    old.add_with_ids(np.delete(vectors, 1, axis=0), np.asarray([0, 2, 3, 4, 5], dtype=np.int64))
    dense.store._faiss_index = old
    dense.persist(tmp_path / "snap")
    assert isinstance(faiss.read_index(str(tmp_path / "snap" / "default__vector_store.json")), faiss.IndexIDMap2)

    loaded = FilterableFaissStore.from_persist_dir(str(tmp_path / "snap"))
    index = loaded._faiss_index
    assert type(index) is faiss.IndexIDMap and index.ntotal == 5
    assert faiss.vector_to_array(index.id_map).tolist() == [0, 2, 3, 4, 5]
    for row, query in enumerate(vectors):
        found = loaded.query(VectorStoreQuery(query_embedding=query.tolist(), similarity_top_k=2))
        expect = ["a#0", "b#0", "c#0", "d#0", "e#0", "f#0"]
        exact = sorted((i for i in range(6) if i != 1), key=lambda i: -float(vectors[i] @ query))[:2]
        assert found.ids == [expect[i] for i in exact], row
    np.testing.assert_array_equal(loaded.vectors(["f#0", "a#0"]), vectors[[5, 0]])
    loaded.delete_nodes(["c#0"])
    assert loaded._node_at == ["a#0", "d#0", "e#0", "f#0"] and faiss.vector_to_array(index.id_map).tolist() == [0, 3, 4, 5]
    np.testing.assert_array_equal(loaded.vectors(["d#0"]), vectors[[3]])


def test_the_index_structs_node_map_is_a_view_of_the_vector_store():
    """IndexDict.nodes_dict maps each node id to itself for this store; it answers from the FAISS store's own
    map (no second copy), so LlamaIndex's own retriever still turns vector ids into nodes."""
    from searchsvc.storage.embedded.dense import StoreNodeIds

    vectors = unit(3, seed=4)
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    dense.add(chunks("a", "b", "c"), vectors)
    dense.remove(["b#0"])
    nodes = dense.index.index_struct.nodes_dict
    assert isinstance(nodes, StoreNodeIds) and dict(nodes) == {"a#0": "a#0", "c#0": "c#0"}
    assert "b#0" not in nodes and len(nodes) == 2
    retrieved = dense.index.as_retriever(similarity_top_k=1).retrieve(
        __import__("llama_index.core.schema", fromlist=["QueryBundle"]).QueryBundle("", embedding=vectors[2].tolist()))
    assert [r.node.node_id for r in retrieved] == ["c#0"] and retrieved[0].node.text == "text of c"


def test_the_writers_other_work_runs_while_faiss_inserts_and_sees_the_new_ids():
    """DenseIndex.add's `meanwhile` runs on the writer's thread while FAISS inserts on another, and can read the
    new chunks' FAISS ids (the collection files its metadata postings under them)."""
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, DenseIndexSpec(kind="hnsw"))
    seen = {}

    def meanwhile():
        seen["thread"] = threading.current_thread()
        seen["ids"] = dense.faiss_ids(["a#0", "b#0"])

    dense.add(chunks("a", "b"), unit(2, seed=1), meanwhile=meanwhile)
    assert seen["thread"] is threading.current_thread()
    assert seen["ids"] == {"a#0": 0, "b#0": 1}
    assert [s.chunk_id for s in dense.search(unit(2, seed=1)[1], 1)] == ["b#0"]


def test_a_failed_batch_leaves_the_id_list_parallel_to_faiss_rows():
    """If the other work fails, FAISS still holds the vectors and the ids stay booked (rows and ids parallel);
    if FAISS refuses the vectors, nothing is booked. Either way later writes and searches line up."""
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM)
    vectors = unit(4, seed=2)
    with pytest.raises(OSError, match="disk full"):
        dense.add(chunks("a"), vectors[:1], meanwhile=lambda: (_ for _ in ()).throw(OSError("disk full")))
    assert dense.faiss_ids(["a#0"]) == {"a#0": 0} and dense.store._faiss_index.ntotal == 1
    with pytest.raises(ValueError, match="dimension"):  # vectors of another dimension
        dense.store.add_vectors(["b#0"], np.ones((1, DIM + 1), np.float32), meanwhile=lambda: None)
    assert dense.faiss_ids(["b#0"]) == {} and dense.store._faiss_index.ntotal == 1 and dense.store._next_id == 1
    dense.add(chunks("c"), vectors[2:3])
    assert dense.faiss_ids(["c#0"]) == {"c#0": 1}
    assert [s.chunk_id for s in dense.search(vectors[2], 1)] == ["c#0"]
    assert [s.chunk_id for s in dense.search(vectors[0], 1)] == ["a#0"]
