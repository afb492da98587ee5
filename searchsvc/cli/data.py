"""Command line for managing data on a running server (issue 19): `export`, `import`, `alias …`, `snapshot …`.

Every command talks gRPC to `--target` (cli/common.py: a server-side error is its status and message, exit code
1, never a traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Iterator

from searchsvc.api import metadata_pb
from searchsvc.cli.common import add_connection_flags, connect, reports_rpc_errors
from searchsvc.domain import filters

EXPORT_PAGE = 200


# ------------------------------------------------------------------ export / import
def document_to_json(d, with_vector: bool) -> dict:
    """One line of an export: what `searchsvc import` (the JSONL loader) reads back. Strings in `metadata`, the
    other values in `typed_metadata` (filters.to_json: timestamps as {"$timestamp": microseconds})."""
    row: dict = {"id": d.id, "title": d.title, "text": d.text, "metadata": dict(d.metadata)}
    typed = {k: metadata_pb.value_from_pb(v, k) for k, v in d.typed_metadata.items()}
    if typed:
        row["typed_metadata"] = filters.to_json(typed)
    if with_vector and len(d.chunks) == 1 and d.chunks[0].vector:
        row["vector"] = [round(v, 7) for v in d.chunks[0].vector]
    return row


@reports_rpc_errors
def cmd_export(args: argparse.Namespace) -> int:
    from searchsvc.v1 import searchsvc_pb2 as pb

    channel, stub = connect(args)
    partial = args.file.with_name(args.file.name + ".partial")
    with channel:
        # One state of the collection, on either backend: no write under way when the export begins, and the
        # same write counter when it ends (Collection.version); else it is read again, up to --retries times.
        for attempt in range(args.retries + 1):
            if attempt:
                time.sleep(1.0)
            before = stub.GetCollection(pb.GetCollectionRequest(name=args.collection), timeout=args.timeout)
            if before.writes_in_progress and attempt < args.retries:
                continue
            written, without_vector = _export_pages(stub, args, before, partial)
            after = stub.GetCollection(pb.GetCollectionRequest(name=args.collection), timeout=args.timeout)
            if after.version == before.version and not before.writes_in_progress:
                break
        else:
            if not args.allow_changing:
                partial.unlink(missing_ok=True)
                print(f"error: {args.collection} was written to during each of {args.retries + 1} attempts (version "
                      f"{before.version} -> {after.version}, {before.writes_in_progress} write(s) under way): stop its "
                      "writers and export again, or pass --allow-changing for a copy that may mix states", file=sys.stderr)
                return 1
    os.replace(partial, args.file)
    note = f"; {without_vector} of several chunks exported without a vector (re-embedded on import)" if without_vector else ""
    state = f"at version {after.version}" if after.version == before.version else "while it changed (--allow-changing)"
    print(f"exported {written} documents of {args.collection} to {args.file} {state}{note}")
    return 0


def _export_pages(stub, args: argparse.Namespace, collection, path: Path) -> tuple[int, int]:
    from searchsvc.v1 import searchsvc_pb2 as pb

    # A collection of external vectors cannot embed its texts again: its vectors always go with them.
    vectors = args.vectors or collection.config.embedding_model == "external"
    view = pb.DOCUMENT_VIEW_FULL_WITH_VECTORS if vectors else pb.DOCUMENT_VIEW_FULL
    written = without_vector = 0
    token = ""
    with open(path, "w", encoding="utf-8") as out:
        while True:
            page = stub.ListDocuments(pb.ListDocumentsRequest(collection=args.collection, page_size=EXPORT_PAGE,
                                                              page_token=token, view=view), timeout=args.timeout)
            for d in page.documents:
                row = document_to_json(d, vectors)
                without_vector += vectors and "vector" not in row
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += len(page.documents)
            if not (token := page.next_page_token):
                return written, without_vector


# ------------------------------------------------------------------ aliases
@reports_rpc_errors
def cmd_alias(args: argparse.Namespace) -> int:
    from searchsvc.v1 import searchsvc_pb2 as pb

    channel, stub = connect(args)
    with channel:
        if args.action == "list":
            aliases = stub.ListAliases(pb.ListAliasesRequest(), timeout=args.timeout).aliases
        else:
            action = {"create": lambda: pb.AliasAction(create=pb.Alias(alias=args.alias, collection=args.collection)),
                      "repoint": lambda: pb.AliasAction(repoint=pb.Alias(alias=args.alias, collection=args.collection)),
                      "delete": lambda: pb.AliasAction(delete=args.alias)}[args.action]()
            aliases = stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[action]), timeout=args.timeout).aliases
    for a in aliases:
        print(f"{a.alias} -> {a.collection} ({a.backend})")
    return 0


# ------------------------------------------------------------------ snapshots
def _describe(s) -> str:
    return (f"{s.name}  {s.collection}  seq {s.sequence}  {s.document_count} documents  {s.size_bytes / 1e6:.1f} MB  "
            f"{s.create_time.ToDatetime():%Y-%m-%d %H:%M:%S}Z  sha256 {s.sha256[:16]}…")


def snapshot_name_of(path: Path) -> str:
    """The snapshot name an archive's manifest gives (what an upload is stored as)."""
    with tarfile.open(path, mode="r:") as tar:
        return json.loads(tar.extractfile(tar.getmember("manifest.json")).read())["name"]


def _file_parts(path: Path, name: str, pb) -> Iterator:
    yield pb.UploadSnapshotRequest(name=name)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            yield pb.UploadSnapshotRequest(data=block)


@reports_rpc_errors
def cmd_snapshot(args: argparse.Namespace) -> int:
    from searchsvc.v1 import searchsvc_pb2 as pb

    channel, stub = connect(args)
    with channel:
        if args.action == "create":
            print(_describe(stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=args.collection), timeout=args.timeout)))
        elif args.action == "list":
            for s in stub.ListSnapshots(pb.ListSnapshotsRequest(collection=args.collection), timeout=args.timeout).snapshots:
                print(_describe(s))
        elif args.action == "delete":
            stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name=args.name), timeout=args.timeout)
            print(f"deleted {args.name}")
        elif args.action == "restore":
            c = stub.RestoreSnapshot(pb.RestoreSnapshotRequest(name=args.name, collection=args.collection), timeout=args.timeout)
            print(f"restored {args.name} as {c.name}: {c.document_count} documents, {c.chunk_count} chunks")
        elif args.action == "download":
            listed = stub.ListSnapshots(pb.ListSnapshotsRequest(), timeout=args.timeout).snapshots
            expected = next((s for s in listed if s.name == args.name), None)
            out, digest = args.file or Path(f"{args.name}.snapshot"), hashlib.sha256()
            with open(out, "wb") as f:
                for part in stub.DownloadSnapshot(pb.DownloadSnapshotRequest(name=args.name), timeout=args.timeout):
                    f.write(part.data)
                    digest.update(part.data)
            if expected is not None and digest.hexdigest() != expected.sha256:
                print(f"error: {out} does not hash to the server's sha256 {expected.sha256}", file=sys.stderr)
                return 1
            print(f"downloaded {args.name} to {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 verified)")
        else:  # upload
            name = snapshot_name_of(args.file)
            print(_describe(stub.UploadSnapshot(_file_parts(args.file, name, pb), timeout=args.timeout)))
    return 0


def add_data_commands(sub) -> None:
    def connected(p: argparse.ArgumentParser, timeout: float) -> argparse.ArgumentParser:
        add_connection_flags(p, timeout)
        return p

    p = connected(sub.add_parser("export", help="write a collection's documents (text, title, metadata; vectors) to JSONL"), 600)
    p.add_argument("collection", help="collection name or alias")
    p.add_argument("file", type=Path, help="the .jsonl to write; `searchsvc import` reads it back")
    p.add_argument("--vectors", action="store_true", help="also each one-chunk document's stored vector (always for an "
                   "'external' collection); a collection of another embedder then keeps these vectors instead of embedding")
    p.add_argument("--retries", type=int, default=3, help="reads again when writes changed the collection during one (default 3)")
    p.add_argument("--allow-changing", action="store_true", help="keep the last read even if writes changed the collection "
                   "during it (a copy that may mix states)")
    p.set_defaults(func=cmd_export)

    aliases = sub.add_parser("alias", help="list, create, re-point or delete collection aliases").add_subparsers(
        dest="action", required=True)
    connected(aliases.add_parser("list", help="every alias"), 60)
    for action, help_ in (("create", "a new alias of a collection"), ("repoint", "point an alias at another collection")):
        p = connected(aliases.add_parser(action, help=help_), 60)
        p.add_argument("alias")
        p.add_argument("collection")
    p = connected(aliases.add_parser("delete", help="remove an alias (not its collection)"), 60)
    p.add_argument("alias")
    for p in aliases.choices.values():
        p.set_defaults(func=cmd_alias)

    snapshots = sub.add_parser("snapshot", help="create, list, delete, restore, download or upload snapshots").add_subparsers(
        dest="action", required=True)
    p = connected(snapshots.add_parser("create", help="snapshot a collection (consistent while writes go on)"), 3600)
    p.add_argument("collection", help="collection name or alias")
    p = connected(snapshots.add_parser("list", help="the server's snapshots, newest first"), 60)
    p.add_argument("collection", nargs="?", default="", help="only this collection's")
    p = connected(snapshots.add_parser("delete", help="delete a snapshot"), 60)
    p.add_argument("name")
    p = connected(snapshots.add_parser("restore", help="restore a snapshot as a new collection"), 3600)
    p.add_argument("name")
    p.add_argument("collection", help="the new collection's name")
    p = connected(snapshots.add_parser("download", help="copy a snapshot's archive to this machine (sha256 checked)"), 3600)
    p.add_argument("name")
    p.add_argument("file", nargs="?", type=Path, help="default: <name>.snapshot here")
    p = connected(snapshots.add_parser("upload", help="copy an archive to the server as a snapshot (verified there)"), 3600)
    p.add_argument("file", type=Path)
    for p in snapshots.choices.values():
        p.set_defaults(func=cmd_snapshot)
