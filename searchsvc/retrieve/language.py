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
    adaptive: bool = False  # RRF weights per query (search/fuse.py, adaptive_weights) instead of the two above


@dataclass(frozen=True)
class LanguageDefaults:
    analyzer: str
    embedding_model: str


COLLECTION_DEFAULTS = {
    "en": LanguageDefaults(analyzer="english", embedding_model=DEFAULT_EMBEDDING_MODEL),
    "ko": LanguageDefaults(analyzer="korean", embedding_model=E5_MODEL),
    "auto": LanguageDefaults(analyzer="multilingual", embedding_model=E5_MODEL),
}

# Korean queries: RRF with weights that follow the query (search/fuse.py, adaptive_weights). No fixed weight
# serves both Korean sets: keyword weight 2 won on autorag-ko (long questions about report pages, where BM25 on
# kiwi morphemes leads) and lost 0.024 to the dense leg alone on msmarco-kor (short translated web queries, where
# e5 leads). The adaptive weights equal weight 2 on autorag-ko and beat the dense leg on msmarco-kor: figures in
# docs/korean.md and docs/decisions/0024-adaptive-rrf-weights.md.
KOREAN_FUSION = FusionDefaults(Fusion.RRF, adaptive=True)


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
