"""Extractive answers: the sentences of the context that best answer the query, quoted with citations.

Used when no LLM is configured or it failed to load, or when the request asks for it. Never invents text:
every sentence is copied from a source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from searchsvc.domain.text import content_tokens, split_sentences
from searchsvc.domain.types import Hit

MIN_CHARS, MAX_CHARS = 20, 500


def extractive_answer(
    query: str,
    sources: Sequence[Hit],
    embed_query: Callable[[str], np.ndarray],
    embed_passages: Callable[[Sequence[str]], np.ndarray],
    max_sentences: int = 2,
) -> str:
    """The top sentences by score_sentences, each ending with its [n] marker."""
    candidates: list[tuple[int, str]] = []
    for n, hit in enumerate(sources, start=1):
        for start, end in split_sentences(hit.text):
            sentence = hit.text[start:end]
            if MIN_CHARS <= len(sentence) <= MAX_CHARS:
                candidates.append((n, sentence))
    if not candidates:  # only very short or very long sentences: quote the top passage's head
        if not sources:
            return ""
        return sources[0].text[:MAX_CHARS].strip() + " [1]"
    score = score_sentences(query, [s for _, s in candidates], embed_query, embed_passages)
    order = np.argsort(-score, kind="stable")[:max_sentences]
    # A second sentence only if it is nearly as good as the first: padding with weak ones misleads.
    best = [candidates[i] for i in order if score[i] >= 0.8 * score[order[0]]]
    return " ".join(f"{s.rstrip()} [{n}]" for n, s in best)


def score_sentences(
    query: str, sentences: Sequence[str], embed_query: Callable[[str], np.ndarray],
    embed_passages: Callable[[Sequence[str]], np.ndarray],
) -> np.ndarray:
    """0.5 x cosine (the collection's embedder) + 0.5 x the share of the query's content terms each sentence holds.

    The lexical half keeps this useful where the embedder reads the language poorly (Korean with MiniLM)."""
    query_terms = content_tokens(query)
    q = np.asarray(embed_query(query), dtype=np.float32)
    vectors = np.asarray(embed_passages(list(sentences)), dtype=np.float32)
    cosine = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q) + 1e-9)
    lexical = np.array([len(query_terms & content_tokens(s)) / max(1, len(query_terms)) for s in sentences])
    return 0.5 * cosine + 0.5 * lexical
