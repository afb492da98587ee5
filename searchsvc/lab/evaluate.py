"""`searchsvc eval DATASET_DIR`: index a BEIR-layout dataset through the service, score every mode.

Metrics: nDCG@10, Recall@100 and MRR@10 as pytrec_eval/BEIR compute them (relevance.py). Hits are chunks; a document's rank is the
rank of its first chunk.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from searchsvc.api.server import BackgroundServer, private_server
from searchsvc.client.channel import bulk_index
from searchsvc.config import Settings
from searchsvc.ingest.loaders import load_jsonl
from searchsvc.lab.relevance import load_qrels, load_queries, mrr_at_k, ndcg_at_k, paired_bootstrap, recall_at_k
from searchsvc.platform.files import user_cache_dir
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

MODES = {"KEYWORD": pb.SEARCH_MODE_KEYWORD, "DENSE": pb.SEARCH_MODE_DENSE, "HYBRID": pb.SEARCH_MODE_HYBRID}  # + HYBRID-RSF


def documents_in_order(response: pb.SearchResponse) -> list[str]:
    return list(dict.fromkeys(h.document_id for h in response.hits))


def scratch_settings(settings: Settings, tmp: str) -> Settings:
    """An eval's server: collections in `tmp` when no index dir was given, and derived models (ONNX exports, int8
    copies, assembled GGUF files) in the user's cache when no model cache was given, so that each run does not
    export and quantize the encoders again (they would otherwise go under the scratch index dir)."""
    if settings.index_dir != Path("indexes"):
        return settings
    cache = settings.model_cache_dir or user_cache_dir()
    return settings.model_copy(update={"index_dir": Path(tmp), "model_cache_dir": cache})


def ensure_indexed(stub, target: str, dataset: Path, embedding_model: str = "", analyzer: str = "", language: str = "",
                   backend: str = "") -> str:
    """Index the dataset's corpus.jsonl into `eval-<dataset>[-<config hash>]` unless an equal-sized collection is
    there. `embedding_model`: a model id or directory (e.g. one written by train-embedder); it, `analyzer`,
    `language` and `backend` default to the server's."""
    name = "eval-" + "".join(ch if ch.isalnum() else "-" for ch in dataset.resolve().name)[:40]
    if embedding_model or analyzer or language or backend:
        name += "-" + hashlib.sha256(f"{embedding_model}|{analyzer}|{language}|{backend}".encode()).hexdigest()[:8]
    docs = list(load_jsonl(dataset / "corpus.jsonl"))
    existing = {c.name: c for c in stub.ListCollections(pb.ListCollectionsRequest()).collections}
    if name in existing and existing[name].document_count == len(docs):
        print(f"reusing collection {name} ({len(docs)} documents)")
        return name
    if name in existing:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))
    # Synchronous keyword refresh: every acked batch is searchable before the first query runs.
    config = pb.CollectionConfig(embedding_model=embedding_model, analyzer=analyzer, language=language, refresh_interval_ms=-1,
                                 backend=backend)
    created = stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))
    c = created.config
    print(f"collection {name}: language {c.language}, analyzer {c.analyzer}, embedder {c.embedding_model}, backend {c.backend}")
    started = time.perf_counter()
    bulk_index(lambda: grpc.insecure_channel(target), name, docs)
    elapsed = time.perf_counter() - started
    print(f"indexed {len(docs)} documents in {elapsed:.1f} s ({len(docs) / elapsed:.1f} docs/s)")
    return name


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def run_eval(
    settings: Settings,
    dataset: Path,
    *,
    limit_queries: int | None = None,
    split: str = "dev",
    holdout: str = "",
    seed: int = 13,
    validation_fraction: float = 0.2,
    embedding_model: str = "",
    analyzer: str = "",
    language: str = "",
    reranker_model: str = "",
    rerank_candidates: int = 20,
    rerank_fusion: str = "rrf",
    modes: list[str] | None = None,
    backend: str = "",
    mmr: list[float] | None = None,
) -> dict:
    """`holdout` "train" / "validation": only that side of train-embedder's fixed-seed split of the queries.
    HYBRID fuses with RRF, HYBRID-RSF with relative-score fusion (weights 1 each), HYBRID-DEFAULT with whatever
    the query's language defaults to (searchsvc/retrieve/language.py). `reranker_model`: adds HYBRID+RERANK, the
    top `rerank_candidates` of the hybrid ranking (`rerank_fusion`) reordered by it. `mmr`: adds HYBRID+MMR <λ>
    rows (the top 10 re-selected by maximal marginal relevance from 40 candidates), each with the share of
    top-10 pairs whose stored vectors have cosine > 0.95 (near-duplicates)."""
    qrels = load_qrels(dataset / "qrels" / f"{split}.tsv")
    queries = {qid: text for qid, text in load_queries(dataset / "queries.jsonl").items() if qid in qrels}
    if holdout:
        from searchsvc.lab.train.data import split_queries

        keep = set(getattr(split_queries(list(queries), seed, validation_fraction), holdout))
        queries = {q: t for q, t in queries.items() if q in keep}
    qids = sorted(queries)[:limit_queries] if limit_queries else sorted(queries)
    with tempfile.TemporaryDirectory() as tmp:
        settings = scratch_settings(settings, tmp)
        named = [m for m in (embedding_model, reranker_model) if m]  # named on the command line: the operator's
        settings = settings.model_copy(update={"model_allow_list": [*settings.model_allow_list, *named]})
        if language:  # the server preloads its default language's embedder: make that this collection's
            settings = settings.model_copy(update={"default_language": language})
        with BackgroundServer(private_server(settings)) as server, grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            name = ensure_indexed(stub, server.target, dataset, embedding_model, analyzer, language, backend)
            results = {}
            rrf, rsf = pb.FUSION_RRF, pb.FUSION_RELATIVE_SCORE
            runs = {label: (mode, rrf, None) for label, mode in MODES.items()}
            runs["HYBRID-RSF"] = (pb.SEARCH_MODE_HYBRID, rsf, None)
            runs["HYBRID-DEFAULT"] = (pb.SEARCH_MODE_HYBRID, pb.FUSION_UNSPECIFIED, None)  # the only row without weights 1
            if reranker_model:
                rerank = pb.RerankOptions(enabled=True, candidates=rerank_candidates, model=reranker_model)
                runs["HYBRID+RERANK"] = (pb.SEARCH_MODE_HYBRID, rsf if rerank_fusion == "relative_score" else rrf, rerank)
            for lambda_mult in mmr or []:
                runs[f"HYBRID+MMR {lambda_mult:g}"] = (pb.SEARCH_MODE_HYBRID, rrf, pb.MmrOptions(lambda_mult=lambda_mult))
            storage = server.components["service"].catalog.get(name)  # stored vectors, for the near-duplicate share
            for label, (mode, fusion, options) in runs.items():
                if modes and label not in modes and not isinstance(options, pb.MmrOptions):  # --mmr rows always run
                    continue
                rerank = options if isinstance(options, pb.RerankOptions) else None
                diversify = options if isinstance(options, pb.MmrOptions) else None
                rows = {"ndcg@10": [], "recall@100": [], "mrr@10": [], "near-dup@10": []}
                languages = []
                latency: dict[str, list[float]] = {s: [] for s in ("client", "embed", "dense", "keyword", "fuse", "rerank", "total")}
                for qid in qids:
                    started = time.perf_counter()
                    # The rerank stage scores every hit it returns: ask for its candidates only (R@100 is then
                    # recall over those), not 100, or it would rerank 100.
                    top_k = max(rerank_candidates, 10) if rerank is not None else 10 if diversify is not None else 100
                    request = pb.SearchRequest(collection=name, query=queries[qid], top_k=top_k, mode=mode, fusion=fusion,
                                               rerank=rerank, mmr=diversify)
                    if fusion != pb.FUSION_UNSPECIFIED:
                        request.dense_weight = request.keyword_weight = 1.0
                    response = stub.Search(request, timeout=60)
                    latency["client"].append((time.perf_counter() - started) * 1000)
                    if rerank is not None and not response.rerank.applied:
                        raise RuntimeError(f"rerank skipped: {response.rerank.skipped_reason}")
                    t = response.timings
                    for stage in ("embed", "dense", "keyword", "fuse", "rerank", "total"):
                        latency[stage].append(getattr(t, f"{stage}_ms"))
                    languages.append(response.query_language)
                    ranked = documents_in_order(response)
                    rows["ndcg@10"].append(ndcg_at_k(ranked, qrels[qid]))
                    rows["recall@100"].append(recall_at_k(ranked, qrels[qid]))
                    rows["mrr@10"].append(mrr_at_k(ranked, qrels[qid]))
                    rows["near-dup@10"].append(near_duplicate_share(storage, [h.chunk_id for h in response.hits[:10]]))
                results[label] = {"metrics": {m: float(np.mean(v)) for m, v in rows.items()}, "qids": qids, "per_query": rows["ndcg@10"],
                                  "latency": latency, "languages": languages}
    print_report(dataset.name, len(qids), results)
    return results


def near_duplicate_share(storage, chunk_ids: list[str], threshold: float = 0.95) -> float:
    """The share of pairs among `chunk_ids` whose stored vectors have cosine above `threshold`."""
    found = storage.vectors(chunk_ids)
    vectors = np.stack([found[c] for c in chunk_ids if c in found]) if found else np.empty((0, 1))
    n = len(vectors)
    if n < 2:
        return 0.0
    cosines = vectors @ vectors.T
    return float((cosines[np.triu_indices(n, 1)] > threshold).sum() / (n * (n - 1) / 2))


def print_report(dataset: str, n_queries: int, results: dict) -> None:
    print(f"\n{dataset}: {n_queries} queries")
    print(f"{'mode':<17} {'nDCG@10':>8} {'R@100':>7} {'MRR@10':>7} {'dup@10':>7}   {'p50 ms':>7} {'p95 ms':>7}  "
          "server p50: embed / dense / keyword / fuse / rerank")
    for label, r in results.items():
        m, lat = r["metrics"], r["latency"]
        stages = " / ".join(f"{pct(lat[s], 50):.1f}" for s in ("embed", "dense", "keyword", "fuse", "rerank"))
        print(f"{label:<17} {m['ndcg@10']:>8.4f} {m['recall@100']:>7.4f} {m['mrr@10']:>7.4f} {m['near-dup@10']:>7.4f}   "
              f"{pct(lat['client'], 50):>7.1f} {pct(lat['client'], 95):>7.1f}  {stages}")
    for a, b in (("HYBRID", "KEYWORD"), ("HYBRID", "DENSE"), ("HYBRID-RSF", "HYBRID"), ("HYBRID-DEFAULT", "KEYWORD"), ("HYBRID-DEFAULT", "DENSE"), ("HYBRID+RERANK", "HYBRID"), ("HYBRID+RERANK", "HYBRID-RSF")):
        if a in results and b in results:
            x, y = np.array(results[a]["per_query"]), np.array(results[b]["per_query"])
            boot = paired_bootstrap(y, x)
            print(f"{a} vs {b}: wins {int((x > y).sum())}, losses {int((x < y).sum())}, ties {int((x == y).sum())}; "
                  f"mean diff {boot['mean_diff']:+.4f}, 95% CI [{boot['ci95'][0]:+.4f}, {boot['ci95'][1]:+.4f}]")
    for line in hybrid_against_best_leg(results):
        print(line)


def hybrid_against_best_leg(results: dict, hybrid: str = "HYBRID-DEFAULT") -> list[str]:
    """Per query language: the service's default hybrid against the better single leg on those queries, with the
    paired-bootstrap CI, so that "hybrid beats both legs" is one line to read."""
    if not {hybrid, "KEYWORD", "DENSE"} <= results.keys():
        return []
    languages = np.array(results[hybrid]["languages"])
    lines = []
    for language in sorted(set(languages)):
        mask = languages == language
        legs = {leg: np.array(results[leg]["per_query"])[mask] for leg in ("KEYWORD", "DENSE")}
        best = max(legs, key=lambda leg: legs[leg].mean())
        x = np.array(results[hybrid]["per_query"])[mask]
        boot = paired_bootstrap(legs[best], x)
        verdict = "beats both legs" if boot["ci95"][0] > 0 else "does not beat both legs"
        lines.append(f"{hybrid} [{language}, {int(mask.sum())} queries] {x.mean():.4f} vs best leg {best} {legs[best].mean():.4f}: "
                     f"{boot['mean_diff']:+.4f}, 95% CI [{boot['ci95'][0]:+.4f}, {boot['ci95'][1]:+.4f}]: {verdict}")
    return lines
