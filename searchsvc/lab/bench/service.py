"""`searchsvc bench`: ingest throughput through BulkIndex vs the bare encoder, search latency at scale, peak RSS.

Every figure that matters is a ratio or a percentile measured in this one run, on this machine, so a
regression shows without comparing across machines. The corpus is synthetic (Zipf-distributed pseudo-words),
deterministic from a seed.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from searchsvc.api.server import configure_threads
from searchsvc.client.channel import bulk_index
from searchsvc.config import Settings
from searchsvc.domain.types import Document
from searchsvc.lab.bench.workload import ClusteredVectors, SyntheticCorpus, closed_loop_rate
from searchsvc.lab.process import ServerProcess
from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, ModelRegistry, resolve_model_path
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


def bench_ingest(server: ServerProcess, settings: Settings, docs: list[Document], batch_sizes=(64, 256)) -> dict:
    """Docs/s through BulkIndex (chunk + embed + WAL fsync + index) over the bare encoder on the same texts.

    The bare encoder gets all texts in one `encode` call (it length-sorts them all, the best case); the service
    sees one request at a time, so its sort window is the request. The bare run is repeated between service
    runs (this machine's speed drifts) and the ratio uses the mean of the bare runs.
    """
    from sentence_transformers import SentenceTransformer

    texts = [d.text for d in docs]
    model = SentenceTransformer(resolve_model_path(DEFAULT_EMBEDDING_MODEL), device="cpu")
    model.encode(texts[:64], batch_size=settings.embed_batch_size)  # warm-up

    def bare() -> float:
        started = time.perf_counter()
        model.encode(texts, batch_size=settings.embed_batch_size, normalize_embeddings=True)
        return len(texts) / (time.perf_counter() - started)

    bare_runs, service = [bare()], {}
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        for size in batch_sizes:
            stub.CreateCollection(pb.CreateCollectionRequest(name=f"bench-ingest-{size}"))
            started = time.perf_counter()
            bulk_index(lambda: grpc.insecure_channel(server.target), f"bench-ingest-{size}", docs, batch_size=size)
            service[size] = len(docs) / (time.perf_counter() - started)
            bare_runs.append(bare())
    mean_bare = sum(bare_runs) / len(bare_runs)
    return {"bare_docs_s": mean_bare, "bare_runs": bare_runs, "service_docs_s": service,
            "ratio": {size: v / mean_bare for size, v in service.items()}}


def with_vectors(docs: list[Document], vectors: ClusteredVectors) -> list[Document]:
    """The documents with their own vectors: the collection stores them as sent, so loading skips the embedder."""
    for doc, vector in zip(docs, vectors.sample(len(docs))):
        doc.vector = vector
    return docs


def _timed_searches(stub, requests: list[pb.SearchRequest]) -> tuple[list[float], list[pb.SearchResponse]]:
    for r in requests[:10]:  # warm-up
        stub.Search(r)
    times, responses = [], []
    for r in requests:
        t0 = time.perf_counter()
        responses.append(stub.Search(r, timeout=10))
        times.append((time.perf_counter() - t0) * 1000)
    return times, responses


def bench_search(server: ServerProcess, corpus: SyntheticCorpus, sizes: list[int], n_queries: int, vectors: bool = False) -> list[dict]:
    """Search latency by mode at each size. `vectors`: documents are loaded with their own vectors (fast, any
    size): DENSE and HYBRID then embed the query text with the collection's model, and "DENSE vec" searches by a
    query vector from the same distribution as the documents', whose recall@10 against the exact scan
    (DenseSearchOptions.exact) is printed as well."""
    rows = []
    indexed = 0
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="bench-search"))
        dimension = stub.GetCollection(pb.GetCollectionRequest(name="bench-search")).dimension
        synthetic = ClusteredVectors(dimension)
        for size in sorted(sizes):
            started = time.perf_counter()
            docs = corpus.docs(size - indexed, start=indexed, min_words=10, max_words=30)
            bulk_index(lambda: grpc.insecure_channel(server.target), "bench-search",
                       with_vectors(docs, synthetic) if vectors else docs, batch_size=256)
            load_s = time.perf_counter() - started
            indexed = size
            time.sleep(3)  # let the keyword leg's last refresh land
            info = stub.GetCollection(pb.GetCollectionRequest(name="bench-search"))
            queries = [" ".join(corpus.words(corpus.rng.randint(2, 5))) for _ in range(n_queries)]
            modes = [("HYBRID", pb.SEARCH_MODE_HYBRID, {}), ("DENSE", pb.SEARCH_MODE_DENSE, {}), ("KEYWORD", pb.SEARCH_MODE_KEYWORD, {})]
            query_vectors = synthetic.sample(n_queries) if vectors else None
            if vectors:
                modes.append(("DENSE vec", pb.SEARCH_MODE_DENSE, {"query_vector": None}))
            for mode_name, mode, extra in modes:
                requests = [
                    pb.SearchRequest(collection="bench-search", query=q, mode=mode,
                                     **({"query_vector": query_vectors[i].tolist()} if "query_vector" in extra else {}))
                    for i, q in enumerate(queries)
                ]
                client, responses = _timed_searches(stub, requests)
                stages = {s: [getattr(r.timings, f"{s}_ms") for r in responses] for s in ("embed", "dense", "keyword", "fuse")}
                rows.append({
                    "chunks": info.chunk_count, "dense_index": info.dense_index_in_use, "mode": mode_name, "load_s": load_s,
                    "p50": float(np.percentile(client, 50)), "p99": float(np.percentile(client, 99)),
                    "server_p50": float(np.percentile([r.timings.total_ms for r in responses], 50)),
                    "stages_p50": {s: float(np.percentile(v, 50)) for s, v in stages.items()},
                })
                if "query_vector" in extra:
                    rows[-1]["recall_at_10"] = dense_recall(responses, exact_hits(stub, requests))
                print(_row(rows[-1]), flush=True)
            hybrid = [pb.SearchRequest(collection="bench-search", query=q, mode=pb.SEARCH_MODE_HYBRID) for q in queries]
            one, eight = (searches_per_second(stub, hybrid, clients) for clients in (1, 8))
            rows[-len(modes)]["throughput"] = {1: one, 8: eight}
            print(f"{info.chunk_count:>7} HYBRID throughput: 1 client {one:.0f} searches/s, 8 clients {eight:.0f} "
                  f"({eight / one:.2f}x)", flush=True)
    return rows


def searches_per_second(stub, requests: list[pb.SearchRequest], clients: int, seconds: float = 5.0) -> float:
    """Closed loop (bench_encoders.closed_loop_rate), distinct query texts so the query-vector cache does not
    answer them. The client threads share the cores with the server."""
    def one(c: int, i: int) -> None:
        request = pb.SearchRequest()
        request.CopyFrom(requests[(c + i * clients) % len(requests)])
        request.query = f"{request.query} {c}-{i}"
        stub.Search(request, timeout=30)

    return closed_loop_rate(one, clients, seconds)


def exact_hits(stub, requests: list) -> list[set[str]]:
    """The chunk ids each DENSE request (carrying a query vector) finds with an exact scan (DenseSearchOptions.exact)."""
    found = []
    for request in requests:
        exact_request = pb.SearchRequest()
        exact_request.CopyFrom(request)
        exact_request.dense.exact = True
        found.append({h.chunk_id for h in stub.Search(exact_request).hits})
    return found


def dense_recall(responses: list, exact: list[set[str]]) -> float:
    """Mean recall of DENSE `responses` against `exact_hits` of the same requests."""
    return float(np.mean([len({h.chunk_id for h in r.hits} & e) / max(len(e), 1) for r, e in zip(responses, exact)]))


def _row(r: dict) -> str:
    st = r["stages_p50"]
    recall = f"  recall@10 vs exact {r['recall_at_10']:.3f}" if "recall_at_10" in r else ""
    return (f"{r['chunks']:>7} {r['dense_index']:<5} {r['mode']:<9} p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  server p50 {r['server_p50']:6.1f} ms"
            f"  (embed {st['embed']:.1f} / dense {st['dense']:.1f} / keyword {st['keyword']:.1f} / fuse {st['fuse']:.1f})"
            f"  [loaded in {r['load_s']:.0f} s]{recall}")


def run_bench(settings: Settings, *, sizes: list[int], ingest_docs: int, queries: int, vectors: bool = False) -> None:
    """The server runs as its own process (as in production); this process is the client and the bare encoder."""
    threads = configure_threads(settings)
    corpus = SyntheticCorpus()
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) if settings.index_dir == Path("indexes") else settings.index_dir
        with ServerProcess(index_dir, env={"SEARCHSVC_TORCH_THREADS": str(threads)}) as server:
            print(f"torch threads: {threads} (server and bare encoder)")
            ingest = bench_ingest(server, settings, corpus.docs(ingest_docs))
            runs = " / ".join(f"{r:.1f}" for r in ingest["bare_runs"])
            print(f"ingest, {ingest_docs} docs of 20-60 words: bare SentenceTransformer.encode {ingest['bare_docs_s']:.1f} docs/s (runs: {runs})")
            for size, rate in ingest["service_docs_s"].items():
                print(f"  BulkIndex, {size} docs per request: {rate:.1f} docs/s, ratio to bare {ingest['ratio'][size]:.3f}", flush=True)
            bench_search(server, corpus, sizes, queries, vectors)
            print(f"server peak RSS: {server.peak_rss_mb():.0f} MB")


def bench_rerank(settings: Settings, model: str, dataset: Path, candidates=(20, 50), queries: int = 30) -> list[dict]:
    """Rerank-stage latency per query (p50/p95) for `candidates` pairs, for each speed setting, with the
    agreement of each setting's top 10 with full-length fp32's (the reference), on a dataset's real passages:
    each query's candidates are the first passages of the corpus after a fixed-seed shuffle.
    """
    import json

    from scipy.stats import spearmanr

    from searchsvc.search.rerank import CrossEncoderReranker

    configure_threads(settings)
    with open(dataset / "corpus.jsonl", encoding="utf-8") as f:
        passages = [f"{d.get('title', '')}\n{d['text']}".strip() for d in map(json.loads, f)]
    with open(dataset / "queries.jsonl", encoding="utf-8") as f:
        texts = [q["text"] for q in map(json.loads, f)][:queries]
    rng = random.Random(13)
    pools = [rng.sample(passages, max(candidates)) for _ in texts]
    variants = [("fp32", 256, False), ("fp32", 128, False), ("int8", 256, True), ("int8", 128, True)]
    reference: dict[tuple[int, int], list[float]] = {}
    rows = []
    for label, max_length, int8 in variants:
        reranker = CrossEncoderReranker(ModelRegistry(rerank_max_length=max_length, rerank_int8=int8).cross_encoder(model), model)
        reranker.score(texts[0], pools[0][:8])  # warm-up
        for n in candidates:
            times, overlap, rho = [], [], []
            for i, (query, pool) in enumerate(zip(texts, pools)):
                started = time.perf_counter()
                scores = reranker.score(query, pool[:n])
                times.append((time.perf_counter() - started) * 1000)
                ref = reference.setdefault((n, i), scores)
                top = lambda s: set(np.argsort(s)[::-1][:10].tolist())  # noqa: E731
                overlap.append(len(top(scores) & top(ref)) / 10)
                rho.append(spearmanr(scores, ref).statistic)
            rows.append({
                "variant": f"{label} max_length {max_length}", "candidates": n,
                "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                "top10_overlap_vs_fp32_256": float(np.mean(overlap)), "spearman_vs_fp32_256": float(np.mean(rho)),
            })
            print(f"{rows[-1]['variant']:<22} {n:>3} candidates: p50 {rows[-1]['p50_ms']:7.1f} ms  p95 {rows[-1]['p95_ms']:7.1f} ms  "
                  f"top-10 overlap {rows[-1]['top10_overlap_vs_fp32_256']:.2f}  spearman {rows[-1]['spearman_vs_fp32_256']:.3f}")
    return rows
