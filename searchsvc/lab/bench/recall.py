"""`searchsvc bench --recall N`: dense_index.target_recall on three vector distributions of N vectors each.

For each, the embedded dense index the server runs (the collection defaults: HNSW M 32, efConstruction 80, with
target_recall) is loaded in batches as BulkIndex would, calibrating as it grows; then 1,000 queries it never saw
measure recall@10 against an exact scan at the calibrated efSearch and at the fixed default (256), with search
p50 for each. The distributions:

- clusters: the scale bench's ClusteredVectors (1,000 centres, spread 1.4), 384-d;
- gaussian: uniform random unit vectors, 384-d (no neighbourhoods at all: the worst case for a graph);
- scifact: MiniLM embeddings of SciFact's sentences and two-sentence windows (real text), queried by the 809
  dev claims; cached under ~/.cache/searchsvc/bench so that a rerun does not embed them again.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import faiss
import numpy as np

from searchsvc.domain.types import Chunk
from searchsvc.lab.bench.workload import ClusteredVectors
from searchsvc.lab.relevance import load_queries
from searchsvc.platform.files import user_cache_dir
from searchsvc.platform import hardware
from searchsvc.retrieve.external import ExternalEmbedding
from searchsvc.storage.embedded.dense import DenseIndex, DenseIndexSpec

QUERIES = 1000
BATCH = 5000


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def gaussian(n: int, seed: int, dimension: int = 384) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, dimension)))


def scifact(n: int, dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """(passages, queries): MiniLM vectors of up to `n` SciFact sentences and two-sentence windows, and of the dev
    claims."""
    cache = user_cache_dir() / "bench" / f"scifact-minilm-{n}.npz"
    if cache.exists():
        stored = np.load(cache)
        return stored["passages"], stored["queries"]
    from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, ModelRegistry

    texts: list[str] = []
    with open(dataset / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]) if len(s) > 20]
            texts += sentences + [" ".join(pair) for pair in zip(sentences, sentences[1:])]
    claims = list(load_queries(dataset / "queries.jsonl").values())
    texts = texts[:n]
    model = ModelRegistry(threads=os.cpu_count() or 1, sentence_engine="onnx").embedder(DEFAULT_EMBEDDING_MODEL)
    started = time.perf_counter()
    passages = np.asarray(model.embed_passages(texts), dtype=np.float32)
    queries = np.asarray(model.embed_queries(claims), dtype=np.float32)
    print(f"  (embedded {len(texts):,} SciFact sentences in {time.perf_counter() - started:.0f} s)", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, passages=passages, queries=queries)
    return passages, queries


def run_recall(n: int, target: float = 0.95, scifact_dir: Path = Path("../shared/data/scifact")) -> None:
    print(f"recall@10 against an exact scan, {n:,} vectors per distribution, target_recall {target}; "
          f"{hardware.describe()}", flush=True)
    clusters = ClusteredVectors(384, seed=0)
    distributions = {"clusters": (clusters.sample(n), clusters.sample(QUERIES)),
                     "gaussian": (gaussian(n, 1), gaussian(QUERIES, 2))}
    if (scifact_dir / "corpus.jsonl").exists():
        distributions["scifact"] = scifact(n, scifact_dir)
    else:
        print(f"  (no {scifact_dir}: SciFact left out)")
    print(f"{'vectors':<10}{'n':>9}{'calibrated at':>14}{'ef':>6}{'sample':>8}{'recall':>8}{'p50 ms':>8}{'ef 256':>8}"
          f"{'p50 ms':>8}{'load s':>8}{'calibrating s':>15}", flush=True)
    for name, (data, queries) in distributions.items():
        _measure(name, data, queries, target)


def _measure(name: str, data: np.ndarray, queries: np.ndarray, target: float) -> None:
    spec = DenseIndexSpec(kind="hnsw", quantization="none", target_recall=target)
    dense = DenseIndex.create(ExternalEmbedding(dimension=data.shape[1]), data.shape[1], spec)
    dense.background = False  # the graph is built below, on this thread, as the graph builder would build it
    calibrating = [0.0]  # the graph builder's time in maybe_calibrate, timed
    maybe_calibrate = dense.maybe_calibrate

    def timed() -> None:
        started = time.perf_counter()
        maybe_calibrate()
        calibrating[0] += time.perf_counter() - started

    dense.maybe_calibrate = timed
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        rows = range(start, min(start + BATCH, len(data)))
        dense.add([Chunk(f"{i}#0", str(i), 0, "", "", {}, 0, 0) for i in rows], data[start : start + len(rows)])
        dense.build_all()  # as a graph builder keeping up with each write would
    load_s = time.perf_counter() - started
    _, exact = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    calibration = dense.store.calibration
    rows = []
    for ef in (calibration.ef_search, DenseIndexSpec.ef_search):
        found, times = [], []
        for q in queries:
            t = time.perf_counter()
            hits = dense.search(q, 10, ef_search=ef)
            times.append(time.perf_counter() - t)
            found.append({int(h.chunk_id.split("#")[0]) for h in hits})
        recall = float(np.mean([len(f & set(e.tolist())) / 10 for f, e in zip(found, exact)]))
        rows.append((recall, 1000 * float(np.median(times))))
    (recall, p50), (recall_256, p50_256) = rows
    print(f"{name:<10}{len(data):>9,}{calibration.vectors:>14,}{calibration.ef_search:>6}{calibration.recall:>8.3f}{recall:>8.3f}{p50:>8.2f}"
          f"{recall_256:>8.3f}{p50_256:>8.2f}{load_s:>8.0f}{calibrating[0]:>15.1f}", flush=True)
