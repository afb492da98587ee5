"""Text helpers shared by the answer pipeline and the guardrails: sentence spans (batch and streaming),
citation markers, content tokens for lexical overlap (English and Korean), refusal detection.

Written by hand: sentence ends must keep citation markers with their sentence ("... in 1990. [2]"), work on a
growing stream buffer, and know Korean endings; LlamaIndex's splitters split for chunk sizes, not for this.
"""

from __future__ import annotations

import re

HANGUL = re.compile(r"[\uac00-\ud7a3]")


def is_korean(text: str) -> bool:
    return HANGUL.search(text) is not None


_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
# Not content: citation markers, and our own PII placeholders (the final check sees streamed windows that were
# already masked; "[EMAIL]" must not count as an unsupported word the second time).
_NOT_CONTENT = re.compile(r"\[(?:\d+(?:\s*,\s*\d+)*|EMAIL|PHONE|RRN|CARD)\]")
# A sentence ends at . ! ? 。 etc. followed by optional closing quotes/brackets and citation markers, then
# whitespace; "3.5" has no whitespace after the dot, so it never splits. Korean polite endings (-니다, -요)
# also end a sentence when an LLM omits the period. Newlines always split.
_CITES = r"(?:\s*\[\d+(?:\s*,\s*\d+)*\])*"
_SENTENCE_END = re.compile(
    rf"(?:[.!?…]+[\"'”’)\]]*{_CITES}[.]?(?=\s|$))"  # Latin: whitespace must follow
    rf"|(?:[。！？]+[”’」』)]*{_CITES})"  # CJK full stops need no space after them
    rf"|(?:(?:니다|[어아여에예해세까네군데지래]요|죠){_CITES}[.!?。]?(?=\s|$))"
    r"|\n+"
)
_ENUMERATOR = re.compile(r"(?:\d{1,3}|[A-Za-z]|[ivxIVX]{1,4})[.)]")
_LETTER = re.compile(r"[^\W\d_]")
# Korean writes dates as "2021. 8. 14." inside a sentence ("2021. 8. 14. 피고에게 통지하였다."): a period after a year,
# or after a year and month with a number next, does not end one; nor does a whole date's last period.
_DATE_SO_FAR = re.compile(r"(?:^|\D)(?:\d{4}\.\s?\d{1,2}\.\s?\d{1,2}|\d{4}(?:\.\s?\d{1,2})?)$")
_ABBREVIATIONS = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|mr|mrs|ms|dr|prof|fig|approx|inc|ltd|u\.s)\.)$", re.IGNORECASE)

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during
    each few for from further had hadn't has hasn't have haven't having he her here hers herself him himself his
    how however i if in into is isn't it it's its itself just let's may me might more most must my myself no nor
    not of off on once only or other ought our ours ourselves out over own same shall she should shouldn't so
    some such than that that's the their theirs them themselves then there there's these they this those through
    thus to too under until up upon us very via was wasn't we were weren't what when where which while who whom
    why will with within without would wouldn't yes yet you your yours yourself according based""".split()
)
# Korean particles and verb endings stripped from the end of a word before bigramming, so "서울은" and
# "서울의" both give "서울" (longest first; a stem must keep >= 2 syllables).
_KO_SUFFIXES = tuple(
    sorted(
        """했습니다 하였습니다 되었습니다 되었다 하였다 입니다 합니다 됩니다 습니다 있다 없다 니다 했다 한다 된다
        이다 였다 이었다 이며 이고 하는 되는 했고 하고 하며 에서는 에서 에게 으로는 으로 로는 까지 부터 보다 처럼 이라는
        라는 이라고 라고 과는 와는 에는 에도 은 는 이 가 을 를 의 에 로 와 과 도 만 한 된 인 적""".split(),
        key=len,
        reverse=True,
    )
)
_KO_STOPWORDS = frozenset("그리고 또한 그러나 하지만 그래서 따라서 이것 그것 저것 있습 있는 없는 대한 통해 위해 경우".split())
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[a-z]+(?:'[a-z]+)?|[\uac00-\ud7a3]+")
_REFUSAL = re.compile(
    r"\b(?:i\s+(?:do\s+not|don't)\s+know|i(?:'m|\s+am)\s+not\s+sure"
    r"|i\s+(?:cannot|can't|could\s+not|couldn't)\s+(?:find|answer|determine|tell)"
    r"|(?:no|not\s+enough)\s+(?:relevant\s+)?information|unable\s+to\s+(?:find|answer|determine)"
    r"|no\s+(?:relevant\s+)?(?:documents?|results?|sources?|passages?)\s+(?:were\s+|was\s+)?found"
    r"|(?:not|isn't|is\s+not)\s+(?:mentioned|covered|stated|specified|found|provided)\s+in\s+the\s+(?:provided\s+)?"
    r"(?:context|sources?|documents?|passages?)|the\s+(?:provided\s+)?(?:context|sources?|documents?)\s+(?:do|does)\s+not)"
    r"|모르겠|알\s*수\s*없|정보가\s*(?:없|부족)|찾을\s*수\s*없|찾지\s*못했|답(?:변)?(?:할|을|하기)\s*수\s*없"
    r"|언급(?:되어\s*있지|되지)\s*않|확인(?:할|이)\s*(?:수\s*)?없|나와\s*있지\s*않",
    re.IGNORECASE,
)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the sentences in `text`, whitespace trimmed, covering every non-blank part."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end() if m.group(0).strip() else m.start()
        if m.group(0).startswith(".") and _ABBREVIATIONS.search(text[start : m.start() + 1]):
            continue  # "e.g." / "Dr." is not the end of a sentence
        if m.group(0).strip() == "." and _is_inside_a_date(text, start, m):
            continue
        if _ENUMERATOR.fullmatch(text[start : m.end()].strip()):
            continue  # "1. " / "a) " opening a list item belongs to the item's sentence
        spans.append((start, end))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            out.append((s, e))
    return out


def _is_inside_a_date(text: str, start: int, m: re.Match) -> bool:
    date = _DATE_SO_FAR.search(text[start : m.start()])
    if not date:
        return False
    whole = date.group(0).count(".") == 2  # year. month. day.
    return whole or text[m.end() : m.end() + 1].isdigit() or text[m.end() :].lstrip()[:1].isdigit()


def citations(sentence: str) -> list[int]:
    return [int(n) for group in _MARKER.findall(sentence) for n in group.split(",")]


def _strip_korean(word: str) -> str:
    for suffix in _KO_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            return word[: -len(suffix)]
    return word


def _latin_norm(word: str) -> str:
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_tokens(text: str, *, generous: bool = False) -> set[str]:
    """Content tokens: Latin words minus stopwords (plural-folded), numbers, Hangul stem bigrams.
    `generous` (for context passages) also adds the unstripped Hangul bigrams, so a suffix-stripping mistake
    on one side does not cost a match."""
    tokens: set[str] = set()
    for tok in _TOKEN.findall(_NOT_CONTENT.sub(" ", text).lower().replace("’", "'")):
        if tok[0].isdigit():
            tokens.add(tok.replace(",", ""))
        elif HANGUL.match(tok):
            forms = {_strip_korean(tok), tok} if generous else {_strip_korean(tok)}
            for form in forms - _KO_STOPWORDS:
                tokens.update([form[i : i + 2] for i in range(len(form) - 1)] or [form])
        elif tok not in _STOPWORDS:
            tokens.add(_latin_norm(tok))
    return tokens


_NEXT_SENTENCE_STARTED = re.compile(r"\s*[^\s\[]")


def complete_prefix(buffer: str) -> int:
    """Length of the prefix of a stream buffer made of complete sentences (0: none complete yet).

    A boundary counts only once the next sentence has begun: "... sticks. [" may still be followed by "2]",
    which belongs to this sentence.
    """
    spans = split_sentences(buffer)
    for (_, end), (next_start, _) in zip(reversed(spans[:-1]), reversed(spans[1:])):
        if _NEXT_SENTENCE_STARTED.match(buffer, end) and buffer[next_start] != "[":
            return end
    return 0


def has_words(text: str) -> bool:
    """False for what is left when every sentence of a list was removed ("1.\n\n2.", "- **")."""
    return _LETTER.search(_NOT_CONTENT.sub(" ", text)) is not None


def is_refusal(text: str) -> bool:
    return _REFUSAL.search(text.replace("\u2019", "'")) is not None
