"""Encoders on ONNX Runtime: a torch module exported once, optimized, cached, and run by an InferenceSession.

Why by hand: sentence-transformers' `backend="onnx"` and LlamaIndex's optimum embeddings need optimum-onnx, which
pins transformers < 4.58 (we run 5.x). What is left to us is small: `torch.onnx.export` of the module the torch
engine already runs (same weights), ORT's own transformer optimizer (fused attention, LayerNorm, GELU), and a
cache. The cache key covers the model id, a digest of the weights, and the torch / onnxruntime versions plus
EXPORT_VERSION, so a changed model or runtime exports again and an unchanged one never does.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from searchsvc.platform.files import fsync_dir, user_cache_dir

log = logging.getLogger(__name__)
EXPORT_VERSION = 1  # bump when the export or optimization recipe changes


def HiddenStates(model: Any, input_names: list[str], output: str = "last_hidden_state") -> Any:
    """A torch module taking `input_names` positionally (what the exporter traces) and returning the model's
    `output` (last_hidden_state of an encoder, logits of a classifier)."""
    import torch

    class _HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return getattr(self.model(**dict(zip(input_names, inputs))), output)

    return _HiddenStates()


def default_cache_dir() -> Path:
    return user_cache_dir() / "onnx"


def weights_digest(module: Any) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def torch_version() -> str:
    """torch.__version__ (e.g. "2.13.0+cpu") without importing torch: a cached export loads without it."""
    return importlib.metadata.version("torch")


def slug(model_id: str) -> str:
    """A model id as the start of a cache file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)[-60:]


def export_key(model_id: str, digest: str) -> str:
    import onnxruntime

    raw = f"{model_id}|{digest}|torch {torch_version()}|onnxruntime {onnxruntime.__version__}|{EXPORT_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def cached_export(
    module: Any,
    model_id: str,
    example_inputs: tuple | Callable[[], tuple],
    input_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    cache_dir: Path,
    *,
    num_heads: int,
    hidden_size: int,
    output: str = "last_hidden_state",
    digest: str | None = None,
) -> Path:
    """The optimized ONNX file of `module` (its one output named `output`), exported on first use. With `digest`
    (of the weights' source, e.g. a model file), `module` is a function that builds the module, called only when
    the export must be made: a cached model then loads without building its torch twin. `example_inputs` may
    be a function too (so that a cache hit need not import torch)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{slug(model_id)}-{export_key(model_id, digest or weights_digest(module))}.onnx"

    def build(out: Path) -> None:
        started = time.perf_counter()
        raw = out.with_name("raw.onnx")
        example = example_inputs() if callable(example_inputs) else example_inputs
        _export(module() if digest else module, example, input_names, dynamic_axes, raw, output)
        _optimize(raw, out, num_heads, hidden_size)
        log.info("exported %s to ONNX in %.1f s: %s", model_id, time.perf_counter() - started, target)

    return build_once(target, build)


class BuildElsewhere(Exception):
    """A derived model file is missing and this thread makes none (inside `builds_elsewhere`)."""


_builds = threading.local()


@contextmanager
def builds_elsewhere():
    """Within it, build_once raises BuildElsewhere instead of building on this thread. A server's ModelRegistry
    loads models so, and makes what is missing in a child process: an export imports torch and transformers
    (~500 MB that never leaves the process), which a model whose files are made needs none of."""
    previous = getattr(_builds, "elsewhere", False)
    _builds.elsewhere = True
    try:
        yield
    finally:
        _builds.elsewhere = previous


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target` (a file or a directory), made by `build(path)` unless it exists. Concurrent callers (threads or
    processes) wait for one build; it appears by an atomic rename, whole or not at all, and a failed build leaves
    nothing."""
    if target.exists():
        return target
    if getattr(_builds, "elsewhere", False):
        raise BuildElsewhere(str(target))
    with open(target.parent / ".export.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            out = Path(tmp) / target.name
            build(out)
            os.replace(out, target)
        fsync_dir(target.parent)
    return target


@dataclass(frozen=True)
class TransformerSource:
    """A Hugging Face transformer (encoder or sequence classifier) to export, described without building it:
    `build()` makes the torch model and is called only when the export is not cached, so a cached model loads
    without importing transformers or sentence-transformers (most of a server's start-up otherwise)."""

    build: Callable[[], Any]
    digest: str  # weights_digest of HiddenStates(model, input_names): the cache key
    input_names: list[str]
    num_heads: int
    hidden_size: int

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> "TransformerSource":
        """A model already built, with the inputs its tokenizer produces."""
        names = input_names(tokenizer.model_input_names)
        return cls(lambda: model, weights_digest(HiddenStates(model, names)), names,
                   model.config.num_attention_heads, model.config.hidden_size)

    def module(self, output: str = "last_hidden_state") -> Any:
        model = self.build()
        # Eager attention exports as the MatMul/Softmax pattern ORT's optimizer fuses into one Attention op per
        # layer; SDPA's export (NaN guards on the mask) is left unfused: the same arithmetic, several times more kernels.
        model.set_attn_implementation("eager")
        return HiddenStates(model, self.input_names, output)

    def example_inputs(self) -> tuple:
        import torch

        return tuple(torch.ones(2, 8, dtype=torch.int64) for _ in self.input_names)


def input_names(model_input_names: list[str]) -> list[str]:
    """The encoder inputs a tokenizer produces, in the order the export takes them."""
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in model_input_names]


def folder_digest(folder: Path) -> str:
    """sha256 over every file under `folder` (relative path and bytes, in path order): any change to a model's
    weights, config or tokenizer files changes it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}:{path.stat().st_size}".encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


FACTS_VERSION = 1  # bump when what cached_model_facts stores, or how, changes


def cached_model_facts(
    model_path: str, model_id: str, cache_dir: Path, kind: str, read: Callable[[], tuple[dict[str, Any], str]]
) -> tuple[dict[str, Any], str]:
    """What loading a sentence-transformers model tells its ONNX engine (`read()`: JSON-able facts, and the
    tokenizer as the library set it up, as tokenizer.json for the `tokenizers` library), cached in
    `<cache_dir>/<model>-<key>.<kind>/` so that later loads skip importing sentence-transformers, transformers
    and torch and building the model (~10 s of a start on 2 cores). The key covers the model folder's files
    and the sentence-transformers / transformers versions (they decide how the tokenizer is set up). A model
    that is not a local folder (a hub id) is read every time."""
    folder = Path(model_path)
    if not folder.is_dir():
        return read()
    versions = "|".join(f"{d} {importlib.metadata.version(d)}" for d in ("sentence-transformers", "transformers"))
    raw = f"{kind}|{model_id}|{folder_digest(folder)}|{versions}|{FACTS_VERSION}"
    cache_dir.mkdir(parents=True, exist_ok=True)

    def build(out: Path) -> None:
        facts, tokenizer_json = read()
        out.mkdir()
        (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (out / "facts.json").write_text(json.dumps(facts, indent=1))

    directory = build_once(cache_dir / f"{slug(model_id)}-{hashlib.sha256(raw.encode()).hexdigest()[:20]}.{kind}", build)
    return json.loads((directory / "facts.json").read_text()), (directory / "tokenizer.json").read_text(encoding="utf-8")


class BatchTokenizer:
    """A `tokenizers.Tokenizer` (from the tokenizer.json cached_model_facts keeps) called as the transformers
    tokenizer is with padding=True, truncation=True (longest_first for pairs) and max_length: texts, or (a, b)
    pairs, cut to max_length tokens (special tokens included) and padded right to the batch's longest. Returns
    the encoder's inputs by name, int64, and always the attention mask (pooling needs it)."""

    FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}

    def __init__(self, tokenizer_json: str, max_length: int, input_names: list[str], pad_id: int, pad_token: str,
                 pad_type_id: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.enable_truncation(max_length, strategy="longest_first")
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=pad_type_id)
        self.input_names = list(dict.fromkeys([*input_names, "attention_mask"]))

    def __call__(self, inputs: list[str] | list[tuple[str, str]]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(inputs)
        return {n: np.array([getattr(e, self.FIELDS[n]) for e in encodings], dtype=np.int64) for n in self.input_names}

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()


def export_transformer(
    source: TransformerSource, model_id: str, cache_dir: Path, threads: int, output: str = "last_hidden_state"
) -> OrtEncoder:
    """`source` exported (cached) and loaded in a session with `threads` (0: torch's setting)."""
    names = source.input_names
    path = cached_export(
        lambda: source.module(output), model_id, source.example_inputs, names, {n: {0: "batch", 1: "sequence"} for n in names},
        cache_dir, num_heads=source.num_heads, hidden_size=source.hidden_size, output=output, digest=source.digest,
    )
    return OrtEncoder(path, threads or torch_threads())


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _export(module: Any, example_inputs: tuple, input_names: list[str], dynamic_axes: dict, path: Path, output: str) -> None:
    import warnings

    import torch

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notices about Python control flow on shapes: shapes are dynamic axes
        # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript and emits graphs ORT's
        # transformer optimizer does not fuse yet.
        torch.onnx.export(
            module.eval(), example_inputs, str(path), input_names=input_names, output_names=[output],
            dynamic_axes={**dynamic_axes, output: {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def _optimize(raw: Path, out: Path, num_heads: int, hidden_size: int) -> None:
    """ORT's BERT optimizer: fuses attention (one op per layer instead of ~15), LayerNorm and GELU, in fp32."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1)
    model.save_model_to_file(str(out))


def cached_int8(fp32_path: Path, keep_fp32: str) -> Path:
    """A dynamically quantized copy of an exported model beside it: int8 weights per output channel, activations
    quantized per batch; MatMuls whose node name matches the regex `keep_fp32` stay fp32 (for BERT's FFN down-projection,
    whose GELU outputs have the outliers that per-tensor activation scales round badly). Cached like the export."""
    tag = hashlib.sha256(f"int8|per-channel|keep {keep_fp32}|{EXPORT_VERSION}".encode()).hexdigest()[:8]

    def build(out: Path) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        keep = [n.name for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "MatMul" and re.search(keep_fp32, n.name)]
        quantize_dynamic(
            str(fp32_path), str(out), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep,
            # The optimizer's fused ops (Attention, SkipLayerNormalization) carry no inferred output types.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        log.info("quantized %s to int8 (%d MatMuls kept fp32)", fp32_path.name, len(keep))

    return build_once(fp32_path.with_name(f"{fp32_path.stem}-int8-{tag}.onnx"), build)


class OrtEncoder:
    """One InferenceSession with its own threads. Runs are serialized (`lock`): two at once would only
    oversubscribe the cores, as with torch."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spinning after a run: the server's other threads (search, ingest, the LLM) need the cores between
        # encoder calls, as with OMP_WAIT_POLICY=PASSIVE for torch.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.lock = threading.Lock()

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        """The model's one output for these inputs (extra keys, e.g. a tokenizer's, are ignored)."""
        return self.session.run(None, {name: inputs[name] for name in self.input_names})[0]


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the positions where mask is 1 (what sentence-transformers' Pooling and e5 use)."""
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
