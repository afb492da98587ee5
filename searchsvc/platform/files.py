"""File primitives for storage: the OS calls the write-ahead log makes (one injectable layer, so tests can fail
any of them), atomic write-then-rename with fsync (readers see the old or the new, never half), free space."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

def user_cache_dir() -> Path:
    """searchsvc's folder in the user's cache ($XDG_CACHE_HOME, else ~/.cache): model exports, datasets, wheels."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "searchsvc"


# Errors that mean "no room": the caller should free space (RESOURCE_EXHAUSTED), not retry blindly.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class FileLayer:
    """Unbuffered positional I/O on file descriptors. Storage code calls only these for its log, so a test
    subclass can make any write, fsync or truncate fail (ENOSPC, EIO...) at a chosen byte or call."""

    def open(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def lock(self, fd: int) -> None:
        """Exclusive advisory lock, released when the fd closes (also when the process dies). BlockingIOError if
        another open file holds it: a second server, or `searchsvc repair`, on the same collection."""
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def close(self, fd: int) -> None:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename. On any error (a full disk) the old file stays and the temp
    file is removed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True))


def remove_tree_atomic(path: Path) -> None:
    """Make `path` disappear in one rename, then delete the renamed tree."""
    graveyard = path.with_name(f".deleted-{path.name}-{os.getpid()}-{id(path)}")
    os.replace(path, graveyard)
    fsync_dir(path.parent)
    shutil.rmtree(graveyard, ignore_errors=True)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
