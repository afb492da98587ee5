"""A FileLayer that fails on demand, the way a full or broken disk does (SQLite's I/O-error testing, in small)."""

from __future__ import annotations

import errno
import os

from searchsvc.platform.files import FileLayer


class FaultyFiles(FileLayer):
    """Once armed: writes go through until `fail_after_bytes` more bytes are written (that write is cut short,
    like Linux's partial write on ENOSPC), then every write raises; or the next fsync raises; or ftruncate
    raises (the rollback fails too)."""

    def __init__(self) -> None:
        self.fail_after_bytes: int | None = None
        self.fail_fsync = False
        self.fail_truncate = False
        self.errno = errno.ENOSPC

    def arm(self, *, after_bytes: int | None = None, fsync: bool = False, truncate: bool = False, code: int = errno.ENOSPC) -> None:
        self.fail_after_bytes, self.fail_fsync, self.fail_truncate, self.errno = after_bytes, fsync, truncate, code

    def disarm(self) -> None:
        self.arm()

    def _error(self) -> OSError:
        return OSError(self.errno, os.strerror(self.errno))

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        if self.fail_after_bytes is None:
            return super().pwrite(fd, data, offset)
        if self.fail_after_bytes == 0:
            raise self._error()
        n = super().pwrite(fd, data[: self.fail_after_bytes], offset)
        self.fail_after_bytes -= n
        return n

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:
            raise self._error()
        super().fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        if self.fail_truncate:
            raise self._error()
        super().ftruncate(fd, length)
