"""dense_index.target_recall (issue 41): efSearch calibrated on the collection's own vectors. A graph built cheaply
(M 4, efConstruction 16) over clustered vectors needs a wide beam for a high recall and little for a low one, so
the calibration must find different beam widths, and the recall it promises must hold for queries it never saw."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from conftest import field_violation, index
from searchsvc.domain.types import Chunk
from searchsvc.retrieve.external import ExternalEmbedding
from searchsvc.storage.embedded.dense import CALIBRATE_FROM, RECALIBRATE_GROWTH, DenseIndex, DenseIndexSpec, FilterableFaissStore
from searchsvc.storage.embedded.graph_builder import MAX_BATCH
from searchsvc.storage.embedded.recall import EF_LADDER, SAMPLE_QUERIES
from searchsvc.v1 import searchsvc_pb2 as pb

DIM = 32
CHEAP = dict(kind="hnsw", m=4, ef_construction=16, ef_search=16)


def clustered(rows: int, seed: int, centres: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(0).standard_normal((centres, DIM))  # the same clusters for every seed
    v = middle[rng.integers(0, centres, rows)] + 0.35 * rng.standard_normal((rows, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def held_out_recall(dense: DenseIndex, data: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :k]
    found = [{int(s.chunk_id.split("#")[0]) for s in dense.search(q, k)} for q in queries]
    return float(np.mean([len(f & set(e.tolist())) / k for f, e in zip(found, exact)]))


def build(target: float, data: np.ndarray) -> DenseIndex:
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, DenseIndexSpec(**CHEAP, target_recall=target))
    chunks = [Chunk(f"{i}#0", str(i), 0, "", "", {}, 0, 0) for i in range(len(data))]
    for start in range(0, len(data), 1000):
        dense.add(chunks[start : start + 1000], data[start : start + 1000])
    return dense


def test_the_calibrated_beam_reaches_the_target_on_queries_it_never_saw(tmp_path, no_background_builds):
    data, queries = clustered(8750, seed=1), clustered(300, seed=2)
    high, low = build(0.97, data), build(0.6, data)
    high.build_all()
    low.build_all()
    assert high.store.calibration.ef_search > low.store.calibration.ef_search  # different data needs, different beams
    for dense, target in ((high, 0.97), (low, 0.6)):
        calibration = dense.store.calibration
        # the last calibration: on the graph the drain left, with its last SAMPLE_QUERIES vectors as the queries
        assert calibration.vectors == 8750 - SAMPLE_QUERIES
        assert calibration.recall >= target and calibration.ef_search in EF_LADDER
        assert held_out_recall(dense, data, queries) >= target - 0.02
    # the rung below the calibrated one misses the target: the calibration took the least beam that reaches it
    below = EF_LADDER[EF_LADDER.index(high.store.calibration.ef_search) - 1]
    assert held_out_recall_at(high, data, queries, below) < 0.97
    high.persist(tmp_path / "snap")
    loaded = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), DenseIndexSpec(**CHEAP, target_recall=0.97),
                             kvstore=high.kvstore)
    assert loaded.store.calibration == high.store.calibration and loaded.store.ef_search == high.store.calibration.ef_search
    untargeted = DenseIndex.load(tmp_path / "snap", ExternalEmbedding(dimension=DIM), DenseIndexSpec(**CHEAP), kvstore=high.kvstore)
    assert untargeted.store.calibration is None and untargeted.store.ef_search == CHEAP["ef_search"]


def held_out_recall_at(dense: DenseIndex, data: np.ndarray, queries: np.ndarray, ef: int, k: int = 10) -> float:
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :k]
    found = [{int(s.chunk_id.split("#")[0]) for s in dense.search(q, k, ef_search=ef)} for q in queries]
    return float(np.mean([len(f & set(e.tolist())) / k for f, e in zip(found, exact)]))


def test_the_graph_builder_recalibrates_as_the_graph_grows_and_ignores_tombstones(monkeypatch, no_background_builds):
    data = clustered(4000, seed=3)
    dense = build(0.9, data[:1050])
    seen: list = []
    calibrated = FilterableFaissStore.calibrated

    def recording(store, target, queries, lock):
        # the queries are pending vectors, never the graph's own (those would flatter it: decision 0028)
        graph = {tuple(v) for v in store._vectors_at(np.arange(store._faiss_index.ntotal)).round(5).tolist()}
        assert not graph & {tuple(v) for v in queries.round(5).tolist()}
        seen.append(calibrated(store, target, queries, lock))
        return seen[-1]

    monkeypatch.setattr(FilterableFaissStore, "calibrated", recording)
    dense.build_all()
    assert not seen  # the graph reached CALIBRATE_FROM with fewer than MIN_QUERIES pending: a later backlog calibrates
    add(dense, data, 1050, 3000)
    dense.build_all()
    sizes = [c.vectors for c in seen]
    # as the graph grows by RECALIBRATE_GROWTH (less a step's batch), and once more on what the drain leaves
    assert sizes[0] >= CALIBRATE_FROM and sizes == sorted(sizes) and len(sizes) <= 7  # ~log1.25(3000 / 1,000) + 1
    assert all(b + MAX_BATCH >= RECALIBRATE_GROWTH * a for a, b in zip(sizes, sizes[1:-1]))
    assert sizes[-1] == 3000 - SAMPLE_QUERIES and dense.store.calibration == seen[-1]
    # a deleted vector is not an answer: calibrated() sees only live ids
    dense.remove([f"{i}#0" for i in range(100)], rebuild=False)
    again = calibrated(dense.store, 0.9, clustered(200, seed=6), dense._lock)
    assert again.vectors == 2900


def add(dense: DenseIndex, data: np.ndarray, start: int, end: int) -> None:
    dense.add([Chunk(f"{i}#0", str(i), 0, "", "", {}, 0, 0) for i in range(start, end)], data[start:end])


@pytest.mark.parametrize("dense_index, field", [
    (pb.DenseIndexConfig(kind="hnsw", target_recall=1.0), "config.dense_index.target_recall"),
    (pb.DenseIndexConfig(kind="hnsw", target_recall=-0.5), "config.dense_index.target_recall"),
    (pb.DenseIndexConfig(kind="flat", target_recall=0.9), "config.dense_index.target_recall"),
])
def test_a_bad_target_is_refused_with_its_field(stub, dense_index, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="bad-target", config=pb.CollectionConfig(dense_index=dense_index)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == field


def test_get_collection_reports_the_calibrated_beam(stub):
    config = pb.CollectionConfig(embedding_model="external", dimension=DIM, refresh_interval_ms=-1,
                                 dense_index=pb.DenseIndexConfig(kind="hnsw", m=4, ef_construction=16, target_recall=0.95))
    stub.CreateCollection(pb.CreateCollectionRequest(name="calibrated", config=config))
    try:
        before = stub.GetCollection(pb.GetCollectionRequest(name="calibrated"))
        assert before.dense_ef_search == 256 and before.dense_recall == 0  # not calibrated below 1,000 vectors
        assert before.config.dense_index.target_recall == pytest.approx(0.95)
        data = clustered(2000, seed=5)
        index(stub, "calibrated", [pb.Document(id=str(i), text=f"doc {i}", vector=v.tolist()) for i, v in enumerate(data)],
              batch_size=500)
        after = stub.GetCollection(pb.GetCollectionRequest(name="calibrated"))
        for _ in range(200):  # the graph builder inserts in the background; searches meanwhile scan its backlog
            if not after.dense_backlog:
                break
            time.sleep(0.05)
            after = stub.GetCollection(pb.GetCollectionRequest(name="calibrated"))
        assert after.dense_backlog == 0
        assert after.dense_ef_search in EF_LADDER and after.dense_recall >= 0.95
    finally:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="calibrated"))
