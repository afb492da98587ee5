"""The dense leg on a FAISS HNSW graph: deletes and replacements through tombstones, compaction, "auto" turning a
flat index into a graph, filtered and exact searches, and all of it surviving persist and load. Checked against
an exact cosine ranking computed here."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from searchsvc.domain.types import Chunk
from searchsvc.retrieve.external import ExternalEmbedding
from searchsvc.storage.embedded import dense as dense_module
from searchsvc.storage.embedded.dense import DenseIndex, DenseIndexSpec, FilterableFaissStore

DIM = 16
HNSW = DenseIndexSpec(kind="hnsw", m=16, ef_construction=64, ef_search=256)


def chunks(ids) -> list[Chunk]:
    return [Chunk(f"{i}#0", i, 0, f"text of {i}", "", {}, 0, 10) for i in ids]


def unit(rows: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Reference:
    """What the index should hold: chunk id -> vector, ranked exactly."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}

    def top(self, query: np.ndarray, k: int, allowed=None) -> list[str]:
        ids = [c for c in self.vectors if allowed is None or c in allowed]
        scores = {c: float(self.vectors[c] @ query) for c in ids}
        return sorted(scores, key=lambda c: -scores[c])[:k]


def add(dense: DenseIndex, ref: Reference, names, seed: int) -> None:
    vectors = unit(len(names), seed)
    dense.add(chunks(names), vectors)
    ref.vectors.update({f"{n}#0": v for n, v in zip(names, vectors)})


def remove(dense: DenseIndex, ref: Reference, names) -> None:
    dense.remove([f"{n}#0" for n in names])
    for n in names:
        ref.vectors.pop(f"{n}#0")


def recall(dense: DenseIndex, ref: Reference, queries: np.ndarray, k: int = 10, **kw) -> float:
    found = [set(s.chunk_id for s in dense.search(q, k, **kw)) for q in queries]
    return float(np.mean([len(f & set(ref.top(q, k))) / k for f, q in zip(found, queries)]))


def test_hnsw_with_deletes_and_replacements_matches_the_exact_ranking(tmp_path):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, HNSW)
    ref = Reference()
    assert dense.kind == "hnsw"
    add(dense, ref, [f"d{i}" for i in range(1500)], seed=1)
    remove(dense, ref, [f"d{i}" for i in range(0, 200)])  # 13%: tombstones, below the compaction share
    assert dense.store._tombstones and dense.store.rows == 1500
    dense.build_all()
    add(dense, ref, [f"d{i}" for i in range(200, 300)], seed=2)  # replacements: same ids, new vectors (pending a while)
    queries = unit(40, seed=3)
    for q in queries:
        hits = [s.chunk_id for s in dense.search(q, 10)]
        assert set(hits) <= ref.vectors.keys(), "no deleted or replaced vector comes back"
    assert recall(dense, ref, queries) >= 0.97
    # A replaced chunk is found by its new vector, at cosine 1.
    new = ref.vectors["d250#0"]
    top = dense.search(new, 1)[0]
    assert top.chunk_id == "d250#0" and top.score == pytest.approx(1.0, abs=1e-5)
    assert dense.similarities(new, ["d250#0"])["d250#0"] == pytest.approx(1.0, abs=1e-5)

    dense.persist(tmp_path / "snap")
    loaded = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), HNSW, kvstore=dense.kvstore)
    assert loaded.kind == "hnsw" and loaded.store._tombstones == dense.store._tombstones
    assert recall(loaded, ref, queries) == pytest.approx(recall(dense, ref, queries))
    add(loaded, ref, ["late"], seed=4)  # ids after a reload never reuse a tombstone's
    assert loaded.search(ref.vectors["late#0"], 1)[0].chunk_id == "late#0"
    assert set(s.chunk_id for s in loaded.search(ref.vectors["late#0"], 50)) <= ref.vectors.keys()


def test_tombstones_are_compacted_away():
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, HNSW)
    ref = Reference()
    add(dense, ref, [f"d{i}" for i in range(1000)], seed=1)
    remove(dense, ref, [f"d{i}" for i in range(150)])
    assert len(dense.store._tombstones) == 150
    remove(dense, ref, [f"d{i}" for i in range(150, 250)])  # 25% of the graph: rebuilt without them
    assert not dense.store._tombstones and dense.store._faiss_index.ntotal == 750 and dense.kind == "hnsw"
    queries = unit(30, seed=5)
    assert recall(dense, ref, queries) >= 0.97
    add(dense, ref, ["after"], seed=6)
    assert dense.search(ref.vectors["after#0"], 1)[0].chunk_id == "after#0"


def test_auto_turns_flat_into_hnsw_at_the_threshold(monkeypatch, tmp_path):
    monkeypatch.setattr(dense_module, "AUTO_HNSW_MIN_CHUNKS", 300)
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, DenseIndexSpec(kind="auto", m=16, ef_construction=64, ef_search=256))
    ref = Reference()
    add(dense, ref, [f"d{i}" for i in range(299)], seed=1)
    assert dense.kind == "flat"
    remove(dense, ref, ["d5"])
    add(dense, ref, ["d299", "d300"], seed=2)
    assert dense.kind == "hnsw" and dense.store.rows == 300
    queries = unit(30, seed=3)
    assert recall(dense, ref, queries) >= 0.97
    assert dense.search(ref.vectors["d7#0"], 1)[0].chunk_id == "d7#0"
    dense.persist(tmp_path / "snap")
    assert DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), dense.spec, kvstore=dense.kvstore).kind == "hnsw"


def test_flat_stays_flat_and_exact(monkeypatch):
    monkeypatch.setattr(dense_module, "AUTO_HNSW_MIN_CHUNKS", 10)
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, DenseIndexSpec(kind="flat"))
    ref = Reference()
    add(dense, ref, [f"d{i}" for i in range(50)], seed=1)
    assert dense.kind == "flat"
    assert recall(dense, ref, unit(10, seed=2)) == 1.0


def test_filtered_and_exact_searches_on_hnsw_are_exact():
    # A tiny graph with a tiny beam misses neighbours; the exact paths must not.
    spec = DenseIndexSpec(kind="hnsw", m=4, ef_construction=8, ef_search=1)
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, spec)
    ref = Reference()
    add(dense, ref, [f"d{i}" for i in range(2000)], seed=1)
    remove(dense, ref, [f"d{i}" for i in range(100)])
    dense.build_all()  # pending rows are searched exactly: the graph alone must be poor here
    queries = unit(20, seed=2)
    assert recall(dense, ref, queries) < 0.9, "this graph is deliberately poor"
    assert recall(dense, ref, queries, exact=True) == 1.0
    assert recall(dense, ref, queries, ef_search=2000) > recall(dense, ref, queries), "a wider beam finds more"
    allowed = {f"d{i}#0" for i in range(50, 400)}  # includes deleted ids: they must not come back
    for q in queries:
        hits = [s.chunk_id for s in dense.search(q, 10, allowed)]
        assert hits == ref.top(q, 10, allowed)


def test_a_store_persisted_before_hnsw_loads_as_flat(tmp_path):
    store = FilterableFaissStore.new(DIM)
    assert not store.is_hnsw
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, DenseIndexSpec(kind="flat"))
    ref = Reference()
    add(dense, ref, ["a", "b", "c"], seed=1)
    remove(dense, ref, ["b"])
    dense.persist(tmp_path / "snap")
    loaded = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), kvstore=dense.kvstore)  # default spec: auto
    assert loaded.kind == "flat" and not loaded.store._tombstones and loaded.store._next_id == 3


def test_sq8_quantizes_the_graph_once_trained_and_keeps_deletes_filters_and_persistence(monkeypatch, tmp_path):
    monkeypatch.setattr(dense_module, "AUTO_HNSW_MIN_CHUNKS", 600)
    spec = DenseIndexSpec(kind="hnsw", m=16, ef_construction=64, ef_search=256, quantization="sq8")
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, spec)
    ref = Reference()
    add(dense, ref, [f"d{i}" for i in range(599)], seed=1)
    assert dense.kind == "hnsw", "nothing to train the quantizer on yet: a float graph"
    add(dense, ref, ["d599", "d600"], seed=2)
    assert dense.kind == "hnsw+sq8" and dense.store.is_quantized
    add(dense, ref, [f"d{i}" for i in range(601, 1500)], seed=3)
    remove(dense, ref, [f"d{i}" for i in range(100)])
    add(dense, ref, [f"d{i}" for i in range(100, 150)], seed=4)  # replacements
    queries = unit(40, seed=5)
    for q in queries:
        assert set(s.chunk_id for s in dense.search(q, 10)) <= ref.vectors.keys()
    assert recall(dense, ref, queries) >= 0.9  # 8 bits per dimension: near, not equal, to the float ranking
    assert recall(dense, ref, queries, exact=True) >= 0.9
    allowed = {f"d{i}#0" for i in range(50, 400)}
    for q in queries[:10]:
        assert set(s.chunk_id for s in dense.search(q, 10, allowed)) <= allowed & ref.vectors.keys()
    # Vectors read back (cosines of keyword-only hits) are the decoded codes: within a quantization step.
    back = dense.store.vectors(["d700#0", "d120#0"])
    assert np.abs(back - np.stack([ref.vectors["d700#0"], ref.vectors["d120#0"]])).max() < 0.02
    top = dense.search(ref.vectors["d120#0"], 1)[0]
    assert top.chunk_id == "d120#0" and top.score == pytest.approx(1.0, abs=0.01)

    dense.persist(tmp_path / "snap")
    loaded = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), spec, kvstore=dense.kvstore)
    assert loaded.kind == "hnsw+sq8" and loaded.store._tombstones == dense.store._tombstones
    assert recall(loaded, ref, queries) == pytest.approx(recall(dense, ref, queries))
    remove(loaded, ref, [f"d{i}" for i in range(150, 500)])  # past COMPACT_AT: rebuilt from decoded vectors
    assert not loaded.store._tombstones and loaded.kind == "hnsw+sq8"
    assert recall(loaded, ref, queries) >= 0.9


def test_sq8_makes_the_graph_smaller():
    vectors = unit(3000, seed=1)
    ids = np.arange(3000, dtype=np.int64)
    plain, sq8 = DenseIndexSpec(kind="hnsw", m=16), DenseIndexSpec(kind="hnsw", m=16, quantization="sq8")
    sizes = []
    for graph in (plain.new_hnsw(DIM), sq8.new_hnsw(DIM, training=vectors)):
        graph.add_with_ids(vectors, ids)
        sizes.append(len(faiss.serialize_index(graph)))
    assert sizes[1] < sizes[0] - 3000 * DIM * 2, "one byte per dimension instead of four"


# ---------------------------------------------------------------- through the API
import grpc  # noqa: E402
from conftest import field_violation  # noqa: E402

from conftest import ServerProcess, ids, index, search  # noqa: E402
from searchsvc.v1 import searchsvc_pb2 as pb  # noqa: E402

API_DIM = 8


def test_the_dense_index_config_is_filled_and_reported(stub):
    stub.CreateCollection(pb.CreateCollectionRequest(name="dense-default", config=pb.CollectionConfig(embedding_model="external", dimension=API_DIM)))
    stub.CreateCollection(pb.CreateCollectionRequest(name="dense-hnsw", config=pb.CollectionConfig(
        embedding_model="external", dimension=API_DIM, dense_index=pb.DenseIndexConfig(kind="hnsw", m=8, quantization="sq8"))))
    try:
        default = stub.GetCollection(pb.GetCollectionRequest(name="dense-default"))
        assert default.config.dense_index == pb.DenseIndexConfig(kind="auto", m=32, ef_construction=80, ef_search=256, quantization="none")
        assert default.dense_index_in_use == "flat"
        hnsw = stub.GetCollection(pb.GetCollectionRequest(name="dense-hnsw"))
        assert (hnsw.config.dense_index.kind, hnsw.config.dense_index.m, hnsw.dense_index_in_use) == ("hnsw", 8, "hnsw")
        assert hnsw.config.dense_index.quantization == "sq8"  # the graph is quantized once 20,000 chunks train it
    finally:
        for name in ("dense-default", "dense-hnsw"):
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


@pytest.mark.parametrize(
    "dense_index, field",
    [(pb.DenseIndexConfig(kind="ivf"), "config.dense_index.kind"),
     (pb.DenseIndexConfig(kind="hnsw", m=2), "config.dense_index.m"),
     (pb.DenseIndexConfig(ef_construction=5000), "config.dense_index.ef_construction"),
     (pb.DenseIndexConfig(ef_search=5000), "config.dense_index.ef_search"),
     (pb.DenseIndexConfig(quantization="pq"), "config.dense_index.quantization"),
     (pb.DenseIndexConfig(kind="flat", quantization="sq8"), "config.dense_index.quantization")],
)
def test_bad_dense_index_config_is_rejected_by_field(stub, dense_index, field):
    config = pb.CollectionConfig(embedding_model="external", dimension=API_DIM, dense_index=dense_index)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="dense-bad", config=config))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == field


def test_hnsw_collection_survives_deletes_restart_and_kill9(tmp_path):
    rng = np.random.default_rng(11)
    vectors = {f"v{i}": rng.standard_normal(API_DIM).astype(np.float32) for i in range(300)}

    def docs(names):
        return [pb.Document(id=n, text=f"document {n}", vector=vectors[n].tolist()) for n in names]

    def check(stub, live):
        for n in ("v0", "v150", "v299"):
            hit = search(stub, "g", "", mode=pb.SEARCH_MODE_DENSE, query_vector=vectors[n].tolist(), top_k=5)
            assert set(ids(hit)) <= live
            if n in live:
                assert ids(hit)[0] == n
        exact = search(stub, "g", "", mode=pb.SEARCH_MODE_DENSE, query_vector=vectors["v1"].tolist(), top_k=10,
                       dense=pb.DenseSearchOptions(exact=True))
        wide = search(stub, "g", "", mode=pb.SEARCH_MODE_DENSE, query_vector=vectors["v1"].tolist(), top_k=10,
                      dense=pb.DenseSearchOptions(ef_search=1000))
        assert ids(exact) == ids(wide)

    config = pb.CollectionConfig(embedding_model="external", dimension=API_DIM, dense_index=pb.DenseIndexConfig(kind="hnsw", m=8))
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        stub.CreateCollection(pb.CreateCollectionRequest(name="g", config=config))
        index(stub, "g", docs(list(vectors)[:200]), batch_size=50)
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="g", ids=["v0", "v1", "v2"]))
        with pytest.raises(grpc.RpcError) as err:
            search(stub, "g", "", mode=pb.SEARCH_MODE_DENSE, query_vector=vectors["v3"].tolist(), dense=pb.DenseSearchOptions(ef_search=5000))
        assert field_violation(err.value) == "dense.ef_search"
        server.stop()  # a checkpoint: the graph is written with its tombstones
    live = set(vectors) - {"v0", "v1", "v2"} - {f"v{i}" for i in range(200, 300)}
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        check(stub, live)
        index(stub, "g", docs(list(vectors)[200:]), batch_size=50)
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="g", ids=["v150"]))
        server.kill9()  # what came after the checkpoint comes back from the WAL
    live = set(vectors) - {"v0", "v1", "v2", "v150"}
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        assert stub.GetCollection(pb.GetCollectionRequest(name="g")).dense_index_in_use == "hnsw"
        check(stub, live)
