"""`searchsvc bench --part llm`: the local answer model's prompt reading and generation against this machine's limits.

Prompt reading (prefill) is compute bound: each prompt token costs ~2 FLOPs per weight, so its ceiling is the
machine's matmul rate. ggml's Q4_K kernels multiply int8 activations by unpacked integer weights, so the
yardstick is the int8 GEMM rate measured in the same run (torch._int_mm: oneDNN's VNNI or AMX kernels), printed
beside the fp32 one. Generating a token reads every weight once, so its ceiling is
memory bandwidth over the model's bytes (a multi-threaded sum over 1 GiB measures the bandwidth).

The CPU kernels are chosen once per process (see answer/ggml_cpu.py); to compare variants run this once per
`SEARCHSVC_LLM__CPU_VARIANT` (e.g. haswell for the old portable AVX2 build, skylakex or icelake for AVX-512 CPUs
without AMX).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from searchsvc.config import LLMSettings
from searchsvc.platform import hardware

PROMPT_TOKENS = (300, 1000)
PREFILL_CHUNKS = (64, 512)  # 64: the service's cancel-check granularity (answer/llm.py)
GENERATED_TOKENS = 64


def memory_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth: the best of `repeats` sums over a `gib` GiB float32 tensor (torch, all its threads)."""
    import torch

    a = torch.ones(int(gib * (1 << 30)) // 4)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - started)
    return a.numel() * 4 / best / 1e9


def _prompt(llama, count: int, text: str) -> list[int]:
    ids = llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


def run(settings: LLMSettings, models_dir: Path, text: str) -> dict:
    from llama_cpp import Llama

    from searchsvc.answer.ggml_cpu import load_cpu_backend
    from searchsvc.answer.gguf import ensure_model
    from searchsvc.lab.bench.encoders import int8_peak_gops, matmul_peak_gflops

    variant = load_cpu_backend(settings.cpu_variant) or "static build"
    path = ensure_model(settings.model, models_dir)
    threads = settings.threads or os.cpu_count() or 1
    peak, int8_peak, bandwidth = matmul_peak_gflops(), int8_peak_gops(), memory_bandwidth_gbs()
    llama = Llama(model_path=str(path), n_ctx=settings.context_window, n_threads=threads, n_threads_batch=threads, verbose=False)
    params, size = llama._model.n_params(), llama._model.size()
    # 2 FLOPs per weight, less the token-embedding table (a lookup); attention over <= 1000 positions adds a few
    # percent more, not counted.
    flops_per_token = 2 * (params - llama._model.n_vocab() * llama._model.n_embd())
    print(f"CPU flags: {hardware.describe()}; llama.cpp CPU kernels: {variant}; {threads} threads; model "
          f"{path.name}: {params / 1e9:.2f} B parameters, {size / 1e9:.2f} GB; measured fp32 matmul peak {peak:.0f} "
          f"GFLOP/s, int8 matmul peak {int8_peak:.0f} GOP/s, memory read bandwidth {bandwidth:.1f} GB/s", flush=True)
    row: dict = {"variant": variant, "peak_gflops": peak, "int8_peak_gops": int8_peak, "bandwidth_gbs": bandwidth}
    for count in PROMPT_TOKENS:
        tokens = _prompt(llama, count, text)
        for chunk in PREFILL_CHUNKS:
            llama.reset()
            llama.eval(tokens[:8])  # warm-up (first-call allocations)
            llama.reset()
            started = time.perf_counter()
            for i in range(0, count, chunk):
                llama.eval(tokens[i : i + chunk])
            seconds = time.perf_counter() - started
            gflops = count * flops_per_token / seconds / 1e9
            row[f"prefill_{count}_{chunk}"] = count / seconds
            print(f"  prompt reading, {count:>4} tokens in chunks of {chunk:>3}: {count / seconds:6.1f} tok/s "
                  f"({seconds:5.2f} s) = {gflops:5.0f} GOP/s = {gflops / int8_peak:.2f} of the int8 peak, "
                  f"{gflops / peak:.2f} of the fp32 (ceiling at the int8 peak: {int8_peak * 1e9 / flops_per_token:.0f} tok/s)",
                  flush=True)
    started = time.perf_counter()
    for _ in range(GENERATED_TOKENS):
        llama.eval([llama.sample(top_k=1)])
    rate = GENERATED_TOKENS / (time.perf_counter() - started)
    row["generate_tok_s"] = rate
    print(f"  generation after {PROMPT_TOKENS[-1]} prompt tokens: {rate:5.1f} tok/s = {rate * size / 1e9:5.1f} GB/s of "
          f"weights read = {rate * size / 1e9 / bandwidth:.2f} of the measured bandwidth (ceiling "
          f"{bandwidth * 1e9 / size:.0f} tok/s)", flush=True)
    llama.close()
    return row
