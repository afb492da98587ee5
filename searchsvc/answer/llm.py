"""The LLM layer the answer engine calls: one sync streaming API over three LlamaIndex LLM classes.

Backends: `llama_cpp` (in-process GGUF via `llama_index.llms.llama_cpp.LlamaCPP`), `ollama`
(`llama_index.llms.ollama.Ollama`) and `openai_like` (`llama_index.llms.openai_like.OpenAILike`). The LlamaIndex
instance is passed around explicitly (`AnswerLLM.llm`); the global `Settings.llm` is never set.

`AnswerLLM.stream()` returns a `Generation`: iterate it for text deltas on one (worker) thread; `close()` may be
called from any thread and stops the work: llama.cpp within one token (or one 64-token prefill chunk while the
prompt is being read); a remote stream is closed at once if the consumer is between chunks, else when the next
chunk arrives. Generations on one llama.cpp model are serialized by a lock (its context is not thread-safe).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlparse

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import LLM

from searchsvc.answer.errors import LLMUnavailable, ModelDiskFull  # noqa: F401 (part of this module's API)
from searchsvc.config import LLMSettings

if TYPE_CHECKING:
    from llama_cpp import Llama


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_reused: int = 0  # of prompt_tokens, those whose KV cache a previous generation left (not read again)
    estimated: bool = False  # True when a remote server sent no counts and count_tokens() filled them in

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Generation:
    """Iterate for text deltas; `.usage` is final after iteration ends; `.close()` stops generation at once.

    Use it from one consumer thread; `close()` may come from any thread. Also a context manager (exit closes).
    """

    def __init__(self, run: Callable[[Generation], Iterator[str]]) -> None:
        self.usage = Usage()
        self.finish_reason: str | None = None  # "stop" | "length" | "cancelled" (remote: what the server said)
        self._cancel = threading.Event()
        self._guard = threading.Lock()  # orders close() against the consumer's next()
        self._running = False  # the consumer is inside the backend (not suspended at a yield)
        self._closed = False
        self._deltas = run(self)  # a generator: nothing runs (no lock, no request) until the first next()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        with self._guard:
            if self._closed:
                raise StopIteration
            self._running = True
        try:
            return next(self._deltas)
        except BaseException:
            self._closed = True  # exhausted or failed
            raise
        finally:
            with self._guard:
                self._running = False

    def close(self) -> None:
        self._cancel.set()
        with self._guard:
            if self._running:
                # The consumer's thread is inside the backend and unwinds there on seeing the flag (llama.cpp:
                # its stopping criterion, next token; remote: next chunk). A generator cannot be closed while
                # another thread runs it.
                return
            self._closed = True
            # Suspended or never started: GeneratorExit runs the backend's `finally` (release the model lock,
            # close the HTTP stream) right here.
            self._deltas.close()
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AnswerLLM:
    """One configured backend. `stream()` is the primitive; `complete_chat()` drains it."""

    backend: str
    model: str  # display name: the model name, or the gguf file name
    llm: LLM

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float) -> Generation:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        msgs = list(messages)
        return Generation(lambda gen: self._run(gen, msgs, max_tokens, temperature))

    def complete_chat(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> tuple[str, Usage]:
        with self.stream(messages, max_tokens=max_tokens, temperature=temperature) as gen:
            text = "".join(gen)
        return text, gen.usage

    def close(self) -> None:
        """Release the model / HTTP connections (waits for a running llama.cpp generation)."""

    def _run(self, gen: Generation, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[str]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------- llama.cpp

# Qwen2.5 instruct models speak ChatML. LlamaCPP's default messages_to_prompt is Llama-2 ([INST]) format.
_QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # as its chat template
CHATML_STOP = ["<|im_end|>", "<|endoftext|>"]
_PREFILL_CHUNK = 64  # prompt tokens per decode call: the cancel check granularity; measured: no slower than 512


def _chatml_text(text: str) -> str:
    # llama-cpp-python tokenizes the prompt with special=True, so a document containing "<|im_start|>" would
    # become a real control token (a role switch). Break the marker inside message text.
    return text.replace("<|", "< |")


def chatml_messages_to_prompt(messages: Sequence[ChatMessage]) -> str:
    parts = [] if messages and messages[0].role == MessageRole.SYSTEM else [
        f"<|im_start|>system\n{_QWEN_DEFAULT_SYSTEM}<|im_end|>\n"
    ]
    for m in messages:
        parts.append(f"<|im_start|>{m.role.value}\n{_chatml_text(m.content or '')}<|im_end|>\n")
    return "".join(parts) + "<|im_start|>assistant\n"


def chatml_completion_to_prompt(completion: str) -> str:
    return chatml_messages_to_prompt([ChatMessage(role=MessageRole.USER, content=completion)])


@functools.cache
def _llamacpp_class() -> type:
    """A minimal LlamaCPP subclass (defined lazily: llama_cpp is an optional, compiled dependency)."""
    from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen
    from llama_index.core.llms.callbacks import llm_completion_callback
    from llama_index.llms.llama_cpp import LlamaCPP

    class PerCallLlamaCPP(LlamaCPP):
        """LlamaCPP whose complete/stream_complete honour per-call kwargs.

        Upstream (0.7.0) ignores **kwargs there, so per-call max_tokens/temperature are silently dropped, and it
        writes "stream" into the shared `self.generate_kwargs` dict, a data race between threads. Here each call
        merges its own dict; nothing shared is mutated.
        """

        @property
        def llama(self) -> Llama:
            return self._model

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            if not formatted:
                prompt = self.completion_to_prompt(prompt)
            response = self._model(prompt=prompt, **{**self.generate_kwargs, **kwargs, "stream": False})
            return CompletionResponse(text=response["choices"][0]["text"], raw=response)

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
            if not formatted:
                prompt = self.completion_to_prompt(prompt)
            chunks = self._model(prompt=prompt, **{**self.generate_kwargs, **kwargs, "stream": True})

            def gen() -> CompletionResponseGen:
                text = ""
                try:
                    for chunk in chunks:
                        delta = chunk["choices"][0]["text"]
                        text += delta
                        yield CompletionResponse(delta=delta, text=text, raw=chunk)
                finally:
                    chunks.close()  # stop llama.cpp's generator now, not whenever it is garbage-collected

            return gen()

    return PerCallLlamaCPP


def prompt_lookup(num_pred_tokens: int) -> Any:
    """llama-cpp-python's prompt-lookup drafts (n-grams of the prompt continue as they did there: answers quote
    their context), counting drafted and accepted tokens. Verification keeps only what the model samples itself;
    its batched kernels round differently from one-token decoding, so a near-tie can go the other way."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    class CountingPromptLookup(LlamaPromptLookupDecoding):
        def __init__(self) -> None:
            super().__init__(max_ngram_size=2, num_pred_tokens=num_pred_tokens)
            self.drafted = self.accepted = 0
            self._last = (0, 0)  # (ids at the last call, tokens drafted then)

        def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
            # Llama.generate calls this after each verification with every id kept: the last call's drafts that
            # were accepted, plus the one token sampled after them.
            length, drafted = self._last
            if drafted and len(input_ids) > length:
                self.accepted += min(drafted, len(input_ids) - length - 1)
            draft = super().__call__(input_ids, **kwargs)
            self._last = (len(input_ids), len(draft))
            self.drafted += len(draft)
            return draft

    return CountingPromptLookup()


class _TokenCounter:
    """A llama.cpp stopping criterion: counts sampled tokens exactly and stops generation when cancelled.

    Llama.generate calls it once per sampled token, with the ids evaluated so far (one longer each time);
    _create_completion calls it once more after its loop with no new token (same length: not counted).
    """

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.sampled = 0
        self._seen = 0

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        if len(input_ids) > self._seen:
            self._seen = len(input_ids)
            self.sampled += 1
        return self.gen.cancelled


class _LlamaCppLLM(AnswerLLM):
    backend = "llama_cpp"

    def __init__(self, llm: Any, model: str) -> None:
        self.llm = llm
        self.model = model
        self._llama: Llama = llm.llama
        self._lock = threading.Lock()  # one generation at a time: a llama.cpp context is not thread-safe

    def close(self) -> None:
        with self._lock:
            self._llama.close()

    def count_tokens(self, text: str) -> int:
        # Tokenizing reads only the vocabulary, not the context: safe without the lock.
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _run(self, gen: Generation, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[str]:
        import numpy as np
        from llama_cpp import StoppingCriteriaList

        llama = self._llama
        while not self._lock.acquire(timeout=0.05):  # queue behind the running generation, unless cancelled
            if gen.cancelled:
                gen.finish_reason = "cancelled"
                return
        try:
            # Exactly the tokens llama.cpp evaluates (_create_completion: BOS only if the model wants one).
            tokens = llama.tokenize(self.llm.messages_to_prompt(messages).encode("utf-8"), add_bos=True, special=True)
            gen.usage.prompt_tokens = len(tokens)
            if len(tokens) + 1 > llama.n_ctx():
                raise ValueError(f"prompt has {len(tokens)} tokens; the context window is {llama.n_ctx()}")
            # Prefill ourselves in small chunks so close() is honoured while the prompt is read (seconds for
            # ~1000 tokens). Keep the prefix already in the KV cache (e.g. the system prompt of the last call);
            # leave the last token to generate(), which then reuses this cache and samples from fresh logits.
            end = len(tokens) - 1
            cached = llama.input_ids[: min(llama.n_tokens, end)]
            diff = np.flatnonzero(cached != np.asarray(tokens[: len(cached)]))
            llama.n_tokens = int(diff[0]) if len(diff) else len(cached)  # eval() drops KV entries past n_tokens
            gen.usage.prompt_tokens_reused = llama.n_tokens
            # With a draft model llama-cpp-python keeps every position's logits; the prompt's are never read (only
            # those of drafted tokens are verified), and computing them would cost the vocabulary's 151k-row
            # projection per prompt token: off while reading the prompt.
            keep_all_logits, llama._logits_all = llama._logits_all, False
            try:
                for i in range(llama.n_tokens, end, _PREFILL_CHUNK):
                    if gen.cancelled:
                        gen.finish_reason = "cancelled"
                        return
                    llama.eval(tokens[i : min(i + _PREFILL_CHUNK, end)])
            finally:
                llama._logits_all = keep_all_logits

            counter = _TokenCounter(gen)
            stream = self.llm.stream_chat(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                stopping_criteria=StoppingCriteriaList([counter]),
            )
            try:
                for chunk in stream:
                    if gen.cancelled:
                        gen.finish_reason = "cancelled"
                        break
                    if chunk.delta:
                        yield chunk.delta
                    gen.finish_reason = chunk.raw["choices"][0].get("finish_reason") or gen.finish_reason
            finally:
                stream.close()
                # "stop" means the last sampled token ended the turn: the end-of-generation token, which is not
                # output and which llama.cpp's own usage does not count either. (Or the last token of a stop
                # string spelled out as plain text: then this is one low.)
                ended = gen.finish_reason == "stop" and counter.sampled > 0
                gen.usage.completion_tokens = counter.sampled - int(ended)
        finally:
            self._lock.release()


# ------------------------------------------------------------------------------------------------------------ remote


@functools.cache
def _estimator() -> Callable[[str], list]:
    # tiktoken cl100k_base, whose files ship inside llama-index-core (works offline). Not the server model's
    # tokenizer: an estimate, within ~10-20% for English on Llama/Qwen-family vocabularies.
    from llama_index.core.utils import get_tokenizer

    return get_tokenizer()


class _OpenedResponses:
    """An httpx response hook that hands each HTTP response to the generation that sent its request.

    Closing LlamaIndex's stream generator does not reliably close the HTTP response: the openai SDK's Stream
    sits in a reference cycle with its own generator, so its response stays open (and the server keeps
    generating) until the cyclic GC runs. The hook runs on the requesting thread, inside the generation's
    first next(), so a thread-local list is enough to route it.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def hook(self, response: Any) -> None:
        opened = getattr(self._local, "opened", None)
        if opened is not None:
            opened.append(response)

    def collect_into(self, opened: list[Any] | None) -> None:
        self._local.opened = opened


class _RemoteLLM(AnswerLLM):
    def __init__(self, llm: LLM, model: str, base_url: str, responses: _OpenedResponses, http: Any) -> None:
        self.llm = llm
        self.model = model
        self.base_url = base_url
        self._responses = responses
        self._http = http  # the HTTP client (connection pool) we gave the LlamaIndex class

    def close(self) -> None:
        self._http.close()

    def count_tokens(self, text: str) -> int:
        return len(_estimator()(text))

    def _estimate_usage(self, gen: Generation, messages: list[ChatMessage], text: str) -> None:
        # ~4 framing tokens per message plus 3 to prime the reply (OpenAI's documented ChatML approximation).
        gen.usage.prompt_tokens = sum(self.count_tokens(m.content or "") + 4 for m in messages) + 3
        gen.usage.completion_tokens = self.count_tokens(text)
        gen.usage.estimated = True

    def _failed(self, exc: Exception) -> LLMUnavailable:
        status = getattr(exc, "status_code", None)
        detail = f"HTTP {status}: {exc}" if status is not None else f"{type(exc).__name__}: {exc}"
        return LLMUnavailable(f"{self.backend} server at {self.base_url} (model {self.model!r}) failed: {detail}")

    def _chunks(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Any]:
        raise NotImplementedError

    def _apply(self, gen: Generation, raw: Any) -> None:
        """Read finish reason and usage from one raw stream chunk."""
        raise NotImplementedError

    def _run(self, gen: Generation, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[str]:
        parts: list[str] = []
        opened: list[Any] = []
        stream = self._chunks(messages, max_tokens, temperature)
        try:
            while True:
                self._responses.collect_into(opened)
                try:
                    chunk = next(stream)  # the HTTP request itself is made on the first next()
                except StopIteration:
                    break
                except Exception as exc:
                    raise self._failed(exc) from exc
                finally:
                    self._responses.collect_into(None)
                self._apply(gen, chunk.raw)
                if chunk.delta:
                    parts.append(chunk.delta)
                    yield chunk.delta
                if gen.cancelled:
                    gen.finish_reason = "cancelled"
                    break
        finally:
            stream.close()
            for response in opened:
                response.close()  # the server sees the disconnect and stops generating
            if not gen.usage.prompt_tokens and not gen.usage.completion_tokens:
                self._estimate_usage(gen, messages, "".join(parts))


class _OllamaLLM(_RemoteLLM):
    backend = "ollama"

    def _chunks(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Any]:
        # LlamaIndex's Ollama builds the request `options` from instance fields only (stream_chat ignores
        # kwargs), so this call's settings go on a shallow per-call copy; it shares the HTTP client.
        llm = self.llm.model_copy(
            update={
                "temperature": temperature,
                "additional_kwargs": {**self.llm.additional_kwargs, "num_predict": max_tokens},
            }
        )
        return llm.stream_chat(messages)

    def _apply(self, gen: Generation, raw: Any) -> None:
        # The final NDJSON line (done: true) carries the server's counts; LlamaIndex passes it as `raw` (a dict).
        if raw.get("done"):
            gen.finish_reason = raw.get("done_reason") or "stop"
            if raw.get("prompt_eval_count") is not None and raw.get("eval_count") is not None:
                gen.usage = Usage(raw["prompt_eval_count"], raw["eval_count"])


class _OpenAILikeLLM(_RemoteLLM):
    backend = "openai_like"

    def _chunks(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Any]:
        # OpenAI._get_model_kwargs merges call kwargs into the request body (max_tokens is omitted from the
        # instance, so this call's value is the one sent). include_usage asks for a final chunk with `usage`.
        return self.llm.stream_chat(
            messages, max_tokens=max_tokens, temperature=temperature, stream_options={"include_usage": True}
        )

    def _apply(self, gen: Generation, raw: Any) -> None:
        if raw.choices and raw.choices[0].finish_reason:
            gen.finish_reason = raw.choices[0].finish_reason
        # Servers that ignore stream_options send no usage: _run then falls back to count_tokens (estimated).
        if raw.usage is not None:
            gen.usage = Usage(raw.usage.prompt_tokens or 0, raw.usage.completion_tokens or 0)


# ------------------------------------------------------------------------------------------------------------- build


def _base_url(settings: LLMSettings) -> str:
    url = settings.base_url.strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        example = "http://host:11434" if settings.backend == "ollama" else "http://host:8000/v1"
        raise LLMUnavailable(
            f"llm.base_url must be an http(s) URL like {example} for backend {settings.backend}, got {settings.base_url!r}"
        )
    return url


def build_llm(settings: LLMSettings, models_dir: Path) -> AnswerLLM:
    """The configured backend, ready to use; raises LLMUnavailable with the reason and the fix.

    Remote servers are not contacted here: a server that is down surfaces as LLMUnavailable from the first
    generation, so the service can start before its LLM server.
    """
    if settings.backend == "none":
        raise LLMUnavailable("no LLM configured (llm.backend = none)")
    if settings.backend == "llama_cpp":
        return _build_llama_cpp(settings, models_dir)
    url = _base_url(settings)
    if not settings.model:
        raise LLMUnavailable(f"llm.model must name the model served by {url}")
    import httpx

    responses = _OpenedResponses()
    hooks = {"response": [responses.hook]}
    if settings.backend == "ollama":
        from llama_index.llms.ollama import Ollama
        from ollama import Client

        # Our own client (extra kwargs go to httpx.Client): per-call copies of the LLM share it.
        client = Client(host=url, timeout=settings.request_timeout_s, event_hooks=hooks)
        ollama = Ollama(
            model=settings.model,
            base_url=url,
            context_window=settings.context_window,  # also sent as options.num_ctx
            request_timeout=settings.request_timeout_s,
            client=client,
        )
        return _OllamaLLM(ollama, settings.model, url, responses, client)
    from llama_index.llms.openai_like import OpenAILike

    http = httpx.Client(timeout=settings.request_timeout_s, event_hooks=hooks)
    openai_like = OpenAILike(
        model=settings.model,
        api_base=url,
        # Never fall back to OPENAI_API_KEY from the environment: that key must not go to a third-party server.
        api_key=settings.api_key or "none",
        is_chat_model=True,
        context_window=settings.context_window,
        timeout=settings.request_timeout_s,
        max_retries=0,  # the answer engine decides about retries; hidden retries would also delay cancellation
        http_client=http,
    )
    return _OpenAILikeLLM(openai_like, settings.model, url, responses, http)


def _build_llama_cpp(settings: LLMSettings, models_dir: Path) -> AnswerLLM:
    try:
        cls = _llamacpp_class()
    except ImportError as exc:
        raise LLMUnavailable(
            f"llama.cpp backend not installed ({exc}); install: pip install 'searchsvc[local-llm]' (llama-cpp-python "
            "built as the Makefile builds it: one CPU backend per x86 level)"
        ) from exc
    from searchsvc.answer.ggml_cpu import VariantUnavailable, load_cpu_backend, probe_variant
    from searchsvc.answer.gguf import ensure_model

    path = ensure_model(settings.model, models_dir)
    threads = settings.threads or os.cpu_count() or 1
    try:
        load_cpu_backend(settings.cpu_variant, probe=lambda variant: probe_variant(variant, path, threads))
    except (VariantUnavailable, OSError) as exc:
        raise LLMUnavailable(f"llama.cpp CPU kernels: {exc}") from exc
    draft = {}
    if settings.prompt_lookup_tokens:
        # logits_all too: llama-cpp-python 0.3.36 turns it on for a draft model but sizes its logits array by the
        # argument (n_batch rows), and the first verification past row 512 fails to broadcast.
        draft = {"draft_model": prompt_lookup(settings.prompt_lookup_tokens), "logits_all": True}
    try:
        llm = cls(
            model_path=str(path),
            context_window=settings.context_window,
            generate_kwargs={"stop": CHATML_STOP},  # Qwen ends turns with <|im_end|>
            model_kwargs={"n_threads": threads, "n_threads_batch": threads, **draft},
            verbose=False,
            messages_to_prompt=chatml_messages_to_prompt,
            completion_to_prompt=chatml_completion_to_prompt,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        raise LLMUnavailable(f"llama.cpp cannot load {path}: {exc}") from exc
    return _LlamaCppLLM(llm, settings.model if path.name == f"{settings.model}.gguf" else path.name)
