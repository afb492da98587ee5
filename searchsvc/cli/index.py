"""`searchsvc index PATH --collection NAME` and `searchsvc import NAME PATH`: stream documents into a collection."""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

from searchsvc.cli.common import add_connection_flags, connect, connection_options, reports_rpc_errors

INDEX = re.compile(r"\[\d+\]")  # documents[3].text -> documents[i].text: one summary line per kind of rejection


@reports_rpc_errors
def cmd_index(args: argparse.Namespace) -> int:
    """Stream documents into a collection (created with the server's defaults if missing), with a progress bar
    (a total where the input tells it cheaply) and a summary: documents, chunks, rejected with reasons, files
    skipped by extension, docs/s. When it returns, what it indexed is searchable by both legs (the last batch asks
    for a refresh). Exit 1 when any document was rejected, or nothing was indexed from a non-empty input."""
    import time

    import grpc
    from tqdm import tqdm

    from searchsvc.cli.common import target
    from searchsvc.client.channel import bulk_index, open_channel
    from searchsvc.ingest.loaders import (
        Columns,
        count_documents,
        file_hash,
        load_documents,
        load_file,
        load_folder,
        scan_folder,
    )
    from searchsvc.v1 import searchsvc_pb2 as pb

    path = Path(args.path)
    columns = Columns(args.id_column, tuple(args.text_columns.split(",")), args.title_column,
                      tuple(args.metadata_columns.split(",")) if args.metadata_columns is not None else None)
    scan = scan_folder(path) if path.is_dir() and not (path / "corpus.jsonl").exists() else None
    docs = load_folder(path, scan) if scan is not None else load_documents(path, columns, args.encoding)
    total = len(scan.files) if scan is not None else count_documents(path, args.encoding)
    sync = getattr(args, "sync", False)  # `import` has no --sync
    if sync and scan is None:
        print("--sync takes a folder of files", file=sys.stderr)
        return 2
    unchanged = deleted = 0
    channel, stub = connect(args)
    with channel:
        try:
            stub.CreateCollection(pb.CreateCollectionRequest(name=args.collection), timeout=args.timeout)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        if sync:  # LlamaIndex IngestionPipeline's "upserts and delete" docstore strategy, by content hash
            stored = stored_hashes(stub, args.collection, args.timeout)
            local = {p.relative_to(scan.root).as_posix(): p for p in scan.files}
            changed = [p for rel, p in local.items() if stored.get(rel) != file_hash(p.read_bytes())]
            unchanged, total = len(local) - len(changed), len(changed)
            docs = (load_file(p, scan.root) for p in changed)  # read again as sent: a changed file is not held in memory
            gone = sorted(set(stored) - set(local))
            if gone:
                request = pb.DeleteDocumentsRequest(collection=args.collection, ids=gone)
                deleted = stub.DeleteDocuments(request, timeout=args.timeout).deleted_count
    progress = tqdm(total=total, unit="doc", desc=f"indexing into {args.collection}")
    chunks, rejected = 0, []
    started = time.perf_counter()

    def on_ack(ack) -> None:
        nonlocal chunks
        progress.update(ack.indexed_count + ack.failed_count)
        chunks += ack.chunk_count
        rejected.extend(ack.errors)
        for e in ack.errors:
            tqdm.write(f"rejected {e.document_id!r}: {e.field}: {e.message}")

    acks = bulk_index(lambda: open_channel(target(args), **connection_options(args)), args.collection,
                      docs, batch_size=args.batch_size, on_ack=on_ack, refresh=True)
    progress.close()
    took = time.perf_counter() - started
    indexed = sum(a.indexed_count for a in acks)
    print(f"indexed {indexed} documents ({chunks} chunks) into {args.collection} in {took:.1f} s ({indexed / took:.1f} docs/s); "
          f"{len(rejected)} rejected")
    reasons = collections.Counter(INDEX.sub("[i]", e.field) + f": {e.message}" for e in rejected)
    for reason, n in reasons.most_common():
        print(f"  {n} × {reason}")
    if sync:
        print(f"sync: {unchanged} unchanged (skipped), {deleted} deleted (their file is gone)")
    if scan is not None and scan.skipped:
        print("skipped (not a type searchsvc reads): " + ", ".join(f"{n} × {ext}" for ext, n in scan.skipped.most_common()))
    if indexed == 0 and not unchanged and (total or scan is not None and scan.skipped):
        print(f"nothing was indexed from {path}: " + ("every document was rejected" if rejected else
              "no file of a type searchsvc reads" if scan is not None else "the input holds no documents"))
        return 1
    return 1 if rejected else 0


def stored_hashes(stub, collection: str, timeout: float) -> dict[str, str]:
    """Document id -> content hash of every document in the collection that was indexed from a file (it carries
    the hash), listed a page at a time."""
    from searchsvc.ingest.loaders import HASH_KEY
    from searchsvc.v1 import searchsvc_pb2 as pb

    hashes, token = {}, ""
    while True:
        page = stub.ListDocuments(pb.ListDocumentsRequest(collection=collection, page_size=1000, page_token=token),
                                  timeout=timeout)
        hashes.update({d.id: d.metadata[HASH_KEY] for d in page.documents if HASH_KEY in d.metadata})
        token = page.next_page_token
        if not token:
            return hashes


def add_index_commands(sub) -> None:
    """`index` and `import`."""
    p = sub.add_parser("index", help="stream a folder of files, .jsonl (BEIR corpus too), .csv/.tsv or a file into a collection",
                       description="Streams documents through BulkIndex; each batch is acked once durable. Creates the "
                       "collection with the server's defaults if it does not exist.")
    p.add_argument("path", help="a folder (read recursively: PDF, DOCX, PPTX, XLSX, HWP, HWPX, HTML, CSV, TSV, text and "
                   "Markdown files, each file a document, read by the server), a BEIR folder (corpus.jsonl), a .jsonl ({id|_id, "
                   "text, title, metadata, typed_metadata, vector}), a .csv/.tsv (a document per row: see --id-column), or one file")
    p.add_argument("--collection", required=True, help="the collection (or alias) to index into")
    p.add_argument("--batch-size", type=int, default=256, help="documents per BulkIndex request (default 256; at most 1,000)")
    p.add_argument("--sync", action="store_true",
                   help="a folder: skip files whose content is unchanged, replace changed ones, delete documents whose file is "
                   "gone (documents indexed from files carry their content hash); a rerun after Ctrl-C continues")
    add_row_flags(p)
    add_connection_flags(p, timeout=300)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("import", help="stream a .jsonl (e.g. from `searchsvc export`), .csv or folder into a collection",
                       description="The same as `index PATH --collection COLLECTION`.")
    p.add_argument("collection", help="the collection (or alias) to import into; created with the server's defaults if missing")
    p.add_argument("path", help="as for `index`")
    p.add_argument("--batch-size", type=int, default=256, help="documents per BulkIndex request (default 256)")
    add_row_flags(p)
    add_connection_flags(p, timeout=300)
    p.set_defaults(func=cmd_index)


def add_row_flags(p: argparse.ArgumentParser) -> None:
    """How a CSV/TSV given alone maps to documents, one per row."""
    p.add_argument("--encoding", default="", help="a CSV/TSV's encoding (e.g. cp949); default: detected")
    p.add_argument("--id-column", default="id", help="the column holding each row's document id (default: id)")
    p.add_argument("--text-columns", default="text", help="comma-separated columns joined into the text (default: text)")
    p.add_argument("--title-column", default="title", help="the column holding the title, if any (default: title)")
    p.add_argument("--metadata-columns", default=None,
                   help="comma-separated columns kept as metadata (default: every column not used otherwise)")
