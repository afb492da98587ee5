"""The HNSW store's pending rows (pending.py): acked vectors that the graph does not hold yet. A search over a
graph and its pending rows must answer as an exact scan would where the graph is exact, whatever share of the
rows is pending, with deletes, replacements and filters on either side; the rows keep their order and ids as the
graph builder moves them."""

from __future__ import annotations

import numpy as np
import pytest

from searchsvc.domain.types import Chunk
from searchsvc.retrieve.external import ExternalEmbedding
from searchsvc.storage.embedded import pending as pending_module
from searchsvc.storage.embedded.dense import DenseIndex, DenseIndexSpec
from searchsvc.storage.embedded.pending import PendingRows

DIM = 12
# A beam as wide as the collection: the graph's part of each answer is exact, so any difference is the merge's.
EXACT_GRAPH = DenseIndexSpec(kind="hnsw", m=16, ef_construction=200, ef_search=2000)


def unit(rows: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_rows_append_at_the_end_leave_from_the_front_and_free_whole_blocks(monkeypatch):
    monkeypatch.setattr(pending_module, "BLOCK_ROWS", 4)
    rows = PendingRows(DIM)
    vectors = unit(11, seed=1)
    rows.append(np.arange(0, 6), vectors[:6])
    rows.append(np.arange(6, 11), vectors[6:])
    assert len(rows) == 11 and len(rows._vectors) == 3
    ids, head = rows.head(100)
    assert ids.tolist() == [0, 1, 2, 3]  # at most one block's rows at a time
    rows.drop(3)
    assert len(rows) == 8 and rows.ids().tolist() == list(range(3, 11)) and len(rows._vectors) == 3
    rows.drop(1)
    assert len(rows._vectors) == 2, "a block the graph took whole is freed"
    np.testing.assert_array_equal(rows.vectors_at(np.array([0, 4, 6])), vectors[[4, 8, 10]])
    np.testing.assert_allclose(rows.scores(vectors[9]), vectors[4:] @ vectors[9], rtol=1e-6)
    assert rows.rows_of(np.array([4, 10])).tolist() == [0, 6]
    with pytest.raises(ValueError, match="ascend"):
        rows.append(np.array([5]), vectors[:1])
    rows.drop(7)
    assert len(rows) == 0 and rows.ids().tolist() == [] and not rows._vectors


@pytest.mark.parametrize("in_graph", [0, 300, 700, 1000])
def test_a_search_over_graph_and_pending_rows_is_the_exact_ranking(no_background_builds, in_graph):
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, EXACT_GRAPH)
    vectors = {f"d{i}#0": v for i, v in enumerate(unit(1000, seed=2))}
    names = list(vectors)
    dense.add([Chunk(n, n[:-2], 0, "", "", {}, 0, 0) for n in names], np.stack(list(vectors.values())))
    while dense.store._faiss_index.ntotal < in_graph:
        dense.build_step(seconds=1e-9)  # one row a step after the first: the graph holds about `in_graph`
    assert dense.backlog == 1000 - dense.store._faiss_index.ntotal
    # deletes and replacements on both sides of the boundary (tombstones in the graph and among pending rows)
    gone = [names[i] for i in range(0, 1000, 7)]
    dense.remove(gone)
    for n in gone:
        vectors.pop(n)
    replaced = {names[i]: v for i, v in zip(range(3, 1000, 50), unit(20, seed=3))}
    dense.add([Chunk(n, n[:-2], 0, "", "", {}, 0, 0) for n in replaced], np.stack(list(replaced.values())))
    vectors.update(replaced)

    def exact(query, k, allowed=None):
        scored = sorted(((float(v @ query), n) for n, v in vectors.items() if allowed is None or n in allowed), reverse=True)
        return [n for _, n in scored[:k]]

    allowed = set(names[100:600])
    for query in unit(15, seed=4):
        assert [s.chunk_id for s in dense.search(query, 10)] == exact(query, 10)
        assert [s.chunk_id for s in dense.search(query, 10, allowed)] == exact(query, 10, allowed)
        excluded = np.asarray(list(dense.faiss_ids(names[:500]).values()), dtype=np.int64)
        assert [s.chunk_id for s in dense.search(query, 10, excluded_ids=excluded)] == exact(query, 10, set(names[500:]))
        assert [s.chunk_id for s in dense.search(query, 10, exact=True)] == exact(query, 10)
    top = next(iter(replaced))
    assert dense.search(replaced[top], 1)[0].chunk_id == top
    assert dense.similarities(replaced[top], [top])[top] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(dense.stored_vectors([top])[top], replaced[top])
    ids_before = dense.faiss_ids(list(vectors))
    dense.build_all()
    assert dense.backlog == 0 and dense.faiss_ids(list(vectors)) == ids_before  # moving rows changes no id
    for query in unit(5, seed=5):
        assert [s.chunk_id for s in dense.search(query, 10)] == exact(query, 10)


def test_the_graph_builder_waits_while_a_collection_is_written_and_its_backlog_is_small(monkeypatch):
    import time

    from searchsvc.storage.embedded import graph_builder

    builder = graph_builder.GraphBuilder()  # its own thread: the test controls when the collection was written
    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, EXACT_GRAPH)
    dense.background = False
    dense.add([Chunk(f"d{i}#0", f"d{i}", 0, "", "", {}, 0, 0) for i in range(300)], unit(300, seed=6))
    dense.last_write = time.monotonic() + 3600  # written "now" for an hour
    builder.wake(dense)
    time.sleep(0.3)
    assert dense.backlog == 300, "the graph waited while the collection was being written"
    monkeypatch.setattr(graph_builder, "YIELD_TO_WRITES_BELOW", 200)  # a backlog too large to keep scanning
    deadline = time.monotonic() + 10
    while dense.backlog >= 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dense.backlog < 200, "a large backlog is built while the collection is written"
    dense.last_write = 0.0  # the writes stopped: the rest goes in
    builder.wake(dense)
    while dense.backlog and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dense.backlog == 0 and dense.store._faiss_index.ntotal == 300


def test_a_search_scans_pending_rows_without_the_lock_and_leaves_out_a_hit_deleted_meanwhile(monkeypatch, no_background_builds):
    import threading

    from searchsvc.storage.embedded import dense as dense_module

    dense = DenseIndex.create(ExternalEmbedding(dimension=DIM), DIM, EXACT_GRAPH)
    vectors = unit(200, seed=7)
    dense.add([Chunk(f"d{i}#0", f"d{i}", 0, "", "", {}, 0, 0) for i in range(200)], vectors)
    scan = dense_module._pending_top

    def scanning(*args, **kwargs):
        # a writer deletes the best hit while the pending rows are scanned: it would wait forever for a held lock
        writer = threading.Thread(target=dense.remove, args=(["d3#0"],))
        writer.start()
        writer.join(5)
        assert not writer.is_alive(), "the scan held the index lock"
        return scan(*args, **kwargs)

    monkeypatch.setattr(dense_module, "_pending_top", scanning)
    hits = [h.chunk_id for h in dense.search(vectors[3], 5)]
    assert "d3#0" not in hits and len(hits) == 4  # found by the scan, gone by the time it was resolved
