"""`searchsvc index PATH --collection NAME` and `searchsvc import NAME PATH`: stream documents into a collection."""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

from searchsvc.cli.common import add_connection_flags, connect, connection_options, reports_rpc_errors

INDEX = re.compile(r"\[\d+\]")  # documents[3].text -> documents[i].text: one summary line per kind of rejection


@reports_rpc_errors
def cmd_index(args: argparse.Namespace) -> int:
    """Stream documents into a collection (created with the server's defaults if missing), with a progress bar
    (a total where the input tells it cheaply) and a summary: documents, chunks, rejected with reasons, docs/s."""
    import time

    import grpc
    from tqdm import tqdm

    from searchsvc.cli.common import target
    from searchsvc.client.channel import bulk_index, open_channel
    from searchsvc.ingest.loaders import count_documents, load_documents
    from searchsvc.v1 import searchsvc_pb2 as pb

    path = Path(args.path)
    channel, stub = connect(args)
    with channel:
        try:
            stub.CreateCollection(pb.CreateCollectionRequest(name=args.collection), timeout=args.timeout)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    progress = tqdm(total=count_documents(path), unit="doc", desc=f"indexing into {args.collection}")
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
                      load_documents(path), batch_size=args.batch_size, on_ack=on_ack)
    progress.close()
    took = time.perf_counter() - started
    indexed = sum(a.indexed_count for a in acks)
    print(f"indexed {indexed} documents ({chunks} chunks) into {args.collection} in {took:.1f} s ({indexed / took:.1f} docs/s); "
          f"{len(rejected)} rejected")
    reasons = collections.Counter(INDEX.sub("[i]", e.field) + f": {e.message}" for e in rejected)
    for reason, n in reasons.most_common():
        print(f"  {n} × {reason}")
    return 1 if rejected else 0


def add_index_commands(sub) -> None:
    """`index` and `import`."""
    p = sub.add_parser("index", help="stream a folder, .jsonl (BEIR corpus too) or .csv into a collection",
                       description="Streams documents through BulkIndex; each batch is acked once durable. Creates the "
                       "collection with the server's defaults if it does not exist.")
    p.add_argument("path", help="a BEIR folder (corpus.jsonl), a .jsonl ({id|_id, text, title, metadata, typed_metadata, "
                   "vector}), a .csv (id, text, title; other columns are metadata), or a folder of .md/.txt/.rst files")
    p.add_argument("--collection", required=True, help="the collection (or alias) to index into")
    p.add_argument("--batch-size", type=int, default=256, help="documents per BulkIndex request (default 256; at most 1,000)")
    add_connection_flags(p, timeout=300)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("import", help="stream a .jsonl (e.g. from `searchsvc export`), .csv or folder into a collection",
                       description="The same as `index PATH --collection COLLECTION`.")
    p.add_argument("collection", help="the collection (or alias) to import into; created with the server's defaults if missing")
    p.add_argument("path", help="as for `index`")
    p.add_argument("--batch-size", type=int, default=256, help="documents per BulkIndex request (default 256)")
    add_connection_flags(p, timeout=300)
    p.set_defaults(func=cmd_index)
