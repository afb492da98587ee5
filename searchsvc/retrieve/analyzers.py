"""Text analyzers for the keyword leg: text -> index terms. Chosen per collection by name.

The query and the documents of a collection always go through the same analyzer. `analyze_many` is the
ingest path (batched: kiwi spreads a batch over its worker threads); `analyze` the query path.
"""

from __future__ import annotations

import re
import threading
from typing import Callable, Protocol

from searchsvc.errors import InvalidArgument

# Same token pattern as bm25s.tokenize: runs of 2+ word characters (Unicode-aware).
_WORD = re.compile(r"(?u)\b\w\w+\b")


Span = tuple[str, int, int]  # (term, start, end): the term and where its surface form is in the text


class Analyzer(Protocol):
    name: str

    def analyze(self, text: str) -> list[str]: ...

    def analyze_many(self, texts: list[str]) -> list[list[str]]: ...

    def spans(self, text: str) -> list[Span]:
        """The terms `analyze` makes, each with the character range of the surface text it came from
        (highlights: a Korean morpheme maps back to the word it was read from)."""
        ...


class WhitespaceAnalyzer:
    """Lowercased whitespace split. Predictable; meant for tests and pre-tokenized text."""

    name = "whitespace"

    def analyze(self, text: str) -> list[str]:
        return text.lower().split()

    def analyze_many(self, texts: list[str]) -> list[list[str]]:
        return [self.analyze(t) for t in texts]

    def spans(self, text: str) -> list[Span]:
        return [(m.group().lower(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


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
        return self.terms(_WORD.findall(text.lower()))

    def analyze_many(self, texts: list[str]) -> list[list[str]]:
        return [self.analyze(t) for t in texts]

    def spans(self, text: str) -> list[Span]:
        # Matched on the text itself, each word lowercased after: lowercasing the whole text first can change its
        # length (İ becomes two code points) and shift every later span.
        words = [(m.group().lower(), m) for m in _WORD.finditer(text)]
        words = [(w, m) for w, m in words if w not in self._stopwords]
        return [(term, m.start(), m.end()) for term, (_, m) in zip(self.stem([w for w, _ in words]), words)]

    def terms(self, words: list[str]) -> list[str]:
        """Lowercased words -> index terms: stopwords dropped, the rest stemmed."""
        return self.stem([w for w in words if w not in self._stopwords])

    def stem(self, words: list[str]) -> list[str]:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = self._new_stemmer()
        return stemmer.stemWords(words)


# Kiwi tags kept as index terms (content morphemes); particles (J*), endings (E*), affixes (X* but XR) and
# punctuation are dropped. VV/VA come with irregular-conjugation suffixes (VV-R, VA-I): matched by prefix.
_KOREAN_CONTENT = frozenset({"NNG", "NNP", "NNB", "NR", "NP", "XR", "SH", "W_URL", "W_EMAIL", "W_HASHTAG", "W_MENTION", "W_SERIAL"})
_KOREAN_PREDICATES = ("VV", "VA")
_NOUNS = frozenset({"NNG", "NNP"})
_LATIN_OR_NUMBER = frozenset({"SL", "SN"})  # kiwi splits "B2B" into B/SL 2/SN B/SL: contiguous runs are rejoined
HANGUL_SCRIPT = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")  # syllables and jamo
# Han ideographs, kana: no spaces between words, so character bigrams (the CJK analyzer of Lucene/Elasticsearch).
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def _kiwi():
    """One kiwi model per process (~1 s and ~200 MB to load, ~290 MB once used). Its analysis is re-entrant; `tokenize` over a
    list fans out to its own worker threads (one per core)."""
    from kiwipiepy import Kiwi

    global _KIWI, KIWI_RESIDENT_BYTES
    with _kiwi_lock:
        if _KIWI is None:
            from searchsvc.retrieve.models import resident_bytes

            before = resident_bytes()
            # -1: one worker per core for batches. No multi-word dictionary: it tags runs such as "자연어 처리" or
            # "네이버 쇼핑" as one proper noun (one term, which a query of either word misses) and holds ~190 MB.
            # Without it: keyword nDCG@10 0.9762 = 0.9762 on autorag-ko dev, 0.8935 vs 0.8926 on msmarco-kor dev;
            # hybrid unchanged (0.9881, 0.9533).
            _KIWI = Kiwi(num_workers=-1, load_multi_dict=False)
            KIWI_RESIDENT_BYTES = max(0, resident_bytes() - before)
        return _KIWI


_KIWI = None
KIWI_RESIDENT_BYTES = 0  # how much the process grew while kiwi loaded (0: not loaded); reported on /metrics
_kiwi_lock = threading.Lock()


class KoreanAnalyzer:
    """Kiwi morphemes: content POS (nouns, numerals, pronouns, verb/adjective stems, roots, foreign words) in
    their morpheme form, so 은행은/은행의/은행에서 all index as 은행 and 먹었던 as 먹. Latin and digit runs
    (B2B, ETF, 3.5) are lowercased as one term. `compound_joins` also indexes two adjacent nouns as one term
    (지방 + 은행 -> 지방은행): measured on autorag-ko (docs/decisions/0010-korean-compound-joins.md), not on by default unless it helped."""

    name = "korean"

    def __init__(self, compound_joins: bool = False, latin: Callable[[list[str]], list[str]] | None = None) -> None:
        self.compound_joins = compound_joins
        self._latin = latin or (lambda words: words)
        self._kiwi = _kiwi()

    def analyze(self, text: str) -> list[str]:
        return self._terms(self._kiwi.tokenize(text))

    def analyze_many(self, texts: list[str]) -> list[list[str]]:
        if len(texts) < 2:
            return [self.analyze(t) for t in texts]
        return [self._terms(tokens) for tokens in self._kiwi.tokenize(texts)]

    def spans(self, text: str) -> list[Span]:
        """kiwi's tokens carry their position in the text: a morpheme (먹 of 먹었던) maps to its surface."""
        out: list[Span] = []
        run: list = []  # contiguous Latin/digit tokens, one term together
        for tok in [*self._kiwi.tokenize(text), None]:
            if tok is not None and tok.tag in _LATIN_OR_NUMBER and (not run or tok.start == run[-1].start + run[-1].len):
                run.append(tok)
                continue
            if run:
                terms = self._latin(["".join(t.form for t in run).lower()])
                if terms:
                    out.append((terms[0], run[0].start, run[-1].start + run[-1].len))
                run = [tok] if tok is not None and tok.tag in _LATIN_OR_NUMBER else []
                if run:
                    continue
            if tok is not None and (tok.tag in _KOREAN_CONTENT or tok.tag.startswith(_KOREAN_PREDICATES)):
                out.append((tok.form.lower(), tok.start, tok.start + tok.len))
        return out

    def _terms(self, tokens) -> list[str]:
        terms: list[str] = []
        latin: list[str] = []  # the current run of contiguous Latin/digit tokens
        run_end = -1
        prev_noun_end, prev_noun = -1, ""
        for tok in tokens:
            tag, form = tok.tag, tok.form
            if tag in _LATIN_OR_NUMBER:
                if latin and tok.start == run_end:
                    latin[-1] += form
                else:
                    latin.append(form)
                run_end = tok.start + tok.len
                continue
            if tag in _KOREAN_CONTENT or tag.startswith(_KOREAN_PREDICATES):
                terms.append(form.lower())
                if self.compound_joins and tag in _NOUNS:
                    if tok.start == prev_noun_end:
                        terms.append(prev_noun + form)
                    prev_noun_end, prev_noun = tok.start + tok.len, form
        if latin:
            terms += self._latin([w.lower() for w in latin])
        return terms


class MultilingualAnalyzer:
    """Script-aware: text with Hangul goes through kiwi (Latin runs inside it through the English chain),
    text without through the English chain; Han ideographs and kana become character bigrams. One analyzer
    for collections that mix Korean, English and some CJK."""

    name = "multilingual"

    def __init__(self) -> None:
        self._english = EnglishAnalyzer()
        # kiwi's model is ~200 MB loaded and ~290 MB once used: loaded at the first text with Hangul (~1 s),
        # or when a collection that holds Korean opens (prepare_korean), not by a server that never sees any.
        self._korean_analyzer: KoreanAnalyzer | None = None
        self._korean_lock = threading.Lock()

    @property
    def _korean(self) -> KoreanAnalyzer:
        with self._korean_lock:
            if self._korean_analyzer is None:
                self._korean_analyzer = KoreanAnalyzer(latin=self._english.terms)
            return self._korean_analyzer

    def prepare_korean(self) -> None:
        """Load kiwi now, so that the first Korean request doesn't wait for it."""
        self._korean

    def analyze(self, text: str) -> list[str]:
        return self.analyze_many([text])[0]

    def spans(self, text: str) -> list[Span]:
        out: list[Span] = []
        for run in _CJK_RUN.finditer(text):
            out += [(text[j : j + 2], j, min(j + 2, run.end())) for j in range(run.start(), max(run.end() - 1, run.start() + 1))]
        rest = _CJK_RUN.sub(lambda m: " " * len(m.group()), text)  # same length: offsets stay
        return (self._korean if HANGUL_SCRIPT.search(rest) else self._english).spans(rest) + out

    def analyze_many(self, texts: list[str]) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in texts]
        rest = []
        for i, text in enumerate(texts):
            for run in _CJK_RUN.findall(text):
                out[i] += [run[j : j + 2] for j in range(max(len(run) - 1, 1))]
            rest.append(_CJK_RUN.sub(" ", text))
        korean = [i for i, t in enumerate(rest) if HANGUL_SCRIPT.search(t)]
        if korean:
            for i, terms in zip(korean, self._korean.analyze_many([rest[i] for i in korean])):
                out[i] = terms + out[i]
        for i in sorted(set(range(len(texts))) - set(korean)):
            out[i] = self._english.analyze(rest[i]) + out[i]
        return out


ANALYZERS: dict[str, Callable[[], Analyzer]] = {
    "english": EnglishAnalyzer,
    "korean": KoreanAnalyzer,
    "multilingual": MultilingualAnalyzer,
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
