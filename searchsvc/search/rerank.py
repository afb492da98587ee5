"""Rerank stage: a sentence-transformers CrossEncoder scores (query, chunk) pairs.

Not LlamaIndex's SentenceTransformerRerank: it loads a model per instance (we share one per model across
collections), defaults to trust_remote_code=True, and writes into the nodes' metadata, which here are the
docstore's own objects.

Calibration: every reranker is a single-logit cross-encoder and its score is sigmoid(logit), in [0, 1]
whatever activation the model was saved with, so `similarity_cutoff` means the same on every collection.
`searchsvc train-reranker` folds a Platt scaling fitted on judged queries into the head, which makes that
sigmoid a calibrated relevance probability for the models it trains.

Language: a reranker whose vocabulary has no Hangul syllables (all-MiniLM's English WordPiece splits Korean into
jamo) cannot read Korean; on a Korean query, or candidates mostly in Korean, the stage is skipped and the
response says why, instead of reordering the fused ranking by noise.
"""

from __future__ import annotations

import re
from typing import Sequence

from searchsvc.retrieve.language import detect

_HANGUL_SYLLABLE = re.compile("[\uac00-\ud7a3]")  # not jamo: English WordPiece vocabularies hold those


def is_korean(text: str) -> bool:
    return detect(text) == "ko"  # mixed text such as "B2B e커머스 전략" is Korean


def reads_korean(tokenizer, min_tokens: int = 100) -> bool:
    """Whether the vocabulary has Korean words: multilingual vocabularies (XLM-R, mBERT) hold thousands of
    Hangul-syllable tokens, English ones none."""
    return sum(1 for token in tokenizer.get_vocab() if _HANGUL_SYLLABLE.search(token)) >= min_tokens


class CrossEncoderReranker:
    def __init__(self, model, name: str, batch_size: int = 32) -> None:
        self.model = model  # sentence_transformers.CrossEncoder, loaded by ModelRegistry.cross_encoder
        self.name = name
        self.batch_size = batch_size
        self.reads_korean = reads_korean(model.tokenizer)

    def unreadable(self, query: str, texts: Sequence[str]) -> str:
        """Why this reranker must not score these pairs; "" when it can."""
        if self.reads_korean:
            return ""
        if is_korean(query) or 2 * sum(map(is_korean, texts)) > len(texts):
            return f"reranker {self.name} has no Korean vocabulary; kept the fused order"
        return ""

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """sigmoid(logit) per text, in [0, 1]. Pairs longer than the model's max_length are truncated (the
        passage side first: the tokenizer's longest_first strategy)."""
        if not texts:
            return []
        import torch

        scores = self.model.predict(
            [(query, t) for t in texts], batch_size=self.batch_size, activation_fn=torch.nn.Sigmoid(), show_progress_bar=False
        )
        return [float(s) for s in scores]
