"""Rate-limited logging for faults that repeat on every request (a full disk fails each write the same way): the
first occurrence of a key is logged, repeats within the interval are not."""

from __future__ import annotations

import time
from collections.abc import Hashable


class LogThrottle:
    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable = None) -> bool:
        """True if `key` was not logged within the interval (and counts this as logging it)."""
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            return False
        self._last[key] = now
        return True
