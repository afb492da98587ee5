"""Answer-side domain types. Plain dataclasses (JSON round-trip for the answer cache); no gRPC."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from searchsvc.domain.types import Hit, ScoredId


class AnswerKind(enum.Enum):
    GENERATED = "generated"
    EXTRACTIVE = "extractive"
    NO_CONTEXT = "no_context"
    REFUSED = "refused"
    UNANSWERED = "unanswered"  # the model said the context lacks the answer


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    extractive: bool = False
    bypass_cache: bool = False


@dataclass
class Citation:
    source: int  # 1-based position in the context
    chunk_id: str
    document_id: str
    quote: str
    quote_start: int
    quote_end: int
    inferred: bool = False  # every marker for this source was added by the server, not written by the model
    page: int = 0  # the source chunk's page or slide (a document read from a file); 0: none
    filename: str = ""  # the file it was read from (its chunks' `source`)

    @property
    def marker(self) -> str:
        return f"[{self.source}]"


@dataclass
class RailHitInfo:
    rail: str
    action: str
    reason: str


@dataclass
class GuardOutcome:
    status: str = ""  # "" (guardrails off) | ALLOWED | MODIFIED | BLOCKED
    hits: list[RailHitInfo] = field(default_factory=list)
    input_ms: float = 0.0
    output_ms: float = 0.0

    def merge(self, status: str, hits) -> None:
        """Keep the most severe status seen so far; collect every hit."""
        order = {"": 0, "ALLOWED": 1, "MODIFIED": 2, "BLOCKED": 3}
        if order[status] > order[self.status]:
            self.status = status
        self.hits.extend(RailHitInfo(h.rail, h.action, h.reason) for h in hits)


@dataclass
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    prompt_tokens_reused: int = 0
    cached_similarity: float = 0.0  # a similar-question cache hit: cosine to the cached question

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GeneratorInfo:
    backend: str
    model: str = ""
    fallback_reason: str = ""


@dataclass
class AnswerResult:
    answer: str
    kind: AnswerKind
    citations: list[Citation]
    context: list[Hit]
    guard: GuardOutcome
    usage: TokenUsage
    generator: GeneratorInfo
    timings_ms: dict[str, float] = field(default_factory=dict)
    search_timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AnswerResult":
        def hit(h: dict) -> Hit:
            h = dict(h)
            for leg in ("dense", "keyword"):
                if h.get(leg):
                    h[leg] = ScoredId(**h[leg])
            return Hit(**h)

        guard = dict(d["guard"])
        guard["hits"] = [RailHitInfo(**x) for x in guard["hits"]]
        return cls(
            answer=d["answer"],
            kind=AnswerKind(d["kind"]),
            citations=[Citation(**c) for c in d["citations"]],
            context=[hit(h) for h in d["context"]],
            guard=GuardOutcome(**guard),
            usage=TokenUsage(**d["usage"]),
            generator=GeneratorInfo(**d["generator"]),
            timings_ms=d.get("timings_ms", {}),
            search_timings_ms=d.get("search_timings_ms", {}),
        )


@dataclass
class ContextEvent:
    hits: list[Hit]


@dataclass
class DeltaEvent:
    text: str


@dataclass
class DoneEvent:
    result: AnswerResult


AnswerEvent = ContextEvent | DeltaEvent | DoneEvent
