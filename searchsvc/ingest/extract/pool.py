"""Files read in worker processes (pebble's ProcessPool), so a hostile file costs one worker, never the server:

- time: a file not read within `limits.seconds` has its worker stopped (pebble terminates it) and a fresh one
  started; the file becomes "extraction timed out after 30 s";
- memory: each worker's address space is capped (RLIMIT_AS) at start, so a file that would need more raises
  MemoryError there ("needs more than 1.5 GB of memory") instead of swapping the host or waking the OOM killer;
- crashes: a parser's C code that dies takes only its worker ("the reader crashed"), which pebble replaces.

Workers start from a forkserver: a clean process forked for each worker, never the server itself (forking a
process that runs gRPC's and torch's threads is unsafe).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import resource
import threading

import pebble

from searchsvc.ingest.extract import extract
from searchsvc.ingest.extract.base import Extracted, ExtractionError, ExtractionLimits, size_text

log = logging.getLogger(__name__)


def _cap_memory(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _extract_in_worker(data: bytes, filename: str, content_type: str, limits: ExtractionLimits) -> Extracted:
    try:
        return extract(data, filename, content_type, limits)
    except MemoryError:
        raise ExtractionError(f"needs more than {size_text(limits.memory_bytes)} of memory") from None
    except ExtractionError:
        raise
    except Exception as exc:  # a reader's own failure on a malformed file: the file's error, with the reader's words
        raise ExtractionError(f"unreadable {filename or content_type or 'file'} ({type(exc).__name__}: {exc})") from None


class ExtractionPool:
    def __init__(self, workers: int, limits: ExtractionLimits) -> None:
        self.limits, self.workers = limits, workers
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(max_workers=self.workers, initializer=_cap_memory, initargs=(self.limits.memory_bytes,),
                                  context=multiprocessing.get_context("forkserver"))

    def _restart(self) -> None:
        with self._lock:
            broken, self._pool = self._pool, self._new_pool()
        broken.stop()

    def submit(self, data: bytes, filename: str = "", content_type: str = "") -> concurrent.futures.Future:
        return self._pool.schedule(_extract_in_worker, (data, filename, content_type, self.limits), timeout=self.limits.seconds)

    def result(self, future: concurrent.futures.Future) -> Extracted:
        """The file's text, or ExtractionError with the reason."""
        try:
            return future.result()
        except concurrent.futures.TimeoutError:
            raise ExtractionError(f"extraction timed out after {self.limits.seconds:g} s") from None
        except pebble.ProcessExpired as exc:
            raise ExtractionError(f"the reader crashed on this file (worker exit code {exc.exitcode})") from None
        except concurrent.futures.process.BrokenProcessPool as exc:  # workers that cannot start: not the file's fault
            log.error("file reader workers cannot start (%s): the pool is rebuilt", exc)
            self._restart()
            raise ExtractionError("the server's file reader could not start a worker; retry") from None

    def extract(self, data: bytes, filename: str = "", content_type: str = "") -> Extracted:
        return self.result(self.submit(data, filename, content_type))

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()
