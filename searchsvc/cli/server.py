"""`searchsvc serve` and the offline maintenance of a stopped server's index dir: `new-key`, `repair`,
`move-to-qdrant`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
from pathlib import Path

from searchsvc.cli.common import settings_from


def cmd_serve(args: argparse.Namespace) -> int:
    from searchsvc.api.server import serve
    from searchsvc.ops import logs

    settings = settings_from(args, host=args.host, port=args.port)
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0


def cmd_new_key(args: argparse.Namespace) -> int:
    """A new random API key: printed once, with the config entry that stores only its hash."""
    import secrets

    from searchsvc.api.auth import hash_key

    key = "ssk_" + secrets.token_urlsafe(32)
    collections = ", ".join(f'"{c}"' for c in args.collections)
    print(f"key (shown once; give it to the caller): {key}\n")
    print("add to the server's config (TOML):\n")
    print(f'[[auth.keys]]\nname = "{args.name}"\nrole = "{args.role}"\nsha256 = "{hash_key(key)}"\ncollections = [{collections}]')
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Report (and with --apply, drop) the bad bytes of a collection's write-ahead log. Exit 0: nothing to
    repair, or repaired; 2: damage found and left as it is (a dry run); 1: cannot run."""
    from searchsvc.storage.embedded.collection import KEYWORD_DIR, Collection
    from searchsvc.storage.embedded.wal import WalLocked, repair

    index_dir = args.index_dir or settings_from(args).index_dir
    path = Path(index_dir) / args.collection
    if not (path / "collection.json").is_file():
        print(f"no collection {args.collection!r} under {index_dir}", file=sys.stderr)
        return 1
    try:
        found, backup = repair(path / "wal.log", apply=args.apply)
    except WalLocked as exc:
        print(f"{exc}: stop the server first", file=sys.stderr)
        return 1
    _, snapshot_seq = Collection.current_snapshot(path)
    seqs = [r["seq"] for r in found.records]
    print(f"{path / 'wal.log'}: {found.size} bytes, {len(seqs)} records that verify"
          + (f" (seq {seqs[0]}..{seqs[-1]})" if seqs else "") + f"; the snapshot holds seq <= {snapshot_seq}")
    if not found.bad:
        print("nothing to repair")
        return 0
    for span in found.bad:
        lost = [s for s in span.lost_seqs if s > snapshot_seq]
        note = f" ({len(lost)} of them not in the snapshot: acknowledged writes that are gone)" if lost else ""
        print(f"{'dropped' if args.apply else 'would drop'}: {span.describe()}{note}")
    if backup is None:
        print("dry run: nothing changed. Rerun with --apply to rewrite the log without these bytes "
              "(the original is kept beside it), then ReopenCollection or restart the server.")
        return 2
    # The keyword index may hold writes of the dropped records: it is rebuilt from the snapshot and the log at open.
    shutil.rmtree(path / KEYWORD_DIR, ignore_errors=True)
    (path / KEYWORD_DIR).with_suffix(".seq").unlink(missing_ok=True)
    print(f"repaired; the original log is kept as {backup}. Now ReopenCollection or restart the server.")
    return 0


def cmd_move_to_qdrant(args: argparse.Namespace) -> int:
    """Copy an embedded collection of a stopped server's index dir into Qdrant (the configured cluster, else
    local mode under the index dir), then delete the embedded one unless --keep. Exit 0: moved; 1: not."""
    from searchsvc.collections.catalog import Catalog
    from searchsvc.errors import SearchsvcError
    from searchsvc.retrieve.models import ModelRegistry
    from searchsvc.storage.embedded.wal import WalLocked

    settings = settings_from(args)
    logging.basicConfig(level=logging.WARNING)
    catalog = Catalog(settings, ModelRegistry(models_dir=settings.models_dir, cache_dir=settings.derived_models_dir))
    try:
        source = catalog.open_embedded(args.collection)
        print(f"{args.collection}: {source.document_count} documents, {source.chunk_count} chunks ({source.config.embedding_model})")
        moved = catalog.move_to_qdrant(args.collection, args.as_name or "", keep=args.keep)
        summary = f"{moved.name}: {moved.document_count} documents, {moved.chunk_count} chunks"
    except (WalLocked, ValueError) as exc:
        if isinstance(exc, ValueError) and "LockBusy" not in str(exc):  # tantivy's: its writer is held elsewhere
            raise
        print(f"collection {args.collection!r} is open in another process (its log or keyword index is locked): "
              "stop the server first", file=sys.stderr)
        return 1
    except SearchsvcError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    finally:
        catalog.close()
    where = settings.qdrant.url or f"local mode at {settings.qdrant.path or Path(settings.index_dir) / '.qdrant'}"
    print(f"copied into Qdrant ({where}) as {summary}"
          + ("; the embedded collection is kept" if args.keep else "; the embedded collection is deleted"))
    return 0


def add_serve_command(sub) -> None:
    """`serve`: run the gRPC server."""
    p = sub.add_parser("serve", help="run the gRPC server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--index-dir", type=Path)
    p.set_defaults(func=cmd_serve)


def add_maintenance_commands(sub) -> None:
    """`new-key`, `repair`, `move-to-qdrant`."""
    p = sub.add_parser("new-key", help="make an API key and print the config entry that stores its hash")
    p.add_argument("--name", required=True, help="how logs name the key")
    p.add_argument("--role", choices=["read", "write", "admin"], required=True)
    p.add_argument("--collections", nargs="*", default=[], help="names or prefixes ('team-a-*') it may touch; none: all")
    p.set_defaults(func=cmd_new_key)

    p = sub.add_parser("repair", help="report what a repair of a collection's corrupt write-ahead log drops; --apply drops it")
    p.add_argument("collection")
    p.add_argument("--index-dir", type=Path, help="default: the configured index dir")
    p.add_argument("--apply", action="store_true", help="rewrite the log without the bad bytes (the original is kept)")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("move-to-qdrant", help="copy an embedded collection (server stopped) into Qdrant, then delete it unless --keep")
    p.add_argument("collection")
    p.add_argument("--as", dest="as_name", default="", help="the Qdrant collection's name (default: the same)")
    p.add_argument("--keep", action="store_true", help="keep the embedded collection (give --as another name to serve both)")
    p.add_argument("--index-dir", type=Path, help="default: the configured index dir")
    p.set_defaults(func=cmd_move_to_qdrant)
