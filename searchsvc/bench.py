"""`searchsvc bench`: ingest throughput through BulkIndex vs the bare encoder, search latency at scale, peak RSS.

Every figure that matters is a ratio or a percentile measured in this one run, on this machine, so a
regression shows without comparing across machines. The corpus is synthetic (Zipf-distributed pseudo-words),
deterministic from a seed.
"""

from __future__ import annotations

import random
import resource
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from searchsvc.client import bulk_index
from searchsvc.config import Settings
from searchsvc.models import ModelRegistry, resolve_model_path
from searchsvc.server import BackgroundServer, configure_threads
from searchsvc.types import Document
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


class SyntheticCorpus:
    def __init__(self, seed: int = 13, vocab_size: int = 20000) -> None:
        self.rng = random.Random(seed)
        syllables = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "po", "an", "el", "or", "is", "un"]
        self.vocab = list(dict.fromkeys(
            "".join(self.rng.choices(syllables, k=self.rng.randint(2, 4))) for _ in range(vocab_size * 2)
        ))[:vocab_size]
        weights = 1 / np.arange(1, len(self.vocab) + 1) ** 1.07  # Zipf-like
        self.cum = np.cumsum(weights / weights.sum())

    def words(self, n: int) -> list[str]:
        picks = np.searchsorted(self.cum, [self.rng.random() for _ in range(n)])
        return [self.vocab[min(i, len(self.vocab) - 1)] for i in picks]

    def docs(self, n: int, start: int = 0, min_words: int = 20, max_words: int = 60) -> list[Document]:
        return [
            Document(f"doc{i}", " ".join(self.words(self.rng.randint(min_words, max_words))) + ".", metadata={"shard": str(i % 8)})
            for i in range(start, start + n)
        ]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_ingest(server: BackgroundServer, settings: Settings, docs: list[Document]) -> dict:
    from sentence_transformers import SentenceTransformer

    texts = [d.text for d in docs]
    model = SentenceTransformer(resolve_model_path(ModelRegistry().default_embedding_model), device="cpu")
    model.encode(texts[:64], batch_size=settings.embed_batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=settings.embed_batch_size, normalize_embeddings=True)
    bare = len(texts) / (time.perf_counter() - started)

    with grpc.insecure_channel(server.target) as channel:
        pb_grpc.SearchServiceStub(channel).CreateCollection(pb.CreateCollectionRequest(name="bench-ingest"))
    started = time.perf_counter()
    bulk_index(lambda: grpc.insecure_channel(server.target), "bench-ingest", docs, batch_size=64)
    service = len(docs) / (time.perf_counter() - started)
    return {"bare_docs_s": bare, "service_docs_s": service, "ratio": service / bare}


def bench_search(server: BackgroundServer, corpus: SyntheticCorpus, sizes: list[int], n_queries: int) -> list[dict]:
    rows = []
    indexed = 0
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="bench-search"))
        for size in sorted(sizes):
            started = time.perf_counter()
            bulk_index(lambda: grpc.insecure_channel(server.target), "bench-search",
                       corpus.docs(size - indexed, start=indexed, min_words=10, max_words=30), batch_size=256)
            load_s = time.perf_counter() - started
            indexed = size
            time.sleep(3)  # let the keyword leg's last refresh land
            count = stub.GetCollection(pb.GetCollectionRequest(name="bench-search")).chunk_count
            queries = [" ".join(corpus.words(corpus.rng.randint(2, 5))) for _ in range(n_queries)]
            for mode_name, mode in (("HYBRID", pb.SEARCH_MODE_HYBRID), ("DENSE", pb.SEARCH_MODE_DENSE), ("KEYWORD", pb.SEARCH_MODE_KEYWORD)):
                client, server_total, stages = [], [], {"embed": [], "dense": [], "keyword": [], "fuse": []}
                for q in queries[:10]:  # warm-up
                    stub.Search(pb.SearchRequest(collection="bench-search", query=q, mode=mode))
                for q in queries:
                    t0 = time.perf_counter()
                    r = stub.Search(pb.SearchRequest(collection="bench-search", query=q, mode=mode), timeout=10)
                    client.append((time.perf_counter() - t0) * 1000)
                    server_total.append(r.timings.total_ms)
                    for s in stages:
                        stages[s].append(getattr(r.timings, f"{s}_ms"))
                rows.append({
                    "chunks": count, "mode": mode_name, "load_s": load_s,
                    "p50": float(np.percentile(client, 50)), "p99": float(np.percentile(client, 99)),
                    "server_p50": float(np.percentile(server_total, 50)),
                    "stages_p50": {s: float(np.percentile(v, 50)) for s, v in stages.items()},
                })
                print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    st = r["stages_p50"]
    return (f"{r['chunks']:>7} {r['mode']:<8} p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  server p50 {r['server_p50']:6.1f} ms"
            f"  (embed {st['embed']:.1f} / dense {st['dense']:.1f} / keyword {st['keyword']:.1f} / fuse {st['fuse']:.1f})"
            f"  [loaded in {r['load_s']:.0f} s]")


def run_bench(settings: Settings, *, sizes: list[int], ingest_docs: int, queries: int) -> None:
    threads = configure_threads(settings)
    corpus = SyntheticCorpus()
    with tempfile.TemporaryDirectory() as tmp:
        if settings.index_dir == Path("indexes"):
            settings = settings.model_copy(update={"index_dir": Path(tmp)})
        with BackgroundServer(settings) as server:
            print(f"torch threads: {threads}")
            ingest = bench_ingest(server, settings, corpus.docs(ingest_docs))
            print(f"ingest ({ingest_docs} docs of 20-60 words): bare SentenceTransformer.encode {ingest['bare_docs_s']:.1f} docs/s, "
                  f"BulkIndex {ingest['service_docs_s']:.1f} docs/s, ratio {ingest['ratio']:.3f}", flush=True)
            bench_search(server, corpus, sizes, queries)
            print(f"peak RSS (server + bench client + bare encoder, one process): {_peak_rss_mb():.0f} MB")
