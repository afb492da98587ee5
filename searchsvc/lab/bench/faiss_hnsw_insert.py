"""Benchmark: the bare FAISS HNSW insert, outside the service, on the vectors and settings of `searchsvc bench
--scale` (issue 15 asks for >= 5,000 docs/s through BulkIndex at 1M chunks).

    .venv/bin/python -m searchsvc.lab.bench.faiss_hnsw_insert [--total 1000000] [--m 32] [--ef-construction 80]

It builds the graph a collection builds (`DenseIndexSpec.new_hnsw`: IndexIDMap over IndexHNSWFlat, inner
product, the collection defaults unless overridden), adds `workload.ClusteredVectors(384)` in batches of 1,000
(the scale bench's BulkIndex request size) with FAISS's OpenMP threads (all cores), and prints for each tenth
the insert rate and the CPU per vector beside what the cores allow at 5,000 docs/s. At the end: recall@10 at
the collection's default efSearch against an exact scan, for 200 queries from the same distribution.

The service does more per document than this (the API, the WAL, the docstore, the keyword index), so this rate
is a ceiling for BulkIndex into an HNSW collection on the same machine.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from searchsvc.lab.bench.workload import ClusteredVectors
from searchsvc.platform import hardware
from searchsvc.storage.embedded.dense import DenseIndexSpec

DIMENSION, GOAL = 384, 5000
BATCH = 1000  # the scale bench's BulkIndex request size


class BareGraph:
    """The graph a collection builds (`DenseIndexSpec.new_hnsw`; the collection defaults unless `spec` says
    otherwise), fed vectors in this process, outside the service. Its insert rate at a size is the ceiling for
    BulkIndex into an HNSW collection of that size when the graph is built inline, as it was before the graph
    builder."""

    def __init__(self, spec: DenseIndexSpec | None = None) -> None:
        self.spec = spec or DenseIndexSpec()
        self.index = None

    def add(self, vectors: np.ndarray) -> tuple[float, float]:
        """(inserts/s, CPU ms per vector) for `vectors`, in the service's request-sized batches."""
        if self.index is None:  # SQ8 learns its ranges from the first vectors, as the service does at its switch
            self.index = self.spec.new_hnsw(vectors.shape[1], training=vectors)
        start = self.index.ntotal
        wall = cpu = 0.0
        for a in range(0, len(vectors), BATCH):
            batch = vectors[a : a + BATCH]
            started, cpu_started = time.perf_counter(), time.process_time()
            self.index.add_with_ids(batch, np.arange(start + a, start + a + len(batch), dtype=np.int64))
            wall += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
        return len(vectors) / wall, cpu / len(vectors) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--m", type=int, default=DenseIndexSpec.m)
    parser.add_argument("--ef-construction", type=int, default=DenseIndexSpec.ef_construction)
    args = parser.parse_args()
    graph = BareGraph(DenseIndexSpec(m=args.m, ef_construction=args.ef_construction))
    cores = os.cpu_count() or 1
    print(f"CPU flags: {hardware.describe()}; FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads; "
          f"HNSW M {graph.spec.m}, efConstruction {graph.spec.ef_construction}; at {GOAL:,} docs/s {cores} cores "
          f"allow {cores / GOAL * 1e3:.2f} ms of CPU per document", flush=True)
    vectors = ClusteredVectors(DIMENSION)
    kept = np.empty((args.total, DIMENSION), np.float32)  # for the exact scan at the end
    tenth = max(args.total // 10, 1)
    for start in range(0, args.total, tenth):
        batch = kept[start : start + tenth] = vectors.sample(min(tenth, args.total - start))
        rate, cpu_ms = graph.add(batch)
        print(f"  {start + len(batch):>9,} vectors: {rate:6.0f} inserts/s, {cpu_ms:.3f} ms CPU per vector "
              f"({rate * cpu_ms / 1e3:.2f} cores busy)", flush=True)
    queries = vectors.sample(200)
    _, truth = faiss.knn(queries, kept, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = graph.index.search(queries, 10)
    recall = knn_intersection_measure(found, truth)
    print(f"  recall@10 at efSearch {graph.spec.ef_search} against an exact scan: {recall:.3f}", flush=True)


if __name__ == "__main__":
    main()
