"""Collection languages and what each one defaults to: analyzer, embedder, fusion.

`language` is set per collection ("en", "ko", "auto"; server default "auto"). It only fills in what the
collection config and the search request leave empty: an explicit analyzer, embedding model, fusion or weight
always wins. "auto" collections analyze each document by its script (the multilingual analyzer), embed with a
multilingual model, and pick fusion defaults per query from the query's own script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from searchsvc.domain.types import Fusion
from searchsvc.errors import InvalidArgument
from searchsvc.retrieve.analyzers import HANGUL_SCRIPT
from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, E5_MODEL

LANGUAGES = ("auto", "en", "ko")

_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class FusionDefaults:
    fusion: Fusion
    dense_weight: float = 1.0
    keyword_weight: float = 1.0


@dataclass(frozen=True)
class LanguageDefaults:
    analyzer: str
    embedding_model: str


COLLECTION_DEFAULTS = {
    "en": LanguageDefaults(analyzer="english", embedding_model=DEFAULT_EMBEDDING_MODEL),
    "ko": LanguageDefaults(analyzer="korean", embedding_model=E5_MODEL),
    "auto": LanguageDefaults(analyzer="multilingual", embedding_model=E5_MODEL),
}

# Korean queries: BM25 on kiwi morphemes is the strong leg (autorag-ko dev through the service: keyword
# nDCG@10 0.988, multilingual-e5 dense 0.923), and plain RRF lets the weaker leg's ranks pull keyword hits down
# (0.970, below keyword alone). Keyword weight 2 (1.0 for dense): 1.000, and every keyword weight 2-2.5 at
# k = 10-100 gave the same; relative-score fusion at dense weight 0.1-0.3 only equalled keyword. Chosen on the
# autorag-ko dev queries only (docs/korean.md, "How the defaults were chosen").
KOREAN_FUSION = FusionDefaults(Fusion.RRF, dense_weight=1.0, keyword_weight=2.0)


def validate_language(language: str, field_name: str = "config.language") -> str:
    if language not in LANGUAGES:
        raise InvalidArgument(field_name, f"unknown language {language!r}; known: {list(LANGUAGES)}")
    return language


def hangul_share(text: str) -> float:
    """Share of the letters in `text` that are Hangul."""
    letters = len(_LETTER.findall(text))
    return len(HANGUL_SCRIPT.findall(text)) / letters if letters else 0.0


def detect(text: str) -> str:
    """"ko" when at least 30% of the letters are Hangul (a Korean query with English terms, e.g. "B2B e커머스
    장점", stays Korean), else "en". Script counting, not a language model: queries are short, and what rides
    on it (fusion defaults, whether an English reranker can read the text) only needs the script."""
    return "ko" if hangul_share(text) >= 0.3 else "en"


def query_language(collection_language: str, query: str) -> str:
    return detect(query) if collection_language == "auto" else collection_language
