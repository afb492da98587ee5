"""Relevance judgements and the scores computed from them, shared by eval, train and the benches.

BEIR layout: `qrels/<split>.tsv` (query-id, corpus-id, score) and `queries.jsonl` ({"_id", "text"}). Metrics follow
pytrec_eval/BEIR: nDCG@k with graded relevance as linear gain and log2 discount; Recall@k and MRR@k over documents
judged relevant (grade > 0).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def load_queries(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        return {str(q["_id"]): q["text"] for q in map(json.loads, f) if q}


def ndcg_at_k(ranked: list[str], qrel: dict[str, int], k: int = 10) -> float:
    dcg = sum(qrel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(qrel.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], qrel: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, g in qrel.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: list[str], qrel: dict[str, int], k: int = 10) -> float:
    return next((1 / (i + 1) for i, d in enumerate(ranked[:k]) if qrel.get(d, 0) > 0), 0.0)


def paired_bootstrap(before, after, n: int = 10_000, seed: int = 0) -> dict:
    """Paired bootstrap over queries of mean(after - before): the mean difference, its 95% interval and the
    share of resamples in which `after` does not beat `before` (a one-sided p-value)."""
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if diff.size == 0:
        return {"mean_diff": 0.0, "ci95": [0.0, 0.0], "p_not_better": 1.0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n, diff.size))].mean(axis=1)
    return {
        "mean_diff": float(diff.mean()),
        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
        "p_not_better": float((means <= 0).mean()),
    }
