"""How to fuse the two legs, studied offline: each leg's top 100 is fetched once through the service, then every
fusion rule is replayed on those lists and scored, per query, with a paired bootstrap against the best single leg
and against the shipped default.

    python -m searchsvc.lab.fusion_study DATASET [--split dev] [--language auto]

Replaying is exact for rank fusion: `replay_matches_service` checks one rule against the service's own HYBRID
before any figure is printed. The rules themselves live in search/fuse.py; this module only compares them.
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

CACHE = Path.home() / ".cache" / "searchsvc" / "legs"
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


def documents(ranked_chunks: list[str], doc_of: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(doc_of[c] for c in ranked_chunks))


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
    for name, s in scores.items():
        print(f"{name:<20} {s.mean():.4f}")
    best = max(("dense", "keyword"), key=lambda leg: scores[leg].mean())
    b = paired_bootstrap(scores[best], scores["hybrid (service)"])
    print(f"service hybrid vs {best}: {b['mean_diff']:+.4f} [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}]")


if __name__ == "__main__":
    main()
