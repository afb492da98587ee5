"""`searchsvc bench` part one: each encoder (MiniLM, multilingual-e5-small) on each engine (the torch reference,
ONNX Runtime; OpenVINO for e5), against this machine's measured fp32 matmul peak, in one run.

Per engine: query latency p50/p99 for ~1, ~8 and ~32-token queries (one query per call, as a search does), passage
throughput (docs/s) on the same texts for every engine, the achieved GFLOP/s (model FLOPs per token times tokens,
padding not counted, over wall time) and its ratio to the peak. The CPU flags that decide the kernels are printed
with the numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from searchsvc.lab.bench.workload import closed_loop_rate
from searchsvc.platform import hardware
from searchsvc.retrieve.e5 import e5_flops_per_token

QUERIES = {  # ~1, ~8 and ~32 tokens of content
    1: "vitamin",
    8: "does vitamin d reduce the risk of hip fractures",
    32: "in randomized controlled trials of older adults, does daily vitamin d supplementation with or without "
        "calcium reduce the incidence of hip and non-vertebral fractures compared with placebo",
}


def load_passages(dataset: Path | None, count: int) -> list[str]:
    """The first `count` texts of a dataset (any layout `searchsvc index` reads), or synthetic 60-200-word abstracts."""
    if dataset is not None:
        from searchsvc.ingest.loaders import load_documents

        return [d.text for _, d in zip(range(count), load_documents(dataset))]
    from searchsvc.lab.bench.workload import SyntheticCorpus

    return [d.text for d in SyntheticCorpus().docs(count, min_words=60, max_words=200)]


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak_gflops(size: int = 1024, repeats: int = 20) -> float:
    """Best fp32 GEMM rate torch reaches here with its current threads (the practical peak)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def int8_peak_gops(size: int = 2048, repeats: int = 10) -> float:
    """Best int8 x int8 -> int32 GEMM rate torch reaches here (torch._int_mm: oneDNN's VNNI or AMX kernels)."""
    import torch

    a = torch.randint(-128, 127, (size, size), dtype=torch.int8)
    b = torch.randint(-128, 127, (size, size), dtype=torch.int8)
    return 2 * size**3 / _best_seconds(lambda: torch._int_mm(a, b), repeats) / 1e9


def _latency(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def queries_per_second(embed_query: Callable[[str], object], clients: int, seconds: float = 3.0) -> float:
    """Distinct ~8-token queries (no cache hits) from `clients` closed-loop threads."""
    return closed_loop_rate(lambda c, i: embed_query(f"{QUERIES[8]} {c} {i}"), clients, seconds)


def bench_engine(
    name: str, embed_query: Callable[[str], object], embed_passages: Callable[[Sequence[str]], object],
    token_counts: Callable[[Sequence[str]], list[int]], layers: int, passages: list[str], peak: float, runs: int,
) -> dict:
    row: dict = {"engine": name}
    for tokens, query in QUERIES.items():
        row[f"q{tokens}"] = _latency(lambda: embed_query(query), runs)
    embed_passages(passages[:16])  # warm-up
    started = time.perf_counter()
    embed_passages(passages)
    seconds = time.perf_counter() - started
    counts = token_counts(passages)
    flops = sum(n * e5_flops_per_token(n, layers=layers) for n in counts)
    row.update(docs_s=len(passages) / seconds, gflops=flops / seconds / 1e9, tokens=sum(counts))
    row["peak_ratio"] = row["gflops"] / peak
    row["qps1"], row["qps8"] = queries_per_second(embed_query, 1), queries_per_second(embed_query, 8)
    return row


def print_row(model: str, row: dict) -> None:
    q = " ".join(f"{t:>2}-tok {row[f'q{t}'][0]:5.1f}/{row[f'q{t}'][1]:5.1f}" for t in QUERIES)
    print(f"  {model:<18} {row['engine']:<12} query p50/p99 ms: {q}   passages {row['docs_s']:6.1f} docs/s  "
          f"{row['gflops']:6.1f} GFLOP/s = {row['peak_ratio']:.2f} of peak   queries/s 1 client {row['qps1']:5.0f}, "
          f"8 clients {row['qps8']:5.0f} ({row['qps8'] / row['qps1']:.1f}x)", flush=True)


def run(passages: list[str], runs: int = 50, engines: Sequence[str] = ("torch", "onnx", "openvino"), cache_dir: Path | None = None) -> list[dict]:
    from sentence_transformers import SentenceTransformer

    from searchsvc.retrieve.e5 import E5Embedding, resolve_precision
    from searchsvc.retrieve.models import packaged_minilm_path
    from searchsvc.retrieve.onnx_runtime import default_cache_dir
    from searchsvc.retrieve.sentence_onnx import OnnxSentenceEmbedding

    cache_dir = cache_dir or default_cache_dir()
    peak = matmul_peak_gflops()
    print(f"CPU flags: {hardware.describe()}; auto precision: {resolve_precision('auto')}; "
          f"measured fp32 matmul peak {peak:.0f} GFLOP/s; {len(passages)} passages", flush=True)
    rows = []
    minilm_path = packaged_minilm_path()
    reference = SentenceTransformer(minilm_path, device="cpu")

    def minilm_tokens(texts):
        return [min(len(ids), reference.max_seq_length) for ids in reference.tokenizer(list(texts))["input_ids"]]

    minilm_variants = [("torch", "float32", "fp32"), ("onnx", "float32", "fp32"), ("openvino", "float32", "fp32")]
    if hardware.has_native_bf16():
        minilm_variants.append(("openvino", "bfloat16", "bf16"))
    for engine, precision, label in minilm_variants:
        if engine not in engines:
            continue
        if engine == "torch":
            row = bench_engine(
                "torch fp32", lambda q: reference.encode([q], normalize_embeddings=True),
                lambda t: reference.encode(list(t), batch_size=32, normalize_embeddings=True), minilm_tokens, 6, passages, peak, runs,
            )
        else:
            model = OnnxSentenceEmbedding(minilm_path, cache_dir, threads=0, model_id="all-MiniLM-L6-v2", engine=engine, precision=precision)
            row = bench_engine(f"{engine} {label}", model.get_query_embedding, model.embed_passages, minilm_tokens, 6, passages, peak, runs)
            vectors = model.embed_passages(passages[:64])
            row["min_cosine"] = float(np.min(np.sum(vectors * reference.encode(passages[:64], normalize_embeddings=True), axis=1)))
            print(f"  all-MiniLM-L6-v2 {engine} {label}: min cosine to torch fp32 over 64 passages {row['min_cosine']:.4f}", flush=True)
        rows.append({"model": "all-MiniLM-L6-v2", **row})
        print_row("all-MiniLM-L6-v2", row)

    variants = [("torch", "float32", "fp32"), ("onnx", "float32", "fp32"), ("onnx", "float32", "int8"),
                ("openvino", "float32", "fp32")]
    if hardware.has_native_bf16():
        variants.insert(1, ("torch", "bfloat16", "bf16"))
        variants.append(("openvino", "bfloat16", "bf16"))
    for engine, precision, label in variants:
        if engine not in engines:
            continue
        e5 = E5Embedding(engine=engine, precision=precision, int8=label == "int8", query_cache_size=0, onnx_cache_dir=str(cache_dir))
        tokenizer = e5._query_engine.tokenizer

        def e5_tokens(texts, engine=e5._query_engine):  # per window: long passages run as several
            return [len(ids) for _, ids, _ in engine.windows(tokenizer.content_ids([f"passage: {t}" for t in texts]))]

        row = bench_engine(f"{engine} {label}", e5.get_query_embedding,
                           e5.embed_passages, e5_tokens, 12, passages, peak, runs)
        rows.append({"model": "multilingual-e5-small", **row})
        print_row("multilingual-e5-small", row)
    return rows
