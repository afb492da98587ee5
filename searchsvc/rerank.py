"""Rerank stage: a sentence-transformers CrossEncoder scores (query, chunk) pairs.

Not LlamaIndex's SentenceTransformerRerank: it loads a model per instance (we share one per model across
collections), defaults to trust_remote_code=True, and writes into the nodes' metadata, which here are the
docstore's own objects. Scores are the model's output after its default activation (sigmoid for single-label
cross-encoders, so in [0, 1]); that is what `similarity_cutoff` compares against when reranking ran.
"""

from __future__ import annotations

from typing import Sequence


class CrossEncoderReranker:
    def __init__(self, model, name: str, batch_size: int = 32) -> None:
        self.model = model  # sentence_transformers.CrossEncoder
        self.name = name
        self.batch_size = batch_size

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        scores = self.model.predict([(query, t) for t in texts], batch_size=self.batch_size, show_progress_bar=False)
        return [float(s) for s in scores]
