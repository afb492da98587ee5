"""A background refresh, debounced: after writes, wait `interval_s` (so a burst of batches lands), then refresh
once; never more often than 4x the last background refresh took, so refreshes take at most ~20% of a core
however fast documents arrive (Elasticsearch's refresh_interval). Shared by both keyword indexes."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class DebouncedRefresher:
    def __init__(self, refresh: Callable[[], object], interval_s: float, name: str, stop_on: tuple[type[BaseException], ...] = ()) -> None:
        """`stop_on`: exceptions after which refreshing stops (logged where raised); any other is logged and
        the next write retries."""
        self._refresh = refresh
        self.interval_s = interval_s
        self._name = name
        self._stop_on = stop_on
        self._last_s = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._halted = False

    def wake(self) -> None:
        self._wake.set()

    def resume(self) -> None:
        """Start again after a `stop_on` failure halted it (and only then)."""
        if self._halted and not self._stop.is_set():
            self._halted = False
            self.start()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            # Interruptible, so stop() never waits out the debounce.
            if self._stop.wait(max(self.interval_s, 4 * self._last_s)):
                return
            started = time.perf_counter()
            try:
                self._refresh()
            except self._stop_on:
                self._thread = None  # resume() starts it again once the owner has recovered
                self._halted = True
                return
            except OSError as exc:  # a full or failing disk: one line, no traceback; the next write retries
                log.warning("%s failed: %s", self._name, exc)
            except Exception:  # keep serving the previous index; the next write retries
                log.exception("%s failed", self._name)
            self._last_s = time.perf_counter() - started
