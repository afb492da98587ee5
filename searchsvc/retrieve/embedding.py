"""A collection's embed model on whole batches, for every storage backend."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding


def embed_query(model: BaseEmbedding, query: str) -> np.ndarray:
    return np.asarray(model.get_query_embedding(query), dtype=np.float32)


def embed_passages(model: BaseEmbedding, texts: Sequence[str]) -> np.ndarray:
    """Embed a whole ingest batch in one call.

    For sentence-transformers models this calls `SentenceTransformer.encode` on all texts at once: it sorts
    them by length before batching, which cuts padding. LlamaIndex's `get_text_embedding_batch` first cuts
    the list into groups of `embed_batch_size` and encodes each separately, which measured 20% slower on
    64-document requests of mixed length (bench: 28.9 vs 35.1 docs/s).
    """
    if hasattr(model, "embed_passages"):  # E5Embedding, the ONNX sentence embedder: they batch by length themselves
        return np.asarray(model.embed_passages(list(texts)), dtype=np.float32)
    inner = getattr(model, "_model", None)
    if hasattr(inner, "encode"):
        return np.asarray(
            # show_progress_bar: sentence-transformers draws a tqdm bar per call when its logger is at INFO, i.e. in
            # every server log at the default level; a server log is for operators.
            inner.encode(list(texts), batch_size=model.embed_batch_size, normalize_embeddings=model.normalize, convert_to_numpy=True,
                         show_progress_bar=False),
            dtype=np.float32,
        )
    return np.asarray(model.get_text_embedding_batch(list(texts)), dtype=np.float32)
