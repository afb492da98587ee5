"""Why an LLM cannot answer: raised by the backends (llm.py) and by the model-file assembly (gguf.py)."""

from __future__ import annotations

from searchsvc.errors import SearchsvcError


class LLMUnavailable(SearchsvcError):
    """The configured LLM cannot be used (not installed, cannot load, misconfigured, server failed)."""

    retryable = False  # True: the cause may go away without a restart (space freed on a full disk)

    @property
    def reason(self) -> str:
        return self.message


class ModelDiskFull(LLMUnavailable):
    """No room to assemble the model file: loading is tried again later."""

    retryable = True
