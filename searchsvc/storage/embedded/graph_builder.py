"""The background worker that moves acked vectors into their HNSW graphs (issue 41).

A write to an HNSW collection is acked once its vectors are in the WAL and the store's pending rows
(pending.py); this worker inserts them into the graph later, so a bulk load runs at the speed of a flat index
while the graph catches up. As Qdrant's optimizer and Lucene's merges do, it runs beside searches and yields to
them:
- one thread for every collection (at most one graph insert at a time), with FAISS's OpenMP team limited to
  that thread (an OpenMP setting is per calling thread), and at a lower scheduling priority (a Linux thread's
  nice value is its own), so on 2 cores searches and writers keep the other core and win the contended one;
- each step holds the collection's index lock, which searches wait for, about STEP_S (the batch follows the
  measured cost per vector, which grows with the graph: ~0.3-1.4 ms);
- while a collection is being written and its backlog is small (cheap to scan), its graph waits.

Start-up replay and rebuilds hand their vectors to it the same way. Nothing here is durable: a crash mid-step
loses only the in-memory graph, and the last snapshot with the WAL replays to the same rows (graph_files.py
writes graph and pending rows alike).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Protocol

import faiss

log = logging.getLogger(__name__)
STEP_S = 0.005  # index lock held per step: what a search or a writer may wait for the builder
MAX_BATCH = 1024
# While a collection is being written, its graph waits as long as its backlog is below this: an exact scan of
# 100k pending 384-d vectors costs a search ~7.5 ms, and the writer keeps both cores (on 2 vCPUs a builder at the
# lowest priority still cost the first 100k of a bulk load up to a fifth of its ack rate).
YIELD_TO_WRITES_BELOW = 100_000
WRITES_QUIET_S = 0.5  # "being written": a write within this
NICE = 19  # the builder thread's niceness: the lowest; searches and writers first


class Buildable(Protocol):
    backlog: int
    closed: bool
    last_write: float  # time.monotonic() of its last write

    def build_step(self, seconds: float = STEP_S) -> int: ...


class GraphBuilder:
    """One daemon thread serving every index with a backlog in turn, a step each."""

    def __init__(self, step_s: float = STEP_S) -> None:
        self.step_s = step_s
        self._waiting: weakref.WeakSet = weakref.WeakSet()  # indexes with a backlog; an index dropped goes by itself
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def wake(self, index: Buildable) -> None:
        with self._cond:
            self._waiting.add(index)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="graph-builder", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        faiss.omp_set_num_threads(1)  # this thread's OpenMP team only: one core of two for graph inserts
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (OSError, AttributeError):  # not Linux, or not allowed: the step size alone bounds the waits
            pass
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
            self._round()
            time.sleep(0)  # let a search blocked on the lock the last step held take it first

    def _round(self) -> None:
        """A step for each index waiting (a method: its references to them end with it)."""
        with self._cond:
            indexes = list(self._waiting)
        yielded = moved_any = False
        for index in indexes:
            if index.backlog < YIELD_TO_WRITES_BELOW and time.monotonic() - index.last_write < WRITES_QUIET_S:
                yielded = True
                continue
            failed = False
            try:
                moved = index.build_step(self.step_s)
            except Exception:  # noqa: BLE001 - a failing index must not stop the others' graphs
                log.exception("graph builder: a step failed; the vectors stay pending (searched exactly)")
                moved, failed = 0, True
            moved_any = moved_any or bool(moved)
            if not moved:  # done, closed or failing; a write's wake brings it back
                with self._cond:  # under the writers' wake: a write appended just now keeps it here
                    if not index.backlog or index.closed or failed:
                        self._waiting.discard(index)
        if yielded and not moved_any:
            time.sleep(WRITES_QUIET_S / 10)

BUILDER = GraphBuilder()
