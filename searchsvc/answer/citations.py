"""Citations: map the [n] markers of an answer to sources and quote the span of each source that supports it."""

from __future__ import annotations

import re
from collections.abc import Sequence

from searchsvc.text import citations as markers_in
from searchsvc.text import content_tokens, split_sentences
from searchsvc.answer.types import Citation
from searchsvc.types import Hit

_MARKER = re.compile(r"\[(\d+)\]")


def strip_invalid_markers(answer: str, n_sources: int) -> str:
    """Drop markers that point at no source ([7] with five sources): a dangling citation is worse than none."""
    return _MARKER.sub(lambda m: m.group(0) if 1 <= int(m.group(1)) <= n_sources else "", answer)


def extract_citations(answer: str, sources: Sequence[Hit]) -> list[Citation]:
    """One Citation per cited source, in order of first appearance."""
    citing: dict[int, list[str]] = {}
    for start, end in split_sentences(answer):
        sentence = answer[start:end]
        for n in markers_in(sentence):
            if 1 <= n <= len(sources):
                citing.setdefault(n, []).append(sentence)
    citations = []
    for n, sentences in citing.items():
        hit = sources[n - 1]
        start, end = best_supporting_span(hit.text, " ".join(sentences))
        citations.append(Citation(n, hit.chunk_id, hit.document_id, hit.text[start:end], start, end))
    return citations


def best_supporting_span(passage: str, claim: str) -> tuple[int, int]:
    """The passage sentence sharing the most content tokens with the claim (the first sentence on a tie)."""
    want = content_tokens(claim)
    spans = split_sentences(passage) or [(0, len(passage))]
    return max(spans, key=lambda s: len(want & content_tokens(passage[s[0] : s[1]])))
