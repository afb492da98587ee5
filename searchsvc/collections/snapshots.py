"""The server's snapshots (issue 19): named archives in the snapshot directory (settings.snapshots_dir), made
from embedded collections, listed, deleted, streamed out and in, and restored as new collections.

Files: `<name>.snapshot` (the archive: storage/embedded/snapshot.py) and `<name>.snapshot.sha256` (the whole
archive's SHA-256, so listings need not hash it). An archive is written as `.tmp-*`, fsynced, and renamed into
place after its checksum file: kill -9 at any moment leaves either no snapshot of that name or a complete one,
and start-up removes the leftovers. Names are `<collection>@<UTC time>-<sequence>`; the collection part is
what API keys scoped to collections are checked against.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from searchsvc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from searchsvc.platform.files import free_bytes, fsync_dir, write_text_atomic
from searchsvc.storage.embedded import snapshot as archive
from searchsvc.storage.embedded.snapshot import Manifest

log = logging.getLogger(__name__)
SUFFIX = ".snapshot"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}@[0-9A-Za-z_.-]{1,64}$")
CHUNK_BYTES = 1 << 20  # per DownloadSnapshot message


def validate_snapshot_name(name: str, field: str = "name") -> str:
    if not NAME.match(name or ""):
        raise InvalidArgument(field, "must be a snapshot name, `<collection>@<time>-<sequence>`")
    return name


def collection_of(snapshot_name: str) -> str:
    """The collection a snapshot name says it was taken of ("" for a malformed name)."""
    return snapshot_name.split("@", 1)[0] if "@" in snapshot_name else ""


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    size_bytes: int
    sha256: str
    manifest: Manifest


class SnapshotStore:
    def __init__(self, root: Path, staging_root: Path, min_free_disk_bytes: int = 0) -> None:
        """`staging_root`: where checkpoints are hard-linked while an archive is written (the index dir: links
        cannot cross filesystems)."""
        self.root = root
        self.staging_root = staging_root
        self.min_free_disk_bytes = min_free_disk_bytes
        self._lock = threading.Lock()

    def clean(self) -> None:
        """Remove what interrupted creations and uploads left (at start-up)."""
        if self.root.exists():
            for leftover in self.root.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)
            for checksum in self.root.glob(f"*{SUFFIX}.sha256"):
                if not checksum.with_suffix("").exists():
                    checksum.unlink(missing_ok=True)
        for staging in self.staging_root.glob(".snapshot-staging-*"):
            shutil.rmtree(staging, ignore_errors=True)

    def _path(self, name: str) -> Path:
        return self.root / f"{validate_snapshot_name(name)}{SUFFIX}"

    def path(self, name: str) -> Path:
        """The archive of snapshot `name`; NOT_FOUND if there is none."""
        path = self._path(name)
        if not path.exists():
            raise NotFound(f"snapshot {name!r} not found")
        return path

    def _check_space(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.min_free_disk_bytes and free_bytes(self.root) < self.min_free_disk_bytes:
            raise ResourceExhausted(f"disk full: {self.root} is below the min_free_disk_bytes watermark; free space and retry")

    # ------------------------------------------------------------------ create
    def create(self, collection) -> SnapshotInfo:
        """A snapshot of the embedded collection `collection`."""
        if collection.config.backend != "embedded":
            n = collection.name
            raise FailedPrecondition(
                f"collection {n!r} is stored in Qdrant, which this server does not snapshot. Back it up with "
                f"`searchsvc export {n} {n}.jsonl --vectors` (one state of the collection: it reads again if writes "
                f"change it meanwhile) and restore with `searchsvc import <new name> {n}.jsonl` (into either backend; "
                f"create the collection first with the same config), or use Qdrant's own snapshots of collection {n!r}")
        self._check_space()
        staging = self.staging_root / f".snapshot-staging-{uuid.uuid4().hex}"
        tmp = self.root / f".tmp-{uuid.uuid4().hex}{SUFFIX}"
        started = time.perf_counter()
        try:
            pinned = collection.pin_checkpoint(staging)
            pinned_s = time.perf_counter() - started  # what writes to the collection waited
            try:
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
                name = f"{collection.name}@{stamp}-{pinned.sequence}"
                manifest, sha256 = archive.write_archive(pinned, name, collection.name, tmp)
            finally:
                pinned.docstore.close()
            final = self._path(name)
            write_text_atomic(final.with_name(final.name + ".sha256"), f"{sha256}  {final.name}\n")
            os.replace(tmp, final)
            fsync_dir(self.root)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        size = final.stat().st_size
        log.info("snapshot %s of collection %s: seq %d, %d documents, %.1f MB in %.2f s (checkpoint pinned in %.2f s, "
                 "writes waited only for that)", name, collection.name, manifest.sequence, manifest.document_count,
                 size / 1e6, time.perf_counter() - started, pinned_s)
        return SnapshotInfo(name, size, sha256, manifest)

    # ------------------------------------------------------------------ read
    def info(self, name: str) -> SnapshotInfo:
        path = self.path(name)
        checksum = path.with_name(path.name + ".sha256")
        if checksum.exists():
            sha256 = checksum.read_text(encoding="utf-8").split()[0]
        else:
            sha256 = archive.hash_file(path)
            write_text_atomic(checksum, f"{sha256}  {path.name}\n")
        return SnapshotInfo(name, path.stat().st_size, sha256, archive.read_manifest(path))

    def list(self, collection: str = "") -> list[SnapshotInfo]:
        """Newest first; an unreadable archive is listed by name with what can be read of it skipped (logged)."""
        if not self.root.exists():
            return []
        found = []
        for path in self.root.glob(f"*{SUFFIX}"):
            name = path.name[: -len(SUFFIX)]
            if not NAME.match(name) or (collection and collection_of(name) != collection):
                continue
            try:
                found.append(self.info(name))
            except Exception as exc:  # a damaged archive must not hide the others
                log.warning("snapshot %s cannot be read: %s", name, exc)
        return sorted(found, key=lambda s: s.manifest.created, reverse=True)

    def read(self, name: str) -> Iterator[bytes]:
        with open(self.path(name), "rb") as f:
            while block := f.read(CHUNK_BYTES):
                yield block

    def verify(self, name: str) -> Manifest:
        return archive.verify(self.path(name))

    # ------------------------------------------------------------------ write
    def delete(self, name: str) -> None:
        path = self.path(name)
        path.unlink()
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        fsync_dir(self.root)

    def upload_path(self, name: str) -> Path:
        """Where an upload of snapshot `name` is written until `accept`: ALREADY_EXISTS if the name is taken,
        RESOURCE_EXHAUSTED below the free-space watermark."""
        if self._path(name).exists():
            raise AlreadyExists(f"snapshot {name!r} already exists")
        self._check_space()
        return self.root / f".tmp-{uuid.uuid4().hex}{SUFFIX}"

    def accept(self, name: str, tmp: Path, sha256: str) -> SnapshotInfo:
        """Make the uploaded archive at `tmp` (whose SHA-256 the caller took while receiving it) snapshot `name`
        once it is verified (its manifest must give that name); the caller removes `tmp` if this fails."""
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        manifest = archive.verify(tmp)
        if manifest.name != name:
            raise InvalidArgument("name", f"the archive's manifest names snapshot {manifest.name!r}")
        final = self._path(name)
        with self._lock:
            if final.exists():
                raise AlreadyExists(f"snapshot {name!r} already exists")
            write_text_atomic(final.with_name(final.name + ".sha256"), f"{sha256}  {final.name}\n")
            os.replace(tmp, final)
            fsync_dir(self.root)
        return SnapshotInfo(name, final.stat().st_size, sha256, manifest)
