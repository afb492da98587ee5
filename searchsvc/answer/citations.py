"""Citations: map the [n] markers of an answer to sources and quote the span of each source that supports it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from searchsvc.answer.types import Citation
from searchsvc.domain.text import citations as markers_in
from searchsvc.domain.text import content_tokens, is_refusal, split_sentences
from searchsvc.domain.types import Hit

_MARKER = re.compile(r"\[(\d+)\]")


def strip_invalid_markers(answer: str, n_sources: int) -> str:
    """Drop markers that point at no source ([7] with five sources): a dangling citation is worse than none."""
    return _MARKER.sub(lambda m: m.group(0) if 1 <= int(m.group(1)) <= n_sources else "", answer)


def source_token_sets(sources: Mapping[int, str]) -> dict[int, set[str]]:
    """Content tokens of each numbered source, computed once per answer (every streamed window uses them)."""
    return {n: content_tokens(passage, generous=True) for n, passage in sources.items()}


def attribute_uncited(text: str, source_tokens: Mapping[int, set[str]], min_overlap: float) -> tuple[str, set[int]]:
    """Append a marker to each sentence the model left uncited: the source sharing the largest share of the
    sentence's content tokens, if that share reaches `min_overlap`. Returns (text, sources added this way).

    Small local models often answer correctly but forget the [n] (Qwen2.5-1.5B in Korean, mostly); a claim
    with no marker can't be checked by the reader. Post-hoc attribution by lexical overlap is the same
    measure the grounding rail uses, so an added marker never points at a source the rail would reject.
    """
    if not source_tokens:
        return text, set()
    out, pos, added = [], 0, set()
    for start, end in split_sentences(text):
        sentence = text[start:end]
        tokens = content_tokens(sentence)
        if markers_in(sentence) or len(tokens) < 3 or is_refusal(sentence):
            continue
        n, support = max(((n, len(tokens & t)) for n, t in source_tokens.items()), key=lambda x: (x[1], -x[0]))
        if support / len(tokens) < min_overlap:
            continue
        out.append(text[pos:end])
        out.append(f" [{n}]")
        pos = end
        added.add(n)
    out.append(text[pos:])
    return "".join(out), added


def extract_citations(answer: str, sources: Sequence[Hit], inferred: set[int] = frozenset()) -> list[Citation]:
    """One Citation per cited source, in order of first appearance. `inferred`: sources whose markers the
    server added (attribute_uncited) rather than the model."""
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
        where = hit.typed_metadata
        page = where.get("page", where.get("slide", 0))
        citations.append(Citation(n, hit.chunk_id, hit.document_id, hit.text[start:end], start, end, n in inferred,
                                  page if isinstance(page, int) and not isinstance(page, bool) else 0,
                                  str(where.get("source", ""))))
    return citations


def best_supporting_span(passage: str, claim: str) -> tuple[int, int]:
    """The passage sentence sharing the most content tokens with the claim (the first sentence on a tie)."""
    want = content_tokens(claim)
    spans = split_sentences(passage) or [(0, len(passage))]
    return max(spans, key=lambda s: len(want & content_tokens(passage[s[0] : s[1]])))
