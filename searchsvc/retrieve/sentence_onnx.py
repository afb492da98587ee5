"""A sentence-transformers bi-encoder (all-MiniLM-L6-v2, or one `searchsvc train-embedder` wrote) on ONNX Runtime,
as a LlamaIndex embedding. Supported: Transformer -> Pooling (mean or CLS) -> optional Normalize, which covers the
models we ship and train; anything else raises ValueError and stays on torch (ModelRegistry).

The first load reads the SentenceTransformer for its tokenizer, pooling and the module to export, and caches what
serving needs beside the export (SentencePipeline). Every later load reads only those files and the export: no
sentence-transformers, transformers or torch import, which took ~10 s of each server start on 2 cores.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from searchsvc.retrieve import onnx_runtime
from searchsvc.retrieve.batching import QueryBatcher

log = logging.getLogger(__name__)


def _pooling(model: Any) -> tuple[str, bool] | None:
    """("mean" | "cls", normalize) for a Transformer -> Pooling [-> Normalize] pipeline, else None."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    modules = list(model)
    if len(modules) not in (2, 3) or not isinstance(modules[0], Transformer) or not isinstance(modules[1], Pooling):
        return None
    if len(modules) == 3 and not isinstance(modules[2], Normalize):
        return None
    mode = modules[1].pooling_mode
    return (mode, len(modules) == 3) if mode in ("mean", "cls") else None


@dataclass(frozen=True)
class SentencePipeline:
    """What serving a SentenceTransformer needs besides its exported encoder: pooling, the tokenizer as the
    SentenceTransformer configured it (tokenizer.json for the `tokenizers` library: normalizer, truncation
    length, special tokens), and the facts the export is keyed and shaped by."""

    pool: str  # "mean" | "cls"
    normalize: bool
    max_length: int
    dimension: int
    input_names: list[str]
    pad_id: int
    pad_token: str
    pad_type_id: int
    weights_digest: str  # onnx_runtime.TransformerSource.digest of its Transformer module
    num_heads: int
    hidden_size: int

    @classmethod
    def of(cls, st: Any) -> tuple["SentencePipeline", str]:
        """The pipeline of a loaded SentenceTransformer, and its tokenizer as JSON; ValueError if unsupported."""
        pool, normalize = _pooling(st) or ("", False)
        if not pool:
            raise ValueError("not a Transformer -> Pooling(mean|cls) [-> Normalize] model")
        tokenizer, model = st.tokenizer, st[0].auto_model
        source = onnx_runtime.TransformerSource.of(model, tokenizer)
        pipeline = cls(pool, normalize, st.max_seq_length, int(st.get_embedding_dimension()), source.input_names,
                       tokenizer.pad_token_id, tokenizer.pad_token, tokenizer.pad_token_type_id, source.digest,
                       source.num_heads, source.hidden_size)
        return pipeline, tokenizer.backend_tokenizer.to_str()

    def tokenizer(self, tokenizer_json: str) -> onnx_runtime.BatchTokenizer:
        return onnx_runtime.BatchTokenizer(tokenizer_json, self.max_length, self.input_names, self.pad_id, self.pad_token,
                                           self.pad_type_id)


def cached_pipeline(model_path: str, model_id: str, cache_dir: Path, reference: Callable[[], Any]) -> tuple[SentencePipeline, Any]:
    """The model's pipeline and tokenizer: cached (onnx_runtime.cached_model_facts), else read from
    `reference()`, the loaded SentenceTransformer."""

    def read() -> tuple[dict[str, Any], str]:
        pipeline, tokenizer_json = SentencePipeline.of(reference())
        return asdict(pipeline), tokenizer_json

    facts, tokenizer_json = onnx_runtime.cached_model_facts(model_path, model_id, cache_dir, "sentence", read)
    pipeline = SentencePipeline(**facts)
    return pipeline, pipeline.tokenizer(tokenizer_json)


class OnnxSentenceEmbedding(BaseEmbedding):
    """Vectors equal to SentenceTransformer.encode's (cosine >= 0.9999 in tests/retrieve/test_onnx_engines.py). Texts are
    length-sorted and batched, so a batch pads to its longest member only."""

    model_path: str = Field(description="The sentence-transformers folder.")
    normalize: bool = Field(default=True, description="L2-normalise (the model's own Normalize module decides).")
    max_length: int = Field(default=256, description="Tokens per text (the model's max_seq_length).")

    _tokenizer: Any = PrivateAttr()
    _encoder: Any = PrivateAttr()
    _passage_encoder: Any = PrivateAttr()
    _pool: str = PrivateAttr()
    _batcher: Any = PrivateAttr()
    _dimension: int = PrivateAttr()

    def __init__(
        self, model_path: str, cache_dir: Path, threads: int, model_id: str = "", engine: str = "onnx",
        precision: str = "float32", passage_engine: str = "", **kwargs: Any,
    ) -> None:
        """`engine`: "onnx" or "openvino" (in `precision`) for queries, and for passages unless `passage_engine`
        names the other one (models.ModelRegistry: passages on OpenVINO bf16 where AMX is usable)."""

        @functools.cache
        def reference() -> Any:  # the SentenceTransformer: loaded only if something is not cached yet
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(model_path, device="cpu")

        model_id = model_id or model_path
        try:
            pipeline, tokenizer = cached_pipeline(model_path, model_id, cache_dir, reference)
        except ValueError as exc:
            raise ValueError(f"{model_path}: {exc}") from exc
        super().__init__(model_path=model_path, normalize=pipeline.normalize, max_length=pipeline.max_length, **kwargs)
        self._tokenizer = tokenizer
        source = onnx_runtime.TransformerSource(lambda: reference()[0].auto_model, pipeline.weights_digest,
                                                pipeline.input_names, pipeline.num_heads, pipeline.hidden_size)

        def encoder(name: str):
            if name == "openvino":
                from searchsvc.retrieve import openvino_runtime

                return openvino_runtime.convert_transformer(source, model_id, cache_dir, threads, precision)
            return onnx_runtime.export_transformer(source, model_id, cache_dir, threads)

        self._encoder = encoder(engine)
        self._passage_encoder = encoder(passage_engine) if passage_engine and passage_engine != engine else self._encoder
        self._pool = pipeline.pool
        self._batcher = QueryBatcher(self._encode, name="sentence-query-batcher")  # concurrent queries share passes
        self._dimension = pipeline.dimension

    @classmethod
    def class_name(cls) -> str:
        return "OnnxSentenceEmbedding"

    def close(self) -> None:
        """Stop the query batcher's thread (ModelRegistry.release_unused), which would keep this model alive."""
        self._batcher.close()

    @property
    def dimension(self) -> int:
        return self._dimension

    def _encode(self, texts: Sequence[str], passages: bool = False) -> np.ndarray:
        encoder = self._passage_encoder if passages else self._encoder
        out = np.zeros((len(texts), self._dimension), np.float32)
        if not texts:
            return out
        lengths = [len(t) for t in texts]  # characters: a cheap proxy for tokens, enough to group similar lengths
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        for a in range(0, len(order), self.embed_batch_size):
            idx = order[a : a + self.embed_batch_size]
            inputs = self._tokenizer([texts[i] for i in idx])
            with encoder.lock:
                hidden = encoder.run(**inputs)
            pooled = hidden[:, 0] if self._pool == "cls" else onnx_runtime.mean_pool(hidden, inputs["attention_mask"])
            out[idx] = pooled
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts), passages=True)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self._encode(list(queries))

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._batcher(query).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encode([text], passages=True)[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encode(texts, passages=True).tolist()
