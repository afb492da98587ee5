"""Text analyzers for the keyword leg: text -> index terms. Chosen per collection by name.

The query and the documents of a collection always go through the same analyzer.
"""

from __future__ import annotations

import re
import threading
from typing import Callable, Protocol

from searchsvc.errors import InvalidArgument

# Same token pattern as bm25s.tokenize: runs of 2+ word characters (Unicode-aware).
_WORD = re.compile(r"(?u)\b\w\w+\b")


class Analyzer(Protocol):
    name: str

    def analyze(self, text: str) -> list[str]: ...


class WhitespaceAnalyzer:
    """Lowercased whitespace split. Predictable; meant for tests and pre-tokenized text."""

    name = "whitespace"

    def analyze(self, text: str) -> list[str]:
        return text.lower().split()


class EnglishAnalyzer:
    """Lowercase, word tokens, English stopwords (bm25s' list), Snowball English stemmer (PyStemmer)."""

    name = "english"

    def __init__(self) -> None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self._stopwords = frozenset(STOPWORDS_EN)
        # PyStemmer objects are not thread-safe; one per thread, each with its own cache.
        self._local = threading.local()
        self._new_stemmer = lambda: Stemmer.Stemmer("english")

    def analyze(self, text: str) -> list[str]:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = self._new_stemmer()
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stopwords]
        return stemmer.stemWords(words)


ANALYZERS: dict[str, Callable[[], Analyzer]] = {
    "english": EnglishAnalyzer,
    "whitespace": WhitespaceAnalyzer,
}

_instances: dict[str, Analyzer] = {}
_lock = threading.Lock()


def get_analyzer(name: str) -> Analyzer:
    """Shared instance per name (analyzers may load models once, e.g. a morphological analyzer)."""
    if name not in ANALYZERS:
        raise InvalidArgument("config.analyzer", f"unknown analyzer {name!r}; known: {sorted(ANALYZERS)}")
    with _lock:
        if name not in _instances:
            _instances[name] = ANALYZERS[name]()
        return _instances[name]
