"""A sentence-transformers bi-encoder (all-MiniLM-L6-v2, or one `searchsvc train-embedder` wrote) on ONNX Runtime,
as a LlamaIndex embedding. The SentenceTransformer is loaded from the same folder for its tokenizer, pooling and
the module to export; then only its tokenizer is kept. Supported: Transformer -> Pooling (mean or CLS) ->
optional Normalize, which covers the models we ship and train; anything else raises ValueError and stays on
torch (ModelRegistry).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Sequence

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


class OnnxSentenceEmbedding(BaseEmbedding):
    """Vectors equal to SentenceTransformer.encode's (cosine >= 0.9999 in tests/test_onnx_engines.py). Texts are
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
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model_path, device="cpu")
        pool, normalize = _pooling(st) or ("", False)
        if not pool:
            raise ValueError(f"{model_path}: not a Transformer -> Pooling(mean|cls) [-> Normalize] model")
        super().__init__(model_path=model_path, normalize=normalize, max_length=st.max_seq_length, **kwargs)
        self._tokenizer = st.tokenizer

        def encoder(name: str):
            if name == "openvino":
                from searchsvc.retrieve import openvino_runtime

                return openvino_runtime.convert_transformer(st[0].auto_model, st.tokenizer, model_id or model_path, cache_dir, threads, precision)
            return onnx_runtime.export_transformer(st[0].auto_model, st.tokenizer, model_id or model_path, cache_dir, threads)

        self._encoder = encoder(engine)
        self._passage_encoder = encoder(passage_engine) if passage_engine and passage_engine != engine else self._encoder
        self._pool = pool
        self._batcher = QueryBatcher(self._encode, name="sentence-query-batcher")  # concurrent queries share passes
        self._dimension = int(st.get_embedding_dimension())

    @classmethod
    def class_name(cls) -> str:
        return "OnnxSentenceEmbedding"

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
            enc = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
            inputs = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
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
