"""NeMo Guardrails around the answer engine: input rails on the query, output rails on (windows of) the answer.

Everything is offline: the shipped config (`config/`) wires Colang 1.0 flows to the `guard_*` actions below,
which call the pure detectors in `detectors.py`, plus nemoguardrails' yara-based injection detection. No LLM,
no embeddings, no downloads. Checks run through `LLMRails.check_async` on the caller's event loop (the sync
`check()` is not thread-safe on CPython 3.11, see shared/NOTES.md).

nemoguardrails reports only a status, the final text and the name of the blocking flow; the detailed `RailHit`s
come from the actions themselves, which append them to a per-call collector (a ContextVar: each check runs in
the caller's task and nemoguardrails' own tasks inherit it, so concurrent checks never mix their hits).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from searchsvc.config import GuardSettings, apply_process_env
from searchsvc.guard.detectors import (
    RailHit,
    check_grounding,
    check_length,
    find_banned_phrases,
    find_banned_topics,
    find_injection,
    find_pii,
    refusal_message,
)

apply_process_env()  # before nemoguardrails is imported: it must not resolve its telemetry host

from nemoguardrails import LLMRails, RailsConfig  # noqa: E402
from nemoguardrails.actions.rail_outcome import RailOutcome, TransformTarget  # noqa: E402
from nemoguardrails.library.injection_detection.actions import injection_detection  # noqa: E402
from nemoguardrails.rails.llm.options import RailStatus, RailType  # noqa: E402

log = logging.getLogger(__name__)
# nemoguardrails logs every Colang event at INFO: dozens of lines per check, carrying the query, the answer and
# its sources before masking. Quiet it unless someone configured that logger explicitly.
if logging.getLogger("nemoguardrails").level == logging.NOTSET:
    logging.getLogger("nemoguardrails").setLevel(logging.WARNING)

SHIPPED_CONFIG = Path(__file__).resolve().parent / "config"
# What a Colang 1.0 flow says when one of its actions raised; check_async then reports BLOCKED.
_INTERNAL_ERROR = "an internal error has occurred"
# Shipped flow -> our rail id, for a block that left no detailed hit (only possible if an action is replaced).
_FLOW_RAILS = {
    "guard input length": "input.max_length",
    "guard input injection": "input.injection",
    "guard input yara": "input.injection",
    "guard input banned topics": "input.banned_topic",
    "guard output banned phrases": "output.banned_phrase",
    "guard output grounding": "output.grounding",
    "guard output pii": "output.pii",
}

_collected: ContextVar[list[RailHit] | None] = ContextVar("searchsvc_guard_hits", default=None)


@dataclass(frozen=True)
class Verdict:
    status: str  # "ALLOWED" | "MODIFIED" | "BLOCKED"
    text: str  # what may be released; for BLOCKED a short refusal in the language of the checked text
    hits: tuple[RailHit, ...]
    latency_ms: float


class _NoHistoryCache(dict[str, Any]):
    """LLMRails keeps the events of every call, keyed by its messages, to resume multi-turn chats, and never
    evicts: unbounded growth in a server (it would also hold every answer and its sources). Each check here is
    a single stateless turn, so nothing is stored."""

    def __setitem__(self, key: str, value: Any) -> None:
        pass


def _decide(text: str, hits: list[RailHit], rewritten: str | None = None) -> RailOutcome:
    """Record `hits` for the running check and turn them into the outcome a guard flow acts on."""
    sink = _collected.get()
    if sink is not None:
        sink.extend(hits)
    if any(hit.action == "blocked" for hit in hits):
        return RailOutcome.block(
            reason="; ".join(hit.reason for hit in hits if hit.action == "blocked"),
            metadata={"refusal": refusal_message(text)},
        )
    if rewritten is not None and rewritten != text:
        return RailOutcome.transform([(TransformTarget.BOT_MESSAGE, rewritten)])
    return RailOutcome.allow()


class Guardrails:
    """Input and output rails. Build once per process and share; checks may run concurrently on one loop."""

    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.config_dir = Path(settings.config_dir) if settings.config_dir else SHIPPED_CONFIG
        self._rails: LLMRails | None = None
        self._configured: dict[RailType, bool] = {}
        if not settings.enabled:
            return  # checks pass everything through
        config = RailsConfig.from_path(str(self.config_dir))
        self._rails = LLMRails(config)
        self._rails.events_history_cache = _NoHistoryCache()
        for name, fn in self._actions().items():
            self._rails.register_action(fn, name)
        # check_async raises on a rail type without flows; a replacement config may have only one kind.
        self._configured = {
            RailType.INPUT: bool(config.rails.input.flows),
            RailType.OUTPUT: bool(config.rails.output.flows),
        }

    async def check_input(self, query: str) -> Verdict:
        return await self._check(RailType.INPUT, query, [{"role": "user", "content": query}])

    async def check_output(self, text: str, sources: Mapping[int, str], *, final: bool = True) -> Verdict:
        """`sources`: citation number n (the "[n]" markers in `text`) -> the passage the LLM saw. `final`: False
        for a streamed window (all sentences removed -> MODIFIED with empty text, not BLOCKED)."""
        # The context message becomes a ContextUpdate event: the actions read it from their `context` argument.
        # An empty user turn first: check_async itself adds one when there is none, but after the context
        # message, and the output rails then never run.
        context = {"guard_sources": {int(n): str(p) for n, p in sources.items()}, "guard_final": final}
        messages = [
            {"role": "context", "content": context},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": text},
        ]
        return await self._check(RailType.OUTPUT, text, messages)

    async def _check(self, kind: RailType, text: str, messages: list[dict[str, Any]]) -> Verdict:
        t0 = time.perf_counter()
        if self._rails is None or not self._configured[kind]:
            return Verdict("ALLOWED", text, (), _ms(t0))
        hits: list[RailHit] = []
        token = _collected.set(hits)
        try:
            result = await self._rails.check_async(messages, rail_types=[kind])
        except Exception as exc:  # fail closed: an unchecked text is never released
            log.exception("%s rails failed", kind.value)
            hits.append(RailHit("guard.error", "blocked", f"{kind.value} rails failed: {type(exc).__name__}: {exc}"))
            return Verdict("BLOCKED", refusal_message(text), tuple(hits), _ms(t0))
        finally:
            _collected.reset(token)

        if result.status == RailStatus.BLOCKED:
            if _INTERNAL_ERROR in result.content:
                reason = f"rail {result.rail!r} failed (nemoguardrails internal error)"
                hits.append(RailHit("guard.error", "blocked", reason))
            elif not any(hit.action == "blocked" for hit in hits):  # a flow of a replacement config
                rail = _FLOW_RAILS.get(result.rail or "", f"{kind.value}.{result.rail}")
                hits.append(RailHit(rail, "blocked", f"blocked by flow {result.rail!r}: {result.content}"))
            return Verdict("BLOCKED", refusal_message(text), tuple(hits), _ms(t0))
        status = "MODIFIED" if result.status == RailStatus.MODIFIED else "ALLOWED"
        return Verdict(status, result.content, tuple(hits), _ms(t0))

    def _actions(self) -> dict[str, Callable[..., Awaitable[RailOutcome]]]:
        """The guard_* actions, bound to this instance's settings (so they are registered here, not loaded
        from an actions.py in the config dir). Each returns a RailOutcome for its flow."""
        s = self.settings

        async def guard_input_length(text: str) -> RailOutcome:
            return _decide(text, check_length(text, s.max_input_chars))

        async def guard_input_injection(text: str) -> RailOutcome:
            return _decide(text, find_injection(text))

        async def guard_input_yara(text: str, config: RailsConfig) -> RailOutcome:
            # nemoguardrails' own action, rules from the config's injection_detection section. On input it
            # always rejects: its "omit" rewrite targets the bot message.
            outcome = await injection_detection(text=text, config=config)
            if not outcome.is_blocked:
                return _decide(text, [])
            rules = ", ".join(outcome.metadata.get("detections") or ["?"])
            return _decide(text, [RailHit("input.injection", "blocked", f"yara rule(s) matched: {rules}")])

        async def guard_input_banned_topics(text: str) -> RailOutcome:
            return _decide(text, find_banned_topics(text, s.banned_topics))

        async def guard_output_banned_phrases(text: str) -> RailOutcome:
            return _decide(text, find_banned_phrases(text, s.banned_phrases))

        async def guard_output_grounding(text: str, context: dict[str, Any] | None = None) -> RailOutcome:
            context = context or {}
            sources = context.get("guard_sources") or {}
            kept, hits = check_grounding(text, sources, s.grounding_threshold, s.grounding_policy)
            if s.grounding_policy == "remove" and hits and not kept and context.get("guard_final", True):
                hits.append(RailHit("output.grounding", "blocked", "no supported sentence left"))
            return _decide(text, hits, kept)

        async def guard_output_pii(text: str) -> RailOutcome:
            masked, hits = find_pii(text, "masked" if s.pii_policy == "mask" else "blocked")
            return _decide(text, hits, masked)

        actions = (
            guard_input_length,
            guard_input_injection,
            guard_input_yara,
            guard_input_banned_topics,
            guard_output_banned_phrases,
            guard_output_grounding,
            guard_output_pii,
        )
        return {fn.__name__: fn for fn in actions}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
