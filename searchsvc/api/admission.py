"""Overload and deadlines (issue 17): bounded work per kind, and work that stops when nobody waits for it.

- `Gate`: at most `limit` calls of one kind (search, answer, ingest stream) in the server at once. The next one is
  refused at once with RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` hint, instead of joining a queue whose
  wait nobody bounds. One event loop admits every call, so a plain counter is exact.
- `Deadline`: a call's deadline and cancellation, readable from worker threads; the pipeline checks it before
  each stage and abandons the rest (`Abandoned`), so a search whose caller gave up stops burning CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

from searchsvc.errors import Abandoned, Overloaded
from searchsvc.ops.log_throttle import LogThrottle

log = logging.getLogger(__name__)
_logged = LogThrottle()
abandoned: Counter[str] = Counter()  # stage name -> calls abandoned before it (read by tests and metrics)


class Gate:
    def __init__(self, kind: str, limit: int, retry_after_ms: int) -> None:
        self.kind, self.limit, self.retry_after_ms = kind, limit, retry_after_ms
        self.in_flight = 0
        self.shed = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            self.shed += 1
            if _logged.allow(self.kind):
                log.warning("shedding %s calls: %d in flight, the limit (repeats within %.0f s not logged)",
                            self.kind, self.limit, _logged.interval_s)
            raise Overloaded(f"server busy: {self.limit} {self.kind} calls in flight; retry after {self.retry_after_ms} ms",
                             self.retry_after_ms)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


class Deadline:
    """`check(stage)` raises Abandoned once the call's deadline has passed or its RPC has ended (the caller
    cancelled or went away)."""

    def __init__(self, context=None) -> None:
        remaining = context.time_remaining() if context is not None else None
        self.at = time.monotonic() + remaining if remaining is not None else None
        self.ended = threading.Event()
        if context is not None:
            context.add_done_callback(lambda _: self.ended.set())

    def check(self, stage: str) -> None:
        if self.ended.is_set():
            why = "the call ended (cancelled)"
        elif self.at is not None and time.monotonic() > self.at:
            why = "its deadline passed"
        else:
            return
        abandoned[stage] += 1
        log.info("work abandoned before stage %s: %s", stage, why)
        raise Abandoned(f"abandoned before {stage}: {why}")
