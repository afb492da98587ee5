"""Highlights (issue 18): why a hit matched, for a UI. The query's terms by the collection's analyzer, found in
the hit's text by the same analyzer with each term's surface range (Analyzer.spans: a Korean morpheme maps back
to the characters it was read from), and the sentence holding the most of them as a snippet."""

from __future__ import annotations

import re
from typing import Callable, Iterable

from searchsvc.domain.types import Highlight
from searchsvc.retrieve.analyzers import Span

# A sentence ends at . ! ? (and their CJK forms) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def highlight(text: str, query_terms: Iterable[str], spans: Callable[[str], list[Span]]) -> Highlight:
    wanted = set(query_terms)
    found = sorted((start, end, term) for term, start, end in spans(text) if term in wanted)
    merged: list[list[int]] = []
    for start, end, _ in found:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    best, best_score = (0, len(text)), (-1, -1)
    for start, end in _sentences(text):
        terms = {t for s, e, t in found if start <= s < end}
        score = (len(terms), sum(1 for s, _, _ in found if start <= s < end))
        if score > best_score:  # the earlier sentence wins ties
            best, best_score = (start, end), score
    return Highlight([(s, e) for s, e in merged], *best)


def _sentences(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence, surrounding whitespace excluded."""
    out, start = [], 0
    for m in [*_SENTENCE_END.finditer(text), None]:
        end = m.start() if m else len(text)
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append((start + lead, start + len(piece.rstrip())))
        if m:
            start = m.end()
    return out or [(0, len(text))]
