"""Append-only write-ahead log. A batch is acked only after its record is fsynced here.

Record framing: 4-byte little-endian payload length, 4-byte CRC32 of the payload, payload (UTF-8 JSON).
A crash can leave at most one torn record at the tail; `open` detects it (short read or CRC mismatch),
truncates the file back to the last whole record, and logs how many bytes it dropped. A torn record was
never acked, so nothing acked is lost. JSON, not pickle: users can place files in the index dir.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<II")


class WriteAheadLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._file = None

    def open(self) -> list[dict[str, Any]]:
        """Read every whole record, cut a torn tail, and open for appends. Returns the records."""
        records, good_end = [], 0
        data = self.path.read_bytes() if self.path.exists() else b""
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, offset)
            payload = data[offset + _HEADER.size : offset + _HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            records.append(json.loads(payload))
            offset += _HEADER.size + length
            good_end = offset
        if good_end < len(data):
            log.warning("%s: dropping %d bytes of a torn record at offset %d", self.path, len(data) - good_end, good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        self._file = open(self.path, "ab")
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync: when this returns, the record survives a crash or power loss."""
        payload = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
        self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        os.fsync(self._file.fileno())

    def size(self) -> int:
        return self._file.tell() if self._file else 0

    def truncate(self) -> None:
        """Drop all records (after a snapshot made them redundant)."""
        self._file.truncate(0)
        self._file.seek(0)
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Read-only scan (for tools and tests)."""
    wal = WriteAheadLog(path)
    yield from wal.open()
    wal.close()
