"""Pure, offline detectors behind the guardrails: no nemoguardrails, no models, no I/O.

The NeMo Guardrails actions in `rails.py` call these; they are also unit-testable on their own. Every
detector returns `RailHit`s (what fired and why) and, where it rewrites text, the rewritten text.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

from searchsvc.domain.text import _REFUSAL, citations, content_tokens, has_words, is_korean, split_sentences  # noqa: F401


@dataclass(frozen=True)
class RailHit:
    rail: str  # "input.injection", "input.max_length", "input.banned_topic", "output.pii", ... "context.injection"
    action: str  # "blocked" | "masked" | "removed" | "flagged"
    reason: str  # human-readable


def refusal_message(text: str) -> str:
    """The short refusal released instead of blocked content, in the language of `text`."""
    if is_korean(text):
        return "죄송합니다. 이 요청에는 답변할 수 없습니다."
    return "Sorry, I can't help with that request."


# --------------------------------------------------------------------------------------------------------------
# Input: length, prompt injection, banned topics


def check_length(text: str, max_chars: int) -> list[RailHit]:
    if len(text) <= max_chars:
        return []
    return [RailHit("input.max_length", "blocked", f"query is {len(text)} characters (limit {max_chars})")]


def _any(words: str) -> str:
    """A non-capturing alternation of space-separated words; "_" inside a word matches any whitespace."""
    return "(?:" + "|".join(word.replace("_", r"\s+") for word in words.split()) + ")"


def _compile(*rules: tuple[str, str]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((label, re.compile(pattern, re.IGNORECASE)) for label, pattern in rules)


# Prompt-injection phrasing. Each pattern needs an override *structure* (verb + "previous/your/all" +
# "instructions", "pretend you are"), never a lone keyword: "what are the instructions for installing X",
# "how to ignore all messages from a group", "enable developer mode on Android" must pass.
_STRONG_WORDS = "all your previous prior above earlier preceding original initial system developer former"
_STRONG = _any(_STRONG_WORDS)
_QUAL = _any("any every my the these those other " + _STRONG_WORDS)
_RULES = _any("instructions? rules prompts? directions directives guidelines guardrails restrictions constraints programming")
_QUAL_KO = _any("이전 앞 위 기존 모든 지금까지 원래 시스템 너의 네 당신의 개발자")
_RULES_KO = _any("지시 지침 명령 규칙 프롬프트 설정 제약 제한 안내 내용")
_PERSONA = _any("called named acting playing going_to_act going_to_be dan free unrestricted unfiltered uncensored evil")
_UNLIMITED = _any("restrictions filters censorship limitations rules guidelines")

_INJECTION = _compile(
    # "ignore all previous instructions", "disregard your rules", "forget the above prompt"
    (
        "instruction override",
        rf"\b{_any('ignore disregard forget override bypass abandon')}\s+(?:(?:of\s+)?{_QUAL}\s+){{0,3}}"
        rf"{_STRONG}\s+(?:(?:of\s+)?{_QUAL}\s+){{0,2}}{_RULES}\b",
    ),
    # "ignore the above and ...", "disregard everything previous."
    (
        "instruction override",
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+)?(?:of\s+)?(?:the\s+)?"
        r"(?:above|previous|prior|preceding|earlier)\s*(?:[.,;:!]|and\b|$)",
    ),
    ("instruction override", rf"\b(?:do\s+not|don't|stop)\s+(?:follow|obey)(?:ing)?\s+{_STRONG}\s+(?:{_QUAL}\s+)?{_RULES}\b"),
    ("instruction override", r"\bnew\s+(?:system\s+)?instructions\s*:"),
    (
        "role reassignment",
        rf"\byou\s+are\s+now\s+(?:an?\s+|my\s+)?(?:{_PERSONA}|ai|assistant|chatbot|model)\b"
        r"|\byou\s+are\s+no\s+longer\s+(?:bound|restricted|limited|an?\s+(?:ai|assistant|language\s+model))"
        r"|\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must|shall)\b",
    ),
    (
        "role reassignment",
        r"\bpretend\s+(?:that\s+)?you(?:'re|\s+are)\b"
        r"|\bact\s+as\s+(?:if\s+you\s+(?:are|were|have)|an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken|evil))\b",
    ),
    (
        "system prompt extraction",
        rf"\b{_any('reveal show print repeat output display leak dump tell_me')}\s+(?:me\s+)?(?:your|the)\s+"
        r"(?:(?:full|exact|hidden|secret)\s+)?(?:system|initial|original|hidden|developer)\s+(?:prompt|instruction|message)s?\b"
        r"|\byour\s+(?:system|hidden|secret|initial)\s+(?:prompt|instructions)\b",
    ),
    ("jailbreak", r"\b(?:enable|enter|activate|switch\s+to)\s+(?:dan|god|jailbreak|unrestricted)\s+mode\b|\bdo\s+anything\s+now\b"),
    (
        "jailbreak",
        rf"\b{_any('answer respond reply act behave speak talk')}\b[^.?!\n]{{0,40}}\b(?:without|with\s+no|free\s+of)\s+"
        rf"(?:any\s+)?{_UNLIMITED}\b",
    ),
    (
        "jailbreak",
        r"\b(?:disable|turn\s+off|remove|bypass|ignore)\s+your\s+(?:own\s+)?(?:(?:safety|content|ethical)\s+)?"
        r"(?:filters?|guidelines|guardrails|restrictions)\b",
    ),
    ("fake chat turn", r"<\|im_start\|>|\[/?INST\]|<<SYS>>|###\s*(?:system|instruction)\s*:|(?:^|\n)\s*system\s*:\s*you\b"),
    # Korean: "이전 지시를 무시해", "모든 규칙을 잊어", "위의 지침은 따르지 마"
    (
        "instruction override",
        rf"{_QUAL_KO}\s*(?:의\s*)?\S{{0,4}}\s*{_RULES_KO}\S{{0,4}}\s*"
        r"(?:모두\s*|전부\s*|다\s*)?(?:무시|잊|따르지|어기|우회)",
    ),
    (
        "system prompt extraction",
        r"(?:너의|네|당신의)\s*(?:시스템\s*)?(?:프롬프트|지시문|지침)"
        r"|(?:시스템|숨겨진|초기)\s*(?:프롬프트|지시문|지침)\S{0,3}\s*(?:\S+\s*){0,2}"
        r"(?:보여|출력|공개|복사|반복|그대로)",
    ),
    (
        "role reassignment",
        r"(?:너는|넌|당신은|네가|당신이)\s*(?:이제|지금부터|앞으로)|(?:이제부터|지금부터|이제)\s*(?:너는|넌|당신은|네가)",
    ),
    ("jailbreak", r"DAN\s*모드|(?:제한|필터|검열|규칙)\s*(?:없이|없는\s*상태로)\s*\S{0,6}\s*(?:답|대답|응답|말|행동)"),
)

# Retrieved documents also get a stricter pattern: a passage has no business giving the model orders. A mere
# mention of "system prompt" is not flagged: the engine leaves flagged passages out of the context, and a
# corpus about LLMs would lose its relevant passages.
_UNTRUSTED_EXTRA = _compile(
    (
        "orders to the model",
        r"\b(?:dear\s+(?:ai|assistant|model)|(?:ai|assistant|model|llm)\s*[,:]\s*(?:you\s+must|please|ignore))\b"
        r"|\byou\s+(?:must|should)\s+(?:now\s+)?(?:ignore|disregard|reveal|tell\s+the\s+user|respond\s+with|answer\s+with)\b",
    ),
)


def injection_patterns(text: str, *, untrusted: bool = False) -> list[str]:
    """The prompt-injection patterns found in `text`, as "label: 'matched text'"."""
    found: list[str] = []
    for label, pattern in _INJECTION + (_UNTRUSTED_EXTRA if untrusted else ()):
        if match := pattern.search(text):
            found.append(f"{label}: {match.group(0).strip()!r}")
    return found


def find_injection(text: str) -> list[RailHit]:
    return [RailHit("input.injection", "blocked", f"prompt injection ({label})") for label in injection_patterns(text)]


def scan_untrusted(text: str) -> list[RailHit]:
    """Cheap heuristics for retrieved documents: instruction-like text planted to steer the model."""
    return [
        RailHit("context.injection", "flagged", f"instruction-like text ({label})")
        for label in injection_patterns(text, untrusted=True)
    ]


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive phrase match. Latin ends get Latin-letter boundaries (so "ass" misses "class", while a
    Korean particle may follow: "bitcoin을") and an optional plural; Hangul ends get none, because particles
    attach directly ("도박을", "도박에")."""
    body = r"\s+".join(re.escape(word) for word in phrase.split())
    head = r"(?<![A-Za-z])" if re.match(r"[A-Za-z]", phrase) else ""
    tail = r"(?:e?s)?(?![A-Za-z])" if re.search(r"[A-Za-z]$", phrase) else ""
    return re.compile(head + body + tail, re.IGNORECASE)


def find_phrases(text: str, phrases: Iterable[str]) -> list[str]:
    return [phrase for phrase in phrases if phrase.strip() and _phrase_pattern(phrase.strip()).search(text)]


def find_banned_topics(text: str, topics: Iterable[str]) -> list[RailHit]:
    return [RailHit("input.banned_topic", "blocked", f"banned topic {topic!r}") for topic in find_phrases(text, topics)]


def find_banned_phrases(text: str, phrases: Iterable[str]) -> list[RailHit]:
    return [RailHit("output.banned_phrase", "blocked", f"banned phrase {p!r}") for p in find_phrases(text, phrases)]


# --------------------------------------------------------------------------------------------------------------
# Output: PII

# Lookarounds use ASCII classes, not \w/\b: Korean particles attach directly ("010-1234-5678로", "a@b.com으로").
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)
_PHONE = re.compile(
    r"(?<![A-Za-z0-9+-])(?<!\d\.)(?:"
    r"\+82[ .-]?\(?0?\)?(?:1[016789]|2|[3-6][1-5]|70)[ .-]?\d{3,4}[ .-]?\d{4}"  # +82 10-1234-5678, +82 2 123 4567
    r"|01[016789][ .-]?\d{3,4}[ .-]?\d{4}"  # 010-1234-5678, 01012345678
    r"|0(?:2|[3-6][1-5]|70)[ .-]\d{3,4}[ .-]\d{4}"  # 02-123-4567; landlines need separators (bare: too ambiguous)
    r"|\+\d{1,3}[ .-]\(?\d{1,4}\)?(?:[ .-]\d{2,4}){2,3}"  # other international, with separators
    r"|\(\d{3}\)\s?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"  # NANP (555) 123-4567, 555-123-4567
    r")(?![A-Za-z0-9-]|\.\d)"  # not a piece of a longer number: 1.192.168.100.1000
)
_RRN = re.compile(r"(?<![\d-])(\d{6})(\s?-\s?)?([1-8]\d{6})(?![\d-])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
_PII_NAMES = {"RRN": "resident registration number", "CARD": "card number", "PHONE": "phone number", "EMAIL": "email address"}


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def rrn_valid(number: str, *, require_checksum: bool) -> bool:
    """A Korean resident registration number YYMMDD-GNNNNNN: the date must exist (the century comes from the
    gender digit G: 1,2,5,6 -> 1900s; 3,4,7,8 -> 2000s). The check digit is only required on request: numbers
    issued since October 2020 have random trailing digits and need not satisfy the old checksum."""
    digits = re.sub(r"\D", "", number)
    if len(digits) != 13 or digits[6] not in "12345678":
        return False
    century = 1900 if digits[6] in "1256" else 2000
    try:
        _dt.date(century + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        return False
    if not require_checksum:
        return True
    check = (11 - sum(int(d) * w for d, w in zip(digits, _RRN_WEIGHTS)) % 11) % 10
    return check == int(digits[12])


def find_pii(text: str, action: Literal["masked", "blocked"] = "masked") -> tuple[str, list[RailHit]]:
    """Mask PII; returns (masked text, one hit per kind found, with its count).

    RRNs first (a hyphenated RRN also looks like a 13-digit card), then cards, then phones, then e-mail.
    RRN policy: the hyphenated form YYMMDD-GNNNNNN with a real date is masked without a checksum (post-2020
    numbers fail it and the form alone is a strong signal); 13 bare digits must also pass the checksum.
    """
    counts: dict[str, int] = {}

    def sub(pattern: re.Pattern[str], label: str, ok: object = None) -> None:
        nonlocal text

        def repl(m: re.Match[str]) -> str:
            if callable(ok) and not ok(m):
                return m.group(0)
            counts[label] = counts.get(label, 0) + 1
            return f"[{label}]"

        text = pattern.sub(repl, text)

    sub(_RRN, "RRN", lambda m: rrn_valid(m.group(0), require_checksum=not m.group(2)))
    sub(_CARD, "CARD", lambda m: luhn_valid(re.sub(r"\D", "", m.group(0))))
    sub(_PHONE, "PHONE")
    sub(_EMAIL, "EMAIL")
    verb = "masked" if action == "masked" else "found"
    hits = [RailHit("output.pii", action, f"{_PII_NAMES[k]} {verb}" + (f" ({n}x)" if n > 1 else "")) for k, n in counts.items()]
    return text, hits


# --------------------------------------------------------------------------------------------------------------
# Output: grounding (lexical support of each sentence by the context passages it cites)

@dataclass(frozen=True)
class SentenceScore:
    index: int  # 1-based, as reported
    span: tuple[int, int]
    cited: tuple[int, ...]  # the [n] markers; empty: scored against all sources
    score: float | None  # None: exempt (refusal / too short)


def score_sentences(text: str, sources: Mapping[int, str]) -> list[SentenceScore]:
    source_tokens = {n: content_tokens(passage, generous=True) for n, passage in sources.items()}
    every = set().union(*source_tokens.values()) if source_tokens else set()
    scores = []
    for i, (s, e) in enumerate(split_sentences(text), start=1):
        sentence = text[s:e]
        cited = tuple(dict.fromkeys(citations(sentence)))
        tokens = content_tokens(sentence)
        if len(tokens) < 3 or _REFUSAL.search(sentence.replace("’", "'")):
            scores.append(SentenceScore(i, (s, e), cited, None))
            continue
        # A citation of a passage we don't have supports nothing: an invented [n] is not grounding.
        support = set().union(*(source_tokens.get(n, set()) for n in cited)) if cited else every
        scores.append(SentenceScore(i, (s, e), cited, len(tokens & support) / len(tokens)))
    return scores


def check_grounding(
    text: str,
    sources: Mapping[int, str],
    threshold: float,
    policy: Literal["remove", "block", "flag"],
) -> tuple[str, list[RailHit]]:
    """Returns (text to release, hits). policy remove drops unsupported sentences; block and flag leave the text
    alone (the caller blocks on "blocked" hits; "flagged" ones are informational)."""
    action = {"remove": "removed", "block": "blocked", "flag": "flagged"}[policy]
    hits: list[RailHit] = []
    drop: list[tuple[int, int]] = []
    for sc in score_sentences(text, sources):
        if sc.score is None or sc.score >= threshold:
            continue
        where = "cited context " + "".join(f"[{n}]" for n in sc.cited) if sc.cited else "any context"
        reason = f"sentence {sc.index} not supported by {where} (overlap {sc.score:.2f} < {threshold:.2f})"
        hits.append(RailHit("output.grounding", action, reason))
        drop.append(sc.span)
    if policy != "remove" or not drop:
        return text, hits
    # Keep the original text between the surviving sentences (newlines, spacing) by cutting spans out.
    out, pos = [], 0
    for s, e in drop:
        out.append(text[pos:s])
        pos = e
    out.append(text[pos:])
    kept = re.sub(r"[ \t]+\n", "\n", re.sub(r"[ \t]{2,}", " ", "".join(out)))
    # A list whose items were removed leaves its skeleton ("2.", "- **"): drop lines with no words.
    kept = "\n".join(line for line in kept.split("\n") if has_words(line) or not line.strip())
    return re.sub(r"\n{3,}", "\n\n", kept).strip(), hits
