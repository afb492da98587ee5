"""HNSW's efSearch calibrated to a recall target on the collection's own vectors (dense_index.target_recall).

The queries are vectors of the collection that the graph does not hold yet: the oldest pending vectors, before
the graph builder inserts them, or a compaction's newest vectors before they are added. Vectors the graph already holds flatter it:
the search reaches the query's own node, whose links lead straight to its neighbours. On the scale bench's
clusters (100k) 256 stored vectors as queries, each left out of its own answers, gave recall@10 0.957 at
efSearch 10, where 1,000 unseen vectors of the same distribution gave 0.852.

Recall at a given efSearch depends on the data (the same graph settings gave recall@10 0.972 on the scale bench's
clusters and 0.912 on other clustered vectors), so a fixed efSearch cannot promise one. FAISS's autotuning
(`ParameterSpace.explore`) searches a parameter grid for a whole operating-point curve against a criterion
object; the question here is smaller (the least efSearch whose recall@10 reaches a target), so the loop is
written here: exact top-k of a sample by blocked matrix products, then a bisection over a ladder of beam widths,
assuming recall grows with efSearch (HNSW's beam only widens).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from searchsvc.domain.types import MAX_EF_SEARCH

log = logging.getLogger(__name__)
K = 10  # recall@10, as the issue and the bench measure it
SAMPLE_QUERIES = 256  # at most; a sample of the unseen vectors offered
MIN_QUERIES = 100  # fewer unseen vectors (a small write) wait for a larger write
# Beam widths tried, least first (each about 1.5x the last): the answer is the first that reaches the target.
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, MAX_EF_SEARCH)
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    target: float  # the recall@10 asked for
    ef_search: int  # the least efSearch on the ladder reaching it (the ladder's last if none did)
    recall: float  # mean recall@10 of the sample at ef_search
    vectors: int  # live vectors in the graph when measured

    def write(self, directory: Path) -> None:
        (directory / CALIBRATION_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, directory: Path) -> "Calibration | None":
        path = directory / CALIBRATION_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


def calibrate(
    graph: Any, queries: np.ndarray, positions: np.ndarray, ids: np.ndarray, vectors_at: Callable[[np.ndarray], np.ndarray],
    target: float, selector: Any = None, seed: int = 41,
) -> Calibration:
    """The least efSearch of EF_LADDER at which `graph` (an IndexIDMap over an HNSW index) finds, on average,
    `target` of each query's exact top K.

    `queries`: vectors the graph does not hold (up to SAMPLE_QUERIES of them are used); `positions`: the storage
    positions of the graph's live vectors, `ids` their FAISS ids; `vectors_at(positions)`: the vectors at storage
    positions (what an exact scan scores); `selector`: what searches skip (tombstones)."""
    started = time.perf_counter()
    n = len(ids)
    if len(queries) > SAMPLE_QUERIES:
        queries = queries[np.sort(np.random.default_rng(seed).choice(len(queries), SAMPLE_QUERIES, replace=False))]
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    truth = _exact_top(queries, positions, ids, vectors_at, K)

    def recall_at(ef: int) -> float:
        _, found = graph.search(queries, K, params=faiss.SearchParametersHNSW(efSearch=max(ef, K), sel=selector))
        return float(np.mean([len(set(row.tolist()) & set(want)) / max(len(want), 1) for row, want in zip(found, truth)]))

    low, high = 0, len(EF_LADDER) - 1  # bisect for the first rung reaching the target
    measured: dict[int, float] = {}
    while low < high:
        middle = (low + high) // 2
        measured[middle] = recall_at(EF_LADDER[middle])
        if measured[middle] >= target:
            high = middle
        else:
            low = middle + 1
    if low not in measured:
        measured[low] = recall_at(EF_LADDER[low])
    result = Calibration(target, EF_LADDER[low], round(measured[low], 4), n)
    log.info("dense index: efSearch %d gives recall@%d %.3f (target %.3f) on %d unseen queries over %d vectors, %.1f s",
             result.ef_search, K, result.recall, target, len(queries), n, time.perf_counter() - started)
    return result


def _exact_top(queries: np.ndarray, positions: np.ndarray, ids: np.ndarray, vectors_at: Callable[[np.ndarray], np.ndarray],
               k: int, block: int = 65536) -> list[list[int]]:
    """Each query's exact top-k ids by inner product, scanning a block of stored vectors at a time (a 1M x 256
    score matrix would be 1 GB): FAISS's exact search per block, its result heap across blocks."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(ids), block):
        rows = slice(start, min(start + block, len(ids)))
        scores, found = faiss.knn(queries, vectors_at(positions[rows]), min(k, len(ids[rows])), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(found >= 0, ids[rows][found], -1))
    heap.finalize()
    return [row[row >= 0].tolist() for row in heap.I]
