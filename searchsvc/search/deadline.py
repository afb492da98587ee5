"""A call's deadline and cancellation, readable from worker threads: the pipeline checks it before each stage and
abandons the rest (`Abandoned`), so a search whose caller gave up stops burning CPU.

`context` is anything with gRPC's `time_remaining()` and `add_done_callback()`; this module imports no gRPC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from searchsvc.errors import Abandoned

log = logging.getLogger(__name__)


class AbandonedWork:
    """Calls abandoned before each stage, counted by the server that owns it (`SearchService.abandoned`)."""

    def __init__(self) -> None:
        self._by_stage: Counter[str] = Counter()
        self._lock = threading.Lock()  # stages run on worker threads

    def record(self, stage: str) -> None:
        with self._lock:
            self._by_stage[stage] += 1

    def __getitem__(self, stage: str) -> int:
        with self._lock:
            return self._by_stage[stage]

    def total(self) -> int:
        with self._lock:
            return sum(self._by_stage.values())


class Deadline:
    """`check(stage)` raises Abandoned once the call's deadline has passed or its RPC has ended (the caller
    cancelled or went away), and counts the abandonment in `abandoned` when given."""

    def __init__(self, context=None, abandoned: AbandonedWork | None = None) -> None:
        remaining = context.time_remaining() if context is not None else None
        self.at = time.monotonic() + remaining if remaining is not None else None
        self.ended = threading.Event()
        self.abandoned = abandoned
        if context is not None:
            context.add_done_callback(lambda _: self.ended.set())

    def check(self, stage: str) -> None:
        if self.ended.is_set():
            why = "the call ended (cancelled)"
        elif self.at is not None and time.monotonic() > self.at:
            why = "its deadline passed"
        else:
            return
        if self.abandoned is not None:
            self.abandoned.record(stage)
        log.info("work abandoned before stage %s: %s", stage, why)
        raise Abandoned(f"abandoned before {stage}: {why}")
