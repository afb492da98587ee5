"""Append-only write-ahead log. A batch is acked only after its record is whole and fsynced here.

Record framing: 4-byte little-endian payload length, 4-byte CRC32 of the payload, payload (a UTF-8 JSON object
with an integer "seq"). JSON, not pickle: users can place files in the index dir.

What holds at every moment, whatever fails:
- The file is a run of whole records, followed at most by one partial record that a crash cut short.
- A failed append (ENOSPC, EIO... from the write or the fsync) is rolled back: the file is truncated to the
  end of the last good record and that is fsynced. Bytes we could not write never stay in front of later ones.
- If the rollback fails too, or the fsync failed, the log is *failed* and refuses every further append until it
  is reopened (fail-stop). An fsync error may mean the kernel dropped dirty pages it then reports clean
  (PostgreSQL's "fsyncgate"), so retrying and acking is never safe.

Opening tells a torn write from corruption: bad bytes at the very end are the torn tail of a crash and are cut
(they were never acked). Bad bytes followed by records that verify may hide acked records: `open` raises
WalCorrupt and changes nothing; `scan` reports exactly what a `repair` would drop.

A frame cannot be mistaken inside a payload: JSON escapes bytes 0x00-0x1f, so any 4 payload bytes read as a
length are >= 0x20202020 (539 MB), more than any record (requests are capped far below that).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from searchsvc.ops.metrics import WAL_FSYNC_SECONDS
from searchsvc.platform.files import FileLayer, fsync_dir

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<II")


class WalCorrupt(Exception):
    """Bad bytes in the middle of the log: opening would have to guess what to drop."""


class WalLocked(Exception):
    """Another process (a second server, or `searchsvc repair`) has this log open."""


class WalFailed(Exception):
    """The log stopped taking appends after a storage fault (fail-stop); reopen it once the disk is fixed."""


@dataclass
class BadSpan:
    """Bytes that are not a whole record, and the sequence numbers of the records around them."""

    offset: int
    length: int
    seq_before: int | None  # last good record before the span (None: at the start)
    seq_after: int | None  # first good record after it (None: the span is the tail)

    @property
    def lost_seqs(self) -> range:
        """Sequence numbers that no surviving record carries: acked batches the span destroyed. A failed write
        that was never acked reuses its number in the next record, so it leaves no gap."""
        if self.seq_after is None:
            return range(0)
        return range((self.seq_before or 0) + 1, self.seq_after)

    def describe(self) -> str:
        where = f"{self.length} bytes at offset {self.offset}"
        if self.seq_after is None:
            return f"{where}: a torn tail (an append a crash cut short, never acked)"
        lost = self.lost_seqs
        if lost:
            return f"{where}, between records seq {self.seq_before} and {self.seq_after}: records seq {lost.start}..{lost.stop - 1} are lost"
        return f"{where}, between records seq {self.seq_before} and {self.seq_after}: no sequence number is missing (a failed write that was never acked)"


@dataclass
class Scan:
    records: list[dict[str, Any]] = field(default_factory=list)
    frames: list[tuple[int, int]] = field(default_factory=list)  # (start, end) of each record's bytes
    bad: list[BadSpan] = field(default_factory=list)
    size: int = 0

    @property
    def good_end(self) -> int:
        """Where a whole-records-only file ends when the only bad bytes are a torn tail."""
        return self.bad[-1].offset if self.bad else self.size

    @property
    def corrupt(self) -> bool:
        """Bad bytes with good records after them (anything but a torn tail)."""
        return any(span.seq_after is not None for span in self.bad)


def _record_at(data: bytes, offset: int) -> tuple[dict[str, Any], int] | None:
    """The record framed at `offset` and the offset after it, or None if the bytes there are not one."""
    if offset + _HEADER.size > len(data):
        return None
    length, crc = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if length < 2 or end > len(data):
        return None
    payload = data[offset + _HEADER.size : end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        record = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return None
    return record, end


def scan_bytes(data: bytes) -> Scan:
    """Every record that verifies, and every span of bytes between them that does not."""
    scan = Scan(size=len(data))
    offset, last_seq = 0, None
    while offset < len(data):
        found = _record_at(data, offset)
        if found is not None:
            record, end = found
            scan.records.append(record)
            scan.frames.append((offset, end))
            offset = end
            last_seq = record["seq"]
            continue
        # Resynchronise: the next offset at which a record verifies. A payload is a JSON object, so it starts with
        # "{": only offsets 8 bytes before a "{" can start a record (vectors are base64: no braces to try).
        start, following, brace = offset, None, data.find(b"{", offset + 1 + _HEADER.size)
        while brace >= 0:
            if (following := _record_at(data, brace - _HEADER.size)) is not None:
                break
            brace = data.find(b"{", brace + 1)
        offset = brace - _HEADER.size if following is not None else len(data)
        seq_after = following[0]["seq"] if following else None
        scan.bad.append(BadSpan(start, offset - start, last_seq, seq_after))
    return scan


def scan(path: Path) -> Scan:
    return scan_bytes(_read(path))


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


class WriteAheadLog:
    def __init__(self, path: Path, files: FileLayer | None = None) -> None:
        self.path = path
        self.files = files or FileLayer()
        self._fd: int | None = None
        self._end = 0  # end of the last whole, synced record: where the next append goes
        self.failure = ""  # why appends are refused (fail-stop); empty while healthy

    def open(self) -> list[dict[str, Any]]:
        """Read every record, cut a torn tail, and open for appends. Raises WalCorrupt, changing nothing, when
        bad bytes are followed by good records."""
        self._fd = _open_locked(self.path, self.files)
        try:
            found = scan(self.path)
            if found.corrupt:
                raise WalCorrupt(
                    f"{self.path} is corrupt: " + "; ".join(s.describe() for s in found.bad)
                    + ". Nothing was changed; `searchsvc repair` reports what a repair drops."
                )
        except BaseException:
            self.close()
            raise
        if found.bad:
            log.warning("%s: %s; cutting it", self.path, found.bad[-1].describe())
            self.files.ftruncate(self._fd, found.good_end)
            self.files.fsync(self._fd)
        self._end = found.good_end
        return found.records

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync: when this returns, the record survives a crash or power loss. On an OSError
        nothing of the record remains (or the log is failed); the error is re-raised for the caller to report."""
        if self.failure:
            raise WalFailed(self.failure)
        payload = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
        frame = memoryview(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        start, written, syncing = self._end, 0, False
        try:
            while written < len(frame):
                n = self.files.pwrite(self._fd, frame[written:], start + written)
                if n <= 0:
                    raise OSError(errno.EIO, "write made no progress")
                written += n
            syncing = True
            with WAL_FSYNC_SECONDS.time():
                self.files.fsync(self._fd)
        except OSError as exc:
            self._roll_back(start, exc, syncing)
            raise
        self._end = start + len(frame)

    def _roll_back(self, end: int, exc: OSError, fsync_failed: bool) -> None:
        reasons = [f"fsync failed ({exc.strerror})"] if fsync_failed else []
        try:
            self.files.ftruncate(self._fd, end)
            self.files.fsync(self._fd)
        except OSError as again:
            reasons.append(f"a failed append ({exc.strerror}) could not be rolled back ({again.strerror})")
        if reasons:
            self.failure = "; ".join(reasons)
            log.error("%s: stopped taking writes: %s", self.path, self.failure)

    def size(self) -> int:
        return self._end

    def reset(self) -> None:
        """Drop all records (a snapshot made them redundant: every one has a seq the snapshot covers)."""
        if self.failure:
            raise WalFailed(self.failure)
        self.files.ftruncate(self._fd, 0)
        self._end = 0
        try:
            self.files.fsync(self._fd)
        except OSError as exc:
            self.failure = f"fsync failed ({exc.strerror})"
            log.error("%s: stopped taking writes: %s", self.path, self.failure)
            raise

    def close(self) -> None:
        if self._fd is not None:
            self.files.close(self._fd)
            self._fd = None


def _open_locked(path: Path, files: FileLayer) -> int:
    fd = files.open(path)
    try:
        files.lock(fd)
    except BlockingIOError:
        files.close(fd)
        raise WalLocked(f"{path} is open in another process (a second server on this index dir, or `searchsvc repair`)") from None
    return fd


def repair(path: Path, apply: bool) -> tuple[Scan, Path | None]:
    """Scan the log and, if `apply`, rewrite it with only the records that verify. `Scan.bad` is exactly what
    the rewritten log lacks. The original is kept beside it (the returned path), so nothing is destroyed. Holds
    the log's lock throughout: WalLocked while a server has the collection open."""
    files = FileLayer()
    fd = _open_locked(path, files)
    try:
        data = _read(path)
        found = scan_bytes(data)
        if not apply or not found.bad:
            return found, None
        return found, _rewrite(path, data, found)
    finally:
        files.close(fd)


def _rewrite(path: Path, data: bytes, found: Scan) -> Path:
    backup = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
    tmp = path.with_name(path.name + ".repair")
    try:
        with open(tmp, "wb") as f:
            for start, end in found.frames:  # the records' own bytes, unchanged
                f.write(data[start:end])
            f.flush()
            os.fsync(f.fileno())
        os.link(path, backup)  # the original stays reachable; wal.log itself is replaced in one rename
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return backup


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Read-only scan (for tools and tests)."""
    yield from scan(path).records
