"""`python -m searchsvc.lab.bench.segments [N]`: what splitting a dense index into HNSW segments would cost searches
(issue 41's segments are not built yet; this measures the design's premise on bare FAISS).

N clustered 384-d vectors (the scale bench's ClusteredVectors), indexed as one HNSW graph (M 32,
efConstruction 80) and as 3 and 6 equal segments. Each layout answers 500 unseen queries: every segment is
searched and the hits merged by score. Printed: recall@10 against an exact scan and search p50/p99 at efSearch
64 and 256; and the insert rate of one 50k segment on one OpenMP thread and on all cores (a background builder
capped at one core runs at the first).
"""

from __future__ import annotations

import sys
import time

import faiss
import numpy as np

from faiss.contrib.evaluation import knn_intersection_measure

from searchsvc.lab.bench.workload import ClusteredVectors
from searchsvc.platform import hardware
from searchsvc.storage.embedded.dense import DenseIndexSpec

QUERIES, K = 500, 10


def graph(vectors: np.ndarray, first_id: int) -> faiss.IndexIDMap:
    """A graph as the collection builds one (its default HNSW settings); searches pass their own efSearch."""
    index = DenseIndexSpec().new_hnsw(vectors.shape[1])
    index.add_with_ids(vectors, np.arange(first_id, first_id + len(vectors), dtype=np.int64))
    return index


def insert_rate(vectors: np.ndarray, threads: int) -> float:
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        started = time.perf_counter()
        graph(vectors, 0)
        return len(vectors) / (time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(previous)


def search(segments: list[faiss.IndexIDMap], queries: np.ndarray, ef: int) -> tuple[np.ndarray, list[float]]:
    params = faiss.SearchParametersHNSW(efSearch=ef)
    found, times = [], []
    for q in queries:
        started = time.perf_counter()
        scores, ids = zip(*(s.search(q[np.newaxis, :], K, params=params) for s in segments))
        scores, ids = np.concatenate([s[0] for s in scores]), np.concatenate([i[0] for i in ids])
        top = np.argsort(-scores)[:K]
        times.append(time.perf_counter() - started)
        found.append(ids[top])
    return np.asarray(found), times


def main(n: int) -> None:
    print(f"{n:,} clustered 384-d vectors, HNSW M {DenseIndexSpec.m} / efConstruction {DenseIndexSpec.ef_construction}; {hardware.describe()}; "
          f"{faiss.omp_get_max_threads()} OpenMP threads", flush=True)
    clusters = ClusteredVectors(384, seed=0)
    data, queries = clusters.sample(n), clusters.sample(QUERIES)
    _, exact = faiss.knn(queries, data, K, metric=faiss.METRIC_INNER_PRODUCT)
    sample = data[: min(50_000, n)]
    print(f"insert rate, one {len(sample):,}-vector segment: {insert_rate(sample, 1):,.0f}/s on 1 thread, "
          f"{insert_rate(sample, faiss.omp_get_max_threads()):,.0f}/s on {faiss.omp_get_max_threads()}", flush=True)
    print(f"{'layout':<22}{'build s':>8}" + "".join(f"{f'R@10 ef {ef}':>12}{'p50 ms':>8}{'p99 ms':>8}" for ef in (64, 256)), flush=True)
    for parts in (1, 3, 6):
        started = time.perf_counter()
        bounds = np.linspace(0, n, parts + 1).astype(int)
        segments = [graph(data[a:b], a) for a, b in zip(bounds, bounds[1:])]
        built = time.perf_counter() - started
        row = f"{f'{parts} x {n // parts:,}':<22}{built:>8.0f}"
        for ef in (64, 256):
            found, times = search(segments, queries, ef)
            recall = knn_intersection_measure(found, exact)
            row += f"{recall:>12.3f}{1000 * np.percentile(times, 50):>8.2f}{1000 * np.percentile(times, 99):>8.2f}"
        print(row, flush=True)
        del segments


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000)
