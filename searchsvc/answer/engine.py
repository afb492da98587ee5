"""The answer pipeline: input rails -> retrieve -> (cache) -> untrusted-context scan -> pack -> generate
(or extract) -> output rails per sentence window and on the whole answer -> citations -> cache.

Synthesis uses our own prompt through LlamaIndex's LLM interface (`AnswerLLM.stream`, a LlamaIndex LLM
underneath) rather than `get_response_synthesizer`: we need numbered sources, one LLM call per
answer (its compact/refine modes may make several), token streaming we can stop mid-answer, and the backend's
own token counts -- none of which the synthesizers expose.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from searchsvc.answer.cache import AnswerCache, cache_key, context_key, unit
from searchsvc.answer.citations import attribute_uncited, extract_citations, source_token_sets, strip_invalid_markers
from searchsvc.answer.extractive import extractive_answer, score_sentences
from searchsvc.answer.prompt import PROMPT_VERSION, build_messages, pack_context, pack_sentences, refusal_for
from searchsvc.answer.types import (
    AnswerEvent,
    AnswerKind,
    AnswerResult,
    ContextEvent,
    DeltaEvent,
    DoneEvent,
    GenerationParams,
    GeneratorInfo,
    GuardOutcome,
    RailHitInfo,
    TokenUsage,
)
from searchsvc.config import Settings
from searchsvc.domain.text import citations as markers_in
from searchsvc.domain.text import complete_prefix, has_words, is_refusal
from searchsvc.domain.types import Hit, SearchParams, indexed_text
from searchsvc.ops.tracing import span
from searchsvc.retrieve.external import EXTERNAL_MODEL
from searchsvc.search.pipeline import SearchPipeline
from searchsvc.storage import CollectionStorage

log = logging.getLogger(__name__)


class LLMProvider:
    """Loads the configured LLM once, on first use; remembers why it could not (then answers are extractive)."""

    RETRY_S = 60.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.llm
        self.models_dir = settings.gguf_dir
        self._lock = threading.Lock()
        self._loaded = False
        self._llm = None
        self._reason = ""
        self._retry_at = 0.0

    def get(self):
        """(AnswerLLM or None, reason it is None). A load that failed for lack of disk space is tried again
        after RETRY_S (space may have been freed); other failures are final until restart."""
        with self._lock:
            if not self._loaded or (self._retry_at and time.monotonic() >= self._retry_at):
                self._retry_at = 0.0
                self._llm, self._reason = self._load()
                self._loaded = True
            return self._llm, self._reason

    def _load(self):
        if self.settings.backend == "none":
            return None, "no LLM configured (llm.backend = none)"
        try:
            from searchsvc.answer.llm import build_llm

            started = time.perf_counter()
            llm = build_llm(self.settings, self.models_dir)
            log.info("LLM %s/%s ready in %.1f s", llm.backend, llm.model, time.perf_counter() - started)
            return llm, ""
        except Exception as exc:  # LLMUnavailable, or the backend package missing: answer extractively
            log.warning("LLM unavailable, answers will be extractive: %s", exc)
            if getattr(exc, "retryable", False):
                self._retry_at = time.monotonic() + self.RETRY_S
            return None, f"LLM unavailable: {exc}"


class AnswerStats:
    def __init__(self) -> None:
        self.answers_by_kind: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.semantic_cache_hits = 0
        self.semantic_cache_misses = 0
        self.last_cancel_stop_ms: float | None = None  # cancel -> generation thread stopped
        self.generating = 0  # generation threads running now
        self._generating_lock = threading.Lock()

    def count_generating(self, change: int) -> None:
        with self._generating_lock:
            self.generating += change


class AnswerEngine:
    def __init__(
        self,
        settings: Settings,
        pipeline: SearchPipeline,
        executor: ThreadPoolExecutor,
        guard=None,
        llms: LLMProvider | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.executor = executor
        self.guard = guard
        self.llms = llms or LLMProvider(settings)
        self.cache = cache
        self.stats = AnswerStats()
        # The server-wide part of every cache key (prompt, packing and guard settings): fixed for the process.
        self._server_key = {
            "prompt": PROMPT_VERSION,
            "answer": settings.answer.model_dump(),
            "guard": settings.guard.model_dump(mode="json"),
        }
        # Generation waits on the network or holds the local model's lock for seconds: its own threads, so
        # searches never queue behind it.
        self.generate_executor = ThreadPoolExecutor(4, thread_name_prefix="searchsvc-generate")

    async def _run(self, fn: Callable, *args):
        """On a worker thread, in the caller's context (its trace span: the search stages become its children)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(contextvars.copy_context().run, fn, *args))

    async def answer(self, collection: CollectionStorage, params: SearchParams, gen: GenerationParams) -> AnswerResult:
        async for event in self.stream(collection, params, gen):
            if isinstance(event, DoneEvent):
                return event.result
        raise AssertionError("answer stream ended without a done event")

    async def stream(self, collection: CollectionStorage, params: SearchParams, gen: GenerationParams) -> AsyncIterator[AnswerEvent]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        guard = GuardOutcome()

        if self.guard is not None:
            with span("guardrails.input"):
                verdict = await self.guard.check_input(params.query)
            guard.input_ms = timings["guard_input"] = verdict.latency_ms
            guard.merge(verdict.status, verdict.hits)
            if verdict.status == "BLOCKED":
                result = AnswerResult(verdict.text, AnswerKind.REFUSED, [], [], guard, TokenUsage(), GeneratorInfo("none"))
                yield ContextEvent([])
                yield DoneEvent(self._finish(result, timings, started))
                return

        llm, reason = (None, "extractive answer requested") if gen.extractive else await self._run(self.llms.get)
        generator = GeneratorInfo(llm.backend, llm.model) if llm else GeneratorInfo("extractive", "", reason)

        key_params = self._key_params(params, gen, generator)
        key = cache_key(collection.name, collection.version, params.query, key_params)
        if self.cache is not None and not gen.bypass_cache:
            cached = self.cache.get(key)
            if cached is not None:
                cached = copy.deepcopy(cached)  # the cache's copy stays as it was stored
                self.stats.cache_hits += 1
                cached.usage.cached = True
                cached.guard.input_ms = guard.input_ms
                yield ContextEvent(cached.context)
                yield DeltaEvent(cached.answer)
                yield DoneEvent(self._finish(cached, timings, started, count_tokens=False))
                return
            self.stats.cache_misses += 1

        t = time.perf_counter()
        search = await self._run(self.pipeline.search, collection, params)
        timings["retrieve"] = (time.perf_counter() - t) * 1000
        hits = self._drop_untrusted(search.hits, guard)
        embed_question = _question_embedder(collection.embed_query, params.query, search.query_vector)

        count_tokens = llm.count_tokens if llm else _estimate_tokens
        budget = self.settings.answer.context_tokens
        max_hits = min(params.top_k, self.settings.answer.max_context_hits)
        t = time.perf_counter()
        # (a collection of callers' vectors has no embedder to score sentences with)
        if self.settings.answer.context_selection == "sentences" and collection.config.embedding_model != EXTERNAL_MODEL:
            def score(sentences):
                return score_sentences(params.query, sentences, embed_question, collection.embed_passages)
            packed = await self._run(pack_sentences, hits, count_tokens, budget, max_hits, score)
        else:
            packed = await self._run(pack_context, hits, count_tokens, budget, max_hits)
        timings["context"] = (time.perf_counter() - t) * 1000
        yield ContextEvent(packed.hits)

        if not packed.hits:
            result = AnswerResult(refusal_for(params.query), AnswerKind.NO_CONTEXT, [], [], guard, TokenUsage(), generator)
            result.search_timings_ms = search.timings_ms
            yield DoneEvent(self._finish(result, timings, started))
            return

        similar_key, question_vector = None, None  # set where the similar-question cache applies
        if self._semantic_cache_applies(collection):
            # The key is what the model reads: each packed passage by chunk id and text (sentence packing picks
            # per question), in order.
            context = [f"{h.chunk_id}:{hashlib.sha256(h.text.encode()).hexdigest()}" for h in packed.hits]
            similar_key = context_key(collection.name, collection.version, context, key_params)
            question_vector = unit(await self._run(embed_question, params.query))
        if similar_key is not None and not gen.bypass_cache:
            found = self.cache.get_similar(similar_key, question_vector, self.settings.answer.semantic_cache_min_cosine)
            if found is not None:
                self.stats.semantic_cache_hits += 1
                cached, cosine = copy.deepcopy(found[0]), found[1]
                cached.usage.cached, cached.usage.cached_similarity = True, cosine
                cached.guard.input_ms = guard.input_ms
                yield DeltaEvent(cached.answer)
                yield DoneEvent(self._finish(cached, timings, started, count_tokens=False))
                return
            self.stats.semantic_cache_misses += 1

        # Grounding sees what the model saw, title included.
        sources = {n: indexed_text(h.title, h.text) for n, h in enumerate(packed.hits, start=1)}
        usage = TokenUsage()
        kind = AnswerKind.GENERATED if llm else AnswerKind.EXTRACTIVE
        if llm is not None:
            pieces = self._generate(llm, build_messages(params.query, packed), gen, usage, timings)
        else:
            pieces = self._extract(params.query, packed.hits, collection, timings, embed_question)

        released: list[str] = []
        source_tokens = source_token_sets(sources)
        model_cited: set[int] = set()  # sources the model cited itself
        inferred: set[int] = set()  # sources the server attributed uncited sentences to
        blocked_text = None
        buffer = ""
        output_ms = 0.0
        try:
            async for piece in pieces:
                buffer += piece
                cut = len(buffer) if piece == "" else complete_prefix(buffer)  # "" marks the end of generation
                if not cut:
                    continue
                window, buffer = buffer[:cut], buffer[cut:]
                if kind is AnswerKind.GENERATED:
                    model_cited.update(markers_in(window))
                    window, added = attribute_uncited(window, source_tokens, self.settings.answer.attribution_min_overlap)
                    inferred |= added
                text, blocked_text, ms = await self._check_window(window, sources, guard)
                output_ms += ms
                if blocked_text is not None:
                    break  # closing `pieces` stops generation
                if text:
                    released.append(text)
                    yield DeltaEvent(text)
        except _GenerationFailed as failure:
            if released:  # keep what was checked and sent; say what happened
                generator.fallback_reason = f"generation failed mid-answer: {failure}"
            else:
                log.warning("generation failed, answering extractively: %s", failure)
                generator = GeneratorInfo("extractive", "", f"generation failed: {failure}")
                kind = AnswerKind.EXTRACTIVE
                async for piece in self._extract(params.query, packed.hits, collection, timings, embed_question):
                    if piece:
                        text, blocked_text, ms = await self._check_window(piece, sources, guard)
                        output_ms += ms
                        if text and blocked_text is None:
                            released.append(text)
                            yield DeltaEvent(text)
        finally:
            await pieces.aclose()

        answer = blocked_text
        if answer is None:
            answer = strip_invalid_markers("".join(released).strip(), len(packed.hits))
            if self.guard is not None:
                with span("guardrails.output"):
                    verdict = await self.guard.check_output(answer, sources, final=True)
                output_ms += verdict.latency_ms
                guard.merge(verdict.status, verdict.hits)
                answer = verdict.text
                if verdict.status == "BLOCKED":
                    blocked_text = answer
            if not has_words(answer):
                # Never silence: every sentence was removed as unsupported (or the model said nothing).
                blocked_text = answer = refusal_for(params.query)
                if any(h.rail == "output.grounding" for h in guard.hits):
                    guard.merge("BLOCKED", [RailHitInfo("output.grounding", "blocked", "no supported sentence left")])
        guard.output_ms = timings["guard_output"] = output_ms
        if blocked_text is not None:
            kind = AnswerKind.REFUSED
        citations = [] if kind is AnswerKind.REFUSED else extract_citations(answer, packed.hits, inferred - model_cited)
        if kind is AnswerKind.GENERATED and not citations and is_refusal(answer):
            kind = AnswerKind.UNANSWERED
        result = AnswerResult(answer, kind, citations, packed.hits, guard, usage, generator)
        result.search_timings_ms = search.timings_ms
        result = self._finish(result, timings, started)
        if self.cache is not None:
            self.cache.put(key, collection.name, collection.version, result)
            if similar_key is not None:
                self.cache.put_similar(similar_key, collection.name, collection.version, question_vector, result)
        yield DoneEvent(result)

    # ------------------------------------------------------------------ stages
    def _drop_untrusted(self, hits: list[Hit], guard: GuardOutcome) -> list[Hit]:
        """Passages carrying instruction-like text are left out of the prompt (and reported), not obeyed."""
        if self.guard is None:
            return hits
        from searchsvc.guard import scan_untrusted

        kept = []
        for hit in hits:
            found = scan_untrusted(indexed_text(hit.title, hit.text))
            if found:
                guard.merge("ALLOWED", [_removed(h, hit.chunk_id) for h in found])
            else:
                kept.append(hit)
        return kept

    async def _check_window(self, window: str, sources: dict[int, str], guard: GuardOutcome):
        """(text to release, refusal text if blocked else None, ms). Leading whitespace is kept for joining."""
        if self.guard is None:
            return window, None, 0.0
        verdict = await self.guard.check_output(window.strip(), sources, final=False)
        guard.merge(verdict.status, verdict.hits)
        if verdict.status == "BLOCKED":
            return "", verdict.text, verdict.latency_ms
        if not verdict.text.strip():
            return "", None, verdict.latency_ms
        lead = window[: len(window) - len(window.lstrip())]
        return lead + verdict.text.strip(), None, verdict.latency_ms

    async def _generate(self, llm, messages, gen: GenerationParams, usage: TokenUsage, timings: dict[str, float]):
        """Yield text deltas from a generation thread, then "" at the end. Closing this generator (client
        cancelled, or output blocked) tells the thread to stop; it stops after at most one more token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        stop_requested: list[float] = []

        def post(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed: the server is shutting down
                stop.set()

        running: list = []

        def produce() -> None:
            self.stats.count_generating(+1)
            try:
                with span("llm.generate", max_tokens=gen.max_tokens) as llm_span:
                    generate(llm_span)
            finally:
                self.stats.count_generating(-1)

        def generate(llm_span) -> None:
            generation = None
            try:
                generation = llm.stream(messages, max_tokens=gen.max_tokens, temperature=gen.temperature)
                running.append(generation)
                for delta in generation:
                    if stop.is_set():
                        break
                    post(("delta", delta))
            except Exception as exc:
                post(("error", exc))
            finally:
                if generation is not None:
                    generation.close()
                    usage.prompt_tokens = generation.usage.prompt_tokens
                    usage.completion_tokens = generation.usage.completion_tokens
                    usage.prompt_tokens_reused = generation.usage.prompt_tokens_reused
                    llm_span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens,
                                             "gen_ai.usage.output_tokens": usage.completion_tokens})
                if stop_requested:
                    self.stats.last_cancel_stop_ms = (time.perf_counter() - stop_requested[0]) * 1000
                    log.info("generation stopped %.1f ms after cancel", self.stats.last_cancel_stop_ms)
                post(("end", None))

        started = time.perf_counter()
        future = loop.run_in_executor(self.generate_executor, contextvars.copy_context().run, produce)
        try:
            while True:
                what, value = await queue.get()
                if what == "delta":
                    timings.setdefault("first_token", (time.perf_counter() - started) * 1000)
                    yield value
                elif what == "error":
                    raise _GenerationFailed(str(value) or type(value).__name__)
                else:
                    break
            timings["generate"] = (time.perf_counter() - started) * 1000
            yield ""
        finally:
            if not future.done():
                stop_requested.append(time.perf_counter())
                stop.set()
                if running:  # thread-safe: also stops a prompt still being read, not only between tokens
                    running[0].close()

    async def _extract(self, query: str, hits: list[Hit], collection: CollectionStorage, timings: dict[str, float],
                       embed_question):
        started = time.perf_counter()
        text = await self._run(extractive_answer, query, hits, embed_question, collection.embed_passages)
        timings["generate"] = (time.perf_counter() - started) * 1000
        yield text
        yield ""

    # ------------------------------------------------------------------ bookkeeping
    def _semantic_cache_applies(self, collection: CollectionStorage) -> bool:
        # (a collection of callers' vectors has no embedder for questions)
        return self.cache is not None and self.settings.answer.semantic_cache and collection.config.embedding_model != EXTERNAL_MODEL

    def _key_params(self, params: SearchParams, gen: GenerationParams, generator: GeneratorInfo) -> dict:
        p = asdict(params)
        p.pop("query")
        p["mode"] = params.mode.value
        p.pop("explain")  # explanations don't change the answer
        return {
            "search": p,
            "max_tokens": gen.max_tokens,
            "temperature": gen.temperature,
            "generator": [generator.backend, generator.model],
            "server": self._server_key,
        }

    def _finish(self, result: AnswerResult, timings: dict[str, float], started: float, count_tokens: bool = True) -> AnswerResult:
        timings["total"] = (time.perf_counter() - started) * 1000
        result.timings_ms = dict(timings)
        self.stats.answers_by_kind[result.kind.value] += 1
        if count_tokens:
            self.stats.prompt_tokens += result.usage.prompt_tokens
            self.stats.completion_tokens += result.usage.completion_tokens
        return result

    def close(self) -> None:
        self.generate_executor.shutdown(wait=False, cancel_futures=True)
        if self.cache is not None:
            self.cache.close()


class _GenerationFailed(Exception):
    pass


def _removed(hit, chunk_id: str):
    from searchsvc.guard import RailHit

    return RailHit(hit.rail, "removed", f"{chunk_id} left out of the context: {hit.reason}")


def _estimate_tokens(text: str) -> int:
    # Extractive answers never reach a tokenizer; ~3 chars per token is conservative for English and Korean.
    return len(text) // 3 + 1


def _question_embedder(embed_query, question: str, searched_as=None):
    """The collection's query embedder for one answer, which embeds each text once: the question as the search
    already embedded it (`searched_as`, when a stage needed it), anything else at its first use. Sentence packing,
    the extractive answer and the similar-question cache all score against the question."""
    known = {question: searched_as} if searched_as is not None else {}

    def embed(text: str):
        if text not in known:
            known[text] = embed_query(text)
        return known[text]

    return embed

