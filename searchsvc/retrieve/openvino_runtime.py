"""Encoders on OpenVINO: the torch module converted once (ov.convert_model, no ONNX step), cached as IR, compiled
for this CPU.

Measured against ONNX Runtime on the same e5 module (searchsvc/lab/bench/openvino_e5.py, 2 threads, 256 SciFact abstracts):
with AMX, OpenVINO in bf16 ran 33.0 abstracts/s and 3.5 ms per 8-token query (min cosine to torch fp32 1.0000),
against 15.7/s and 4.3 ms for ORT int8; with AMX refused, bf16 ran 7.8/s (AVX512-BF16 alone is slower than fp32)
and fp32 13.2/s against ORT int8's 15.5/s. So e5's "auto" embeds passages on OpenVINO bf16 where AMX is usable
and on ORT int8 elsewhere, and queries on ORT int8 everywhere (see e5.resolve_engines). An int8 OpenVINO model
needs NNCF and calibration data; it ran 18.3/s without AMX, not enough to carry both.

The cache key covers the model id, a digest of the weights and the torch / openvino versions (as for ONNX).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from searchsvc.retrieve.onnx_runtime import (
    TransformerSource,
    build_once,
    slug,
    torch_threads,
    torch_version,
    weights_digest,
)

log = logging.getLogger(__name__)
IR_VERSION = 1  # bump when the conversion recipe changes


def cached_ir(
    module: Any, model_id: str, example_inputs: tuple | Callable[[], tuple], input_shapes: list[list[int]], cache_dir: Path, digest: str | None = None
) -> Path:
    """The OpenVINO IR (`model.xml` + `model.bin` in one directory) of `module`, converted on first use; -1 in
    `input_shapes` marks a dynamic dimension. `digest`: as for onnx_runtime.cached_export (`module` is then a
    function that builds it, called only on a cache miss)."""
    import openvino as ov

    cache_dir.mkdir(parents=True, exist_ok=True)
    raw = f"{model_id}|{digest or weights_digest(module)}|torch {torch_version()}|openvino {ov.__version__}|{IR_VERSION}"
    target = cache_dir / f"{slug(model_id)}-{hashlib.sha256(raw.encode()).hexdigest()[:20]}.openvino"

    def build(out: Path) -> None:
        import warnings

        import torch

        started = time.perf_counter()
        out.mkdir()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notices about Python control flow on shapes: shapes stay dynamic
            example = example_inputs() if callable(example_inputs) else example_inputs
            model = ov.convert_model((module() if digest else module).eval(), example_input=example,
                                     input=[ov.PartialShape(shape) for shape in input_shapes])
        ov.save_model(model, out / "model.xml", compress_to_fp16=False)  # fp32 weights; precision is chosen at compile
        log.info("converted %s to OpenVINO IR in %.1f s: %s", model_id, time.perf_counter() - started, target)

    return build_once(target, build)


class OvEncoder:
    """One compiled model and one infer request, with its own threads; runs are serialized (`lock`).
    `precision` is "bfloat16" or "float32" (OpenVINO's inference precision: weights and matmuls; its kernels keep
    LayerNorm and softmax accumulations in fp32)."""

    def __init__(self, ir_dir: Path, threads: int, precision: str) -> None:
        import openvino as ov

        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": {"bfloat16": "bf16", "float32": "f32"}[precision],
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = ov.Core().compile_model(str(ir_dir / "model.xml"), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.lock = threading.RLock()  # reentrant: callers may hold it around run(), as they do OrtEncoder's

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """The model's one output (a copy: the request reuses its buffers)."""
        with self.lock:
            return np.array(self.request.infer(list(inputs))[0])


class OvTransformer(OvEncoder):
    """A Hugging Face encoder on OpenVINO, called as OrtEncoder is: run(**tokenizer_outputs)."""

    def __init__(self, ir_dir: Path, input_names: list[str], threads: int, precision: str) -> None:
        super().__init__(ir_dir, threads, precision)
        self.input_names = input_names

    def run(self, *inputs: np.ndarray, **named: np.ndarray) -> np.ndarray:
        return super().run(*inputs, *(named[name] for name in self.input_names))


def convert_transformer(source: TransformerSource, model_id: str, cache_dir: Path, threads: int, precision: str) -> OvTransformer:
    """onnx_runtime.export_transformer's counterpart: the encoder converted (cached) and compiled for this CPU."""
    ir = cached_ir(lambda: source.module(), model_id, source.example_inputs, [[-1, -1] for _ in source.input_names],
                   cache_dir, digest=source.digest)
    return OvTransformer(ir, source.input_names, threads or torch_threads(), precision)
