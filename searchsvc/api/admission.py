"""Overload (issue 17): bounded work per kind. (Work that stops when nobody waits for it: search/deadline.py.)

- `Gate`: at most `limit` calls of one kind (search, answer, ingest stream) in the server at once. The next one is
  refused at once with RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` hint, instead of joining a queue whose
  wait nobody bounds. One event loop admits every call, so a plain counter is exact.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from searchsvc.errors import Overloaded
from searchsvc.ops.log_throttle import LogThrottle

log = logging.getLogger(__name__)

class Gate:
    def __init__(self, kind: str, limit: int, retry_after_ms: int) -> None:
        self.kind, self.limit, self.retry_after_ms = kind, limit, retry_after_ms
        self.in_flight = 0
        self.shed = 0
        self._logged = LogThrottle()

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            self.shed += 1
            if self._logged.allow(self.kind):
                log.warning("shedding %s calls: %d in flight, the limit (repeats within %.0f s not logged)",
                            self.kind, self.limit, self._logged.interval_s)
            raise Overloaded(f"server busy: {self.limit} {self.kind} calls in flight; retry after {self.retry_after_ms} ms",
                             self.retry_after_ms)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
