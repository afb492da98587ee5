"""How to fuse the two legs, studied offline: each leg's top 100 is fetched once through the service, then every
fusion rule is replayed on those lists and scored, per query, with a paired bootstrap against the best single leg
and against the shipped default.

    python -m searchsvc.lab.fusion_study DATASET [--split dev] [--language auto]

It prints each leg, the service's HYBRID, and two replays through search/fuse.py itself: the adaptive Korean
weights (the default) and the fixed keyword weight 2 they replaced. Replaying rank fusion is exact: the adaptive
replay equals the service's HYBRID on Korean queries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import grpc
import numpy as np

from searchsvc.lab.relevance import load_qrels, load_queries, ndcg_at_k, paired_bootstrap
from searchsvc.platform.files import user_cache_dir

CACHE = user_cache_dir() / "legs"
DEPTH = 100


def collect(dataset: Path, split: str, language: str, backend: str = "") -> dict:
    """{qid: {"dense": [[chunk, doc, score]...], "keyword": [...], "hybrid": [doc...]}} through a private server."""
    # The server's settings from the environment (encoder precision, analyzers...) make different legs.
    environment = sorted((k, v) for k, v in os.environ.items() if k.startswith("SEARCHSVC_") and not k.startswith("SEARCHSVC_LLM"))
    key = hashlib.sha256(f"{dataset.resolve()}|{split}|{language}|{backend}|{environment}".encode()).hexdigest()[:10]
    cached = CACHE / f"{dataset.resolve().name}-{split}-{language or 'default'}-{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    from searchsvc.api.server import BackgroundServer, private_server
    from searchsvc.config import Settings
    from searchsvc.lab.evaluate import ensure_indexed, scratch_settings
    from searchsvc.v1 import searchsvc_pb2 as pb
    from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

    qrels = load_qrels(dataset / "qrels" / f"{split}.tsv")
    queries = {q: t for q, t in load_queries(dataset / "queries.jsonl").items() if q in qrels}
    settings = Settings()
    legs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = scratch_settings(settings, tmp).model_copy(update={"port": 0, **({"default_language": language} if language else {})})
        with BackgroundServer(private_server(settings)) as server, grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            name = ensure_indexed(stub, server.target, dataset, language=language, backend=backend)
            for i, qid in enumerate(sorted(queries)):
                row = {}
                for leg, mode in (("dense", pb.SEARCH_MODE_DENSE), ("keyword", pb.SEARCH_MODE_KEYWORD)):
                    r = stub.Search(pb.SearchRequest(collection=name, query=queries[qid], top_k=DEPTH, mode=mode), timeout=60)
                    row[leg] = [[h.chunk_id, h.document_id, h.score] for h in r.hits]
                r = stub.Search(pb.SearchRequest(collection=name, query=queries[qid], top_k=10, mode=pb.SEARCH_MODE_HYBRID), timeout=60)
                row["hybrid"] = list(dict.fromkeys(h.document_id for h in r.hits))
                legs[qid] = row
                if i % 500 == 0:
                    print(f"  {i}/{len(queries)} queries", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(legs, ensure_ascii=False))
    return legs


def replay(row: dict, weights) -> list[str]:
    """The documents of one query's RRF over its two collected legs (the service's 50 candidates per leg)."""
    from searchsvc.domain.types import ScoredId
    from searchsvc.search.fuse import fuse_rrf

    legs = {leg: [ScoredId(c, rank, s) for rank, (c, _, s) in enumerate(row[leg][:50], start=1)] for leg in ("dense", "keyword")}
    doc_of = {c: d for leg in ("dense", "keyword") for c, d, _ in row[leg]}
    return list(dict.fromkeys(doc_of[c] for c, _ in fuse_rrf(legs, weights(legs))))


def main() -> None:  # pragma: no cover - a lab command
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--language", default="")
    args = parser.parse_args()
    legs = collect(args.dataset, args.split, args.language)
    qrels = load_qrels(args.dataset / "qrels" / f"{args.split}.tsv")
    print(f"{args.dataset.name} {args.split}: {len(legs)} queries collected")
    scores = {leg: np.array([ndcg_at_k(list(dict.fromkeys(d for _, d, _ in legs[q][leg])), qrels[q]) for q in sorted(legs)])
              for leg in ("dense", "keyword")}
    scores["hybrid (service)"] = np.array([ndcg_at_k(legs[q]["hybrid"], qrels[q]) for q in sorted(legs)])
    from searchsvc.retrieve.analyzers import get_analyzer
    from searchsvc.search.fuse import adaptive_weights

    analyzer = get_analyzer("korean" if args.language == "ko" else "multilingual")
    queries = load_queries(args.dataset / "queries.jsonl")
    rules = {"adaptive (replay)": lambda q: lambda legs: adaptive_weights(legs["dense"], legs["keyword"], len(analyzer.analyze(queries[q]))),
             "keyword weight 2": lambda q: lambda legs: {"dense": 1.0, "keyword": 2.0}}
    for label, rule in rules.items():
        scores[label] = np.array([ndcg_at_k(replay(legs[q], rule(q)), qrels[q]) for q in sorted(legs)])
    for name, s in scores.items():
        print(f"{name:<20} {s.mean():.4f}")
    best = max(("dense", "keyword"), key=lambda leg: scores[leg].mean())
    b = paired_bootstrap(scores[best], scores["hybrid (service)"])
    print(f"service hybrid vs {best}: {b['mean_diff']:+.4f} [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}]")


if __name__ == "__main__":
    main()
