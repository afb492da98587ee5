"""Bring-your-own vectors: collections whose embeddings the callers compute (embedding_model "external").

Such a collection still holds a LlamaIndex `VectorStoreIndex`, which wants an embed model; `ExternalEmbedding` is
that model. It never computes anything: a text reaching it means a caller left out the vector that should have
come with it, and it says which field. Vectors from callers are checked and unit-normalized here, once, so the
dense leg's inner product stays cosine whoever made the vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import Field

from searchsvc.errors import InvalidArgument

EXTERNAL_MODEL = "external"
MAX_DIMENSION = 4096


def unit_vector(values: Sequence[float] | np.ndarray, dimension: int, field_path: str) -> np.ndarray:
    """`values` as a unit-length float32 vector, or InvalidArgument naming `field_path`."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.ndim != 1 or len(vector) != dimension:
        raise InvalidArgument(field_path, f"has {vector.size} values; the collection's dimension is {dimension}")
    if not np.isfinite(vector).all():
        raise InvalidArgument(field_path, f"value {int(np.flatnonzero(~np.isfinite(vector))[0])} is not finite")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm == 0.0 or not np.isfinite(np.float32(1.0 / norm)):
        raise InvalidArgument(field_path, "must not be all zeros (cosine is undefined)")
    return (vector / np.float32(norm)).astype(np.float32)


class ExternalEmbedding(BaseEmbedding):
    """The embed model of an "external" collection: knows its dimension, embeds nothing."""

    model_name: str = Field(default=EXTERNAL_MODEL)
    dimension: int = Field(gt=0, le=MAX_DIMENSION)

    @classmethod
    def class_name(cls) -> str:
        return "ExternalEmbedding"

    def _missing(self, field_path: str) -> InvalidArgument:
        return InvalidArgument(field_path, f"required: this collection's vectors come from its callers ({self.dimension}-d)")

    def _get_query_embedding(self, query: str) -> Embedding:
        raise self._missing("query_vector")

    async def _aget_query_embedding(self, query: str) -> Embedding:
        raise self._missing("query_vector")

    def _get_text_embedding(self, text: str) -> Embedding:
        raise self._missing("documents[].vector")

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        raise self._missing("documents[].vector")

    def embed_passages(self, texts: Sequence[str]) -> Any:
        raise self._missing("documents[].vector")
