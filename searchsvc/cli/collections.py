"""`searchsvc collections …` and `searchsvc documents …`: a running server's collections and stored documents from
the terminal (issue 20). Tables through rich; `--json` prints the responses in protobuf's JSON mapping."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from searchsvc.cli.common import add_connection_flags, add_filter_flags, apply_filter_flags, connect, reports_rpc_errors


def _json(message) -> None:
    from google.protobuf import json_format

    print(json_format.MessageToJson(message, indent=2, ensure_ascii=False))


def _state(c) -> str:
    from searchsvc.v1 import searchsvc_pb2 as pb

    state = pb.CollectionState.Name(c.state).removeprefix("COLLECTION_STATE_")
    return "READY" if state == "UNSPECIFIED" else state


def _dense_index(c) -> str:
    """The index serving, with the vectors the graph builder has yet to insert (searched exactly meanwhile)."""
    return f"{c.dense_index_in_use} ({c.dense_backlog:,} pending)" if c.dense_backlog else c.dense_index_in_use


def collections_table(collections) -> Table:
    table = Table()
    for column in ("name", "state", "documents", "chunks", "language", "embedding model", "analyzer", "dense index", "backend"):
        table.add_column(column, justify="right" if column in ("documents", "chunks") else "left", no_wrap=column == "name")
    for c in collections:
        table.add_row(c.name, _state(c), f"{c.document_count:,}", f"{c.chunk_count:,}", c.config.language, c.config.embedding_model,
                      c.config.analyzer, _dense_index(c), c.config.backend)
    return table


@reports_rpc_errors
def cmd_collections(args: argparse.Namespace) -> int:
    from searchsvc.v1 import searchsvc_pb2 as pb

    channel, stub = connect(args)
    with channel:
        if args.action == "list":
            response = stub.ListCollections(pb.ListCollectionsRequest(), timeout=args.timeout)
            _json(response) if args.json else Console().print(collections_table(response.collections))
        elif args.action == "get":
            c = stub.GetCollection(pb.GetCollectionRequest(name=args.name), timeout=args.timeout)
            if args.json:
                _json(c)
            else:
                Console().print(collections_table([c]))
                if c.state_reason:
                    print(f"state: {c.state_reason}")
        elif args.action == "create":
            config = pb.CollectionConfig(language=args.language, embedding_model=args.embedding_model, analyzer=args.analyzer,
                                         chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                                         reranker_model=args.reranker_model, refresh_interval_ms=args.refresh_interval_ms,
                                         dimension=args.dimension, backend=args.backend)
            config.dense_index.kind, config.dense_index.quantization = args.dense_index, args.quantization
            c = stub.CreateCollection(pb.CreateCollectionRequest(name=args.name, config=config), timeout=args.timeout)
            _json(c) if args.json else Console().print(collections_table([c]))
        else:  # delete
            if not args.yes:
                if not sys.stdin.isatty():
                    print(f"error: deleting {args.name!r} needs --yes when not asked at a terminal", file=sys.stderr)
                    return 2
                if input(f"Delete collection {args.name!r} and all its documents? Type its name to confirm: ").strip() != args.name:
                    print("not deleted", file=sys.stderr)
                    return 1
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=args.name), timeout=args.timeout)
            print(f"deleted collection {args.name}")
    return 0


def documents_table(documents, with_text: bool) -> Table:
    table = Table()
    for column in ("id", "title", "chunks", "metadata"):
        table.add_column(column, no_wrap=column == "id", justify="right" if column == "chunks" else "left")
    if with_text:
        table.add_column("text", overflow="fold")
    for d in documents:
        metadata = [f"{k}={v}" for k, v in sorted(d.metadata.items())]
        for key in sorted(d.typed_metadata):
            value = d.typed_metadata[key]
            kind = value.WhichOneof("kind")
            shown = value.timestamp_value.ToJsonString() if kind == "timestamp_value" else \
                ",".join(value.string_list_value.values) if kind == "string_list_value" else getattr(value, kind)
            metadata.append(f"{key}={shown}")
        row = [d.id, d.title, str(len(d.chunks)), " ".join(metadata)]
        if with_text:
            text = " ".join(d.text.split())
            row.append(text if len(text) <= 400 else text[:399] + "…")
        table.add_row(*row)
    return table


@reports_rpc_errors
def cmd_documents(args: argparse.Namespace) -> int:
    from searchsvc.v1 import searchsvc_pb2 as pb

    channel, stub = connect(args)
    with channel:
        if args.action == "get":
            response = stub.GetDocuments(pb.GetDocumentsRequest(collection=args.collection, ids=args.ids), timeout=args.timeout)
            if args.json:
                _json(response)
            else:
                Console().print(documents_table(response.documents, with_text=True))
                if response.not_found_ids:
                    print(f"not found: {', '.join(response.not_found_ids)}")
            return 1 if response.not_found_ids else 0
        if args.action == "list":
            request = pb.ListDocumentsRequest(collection=args.collection, page_size=args.page_size, page_token=args.page_token)
            apply_filter_flags(args, request)
            response = stub.ListDocuments(request, timeout=args.timeout)
            if args.json:
                _json(response)
            else:
                Console().print(documents_table(response.documents, with_text=False))
                if response.next_page_token:
                    print(f"more: --page-token {response.next_page_token}")
        elif args.action == "count":
            request = pb.CountDocumentsRequest(collection=args.collection)
            apply_filter_flags(args, request)
            print(stub.CountDocuments(request, timeout=args.timeout).count)
        else:  # delete
            done = stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=args.collection, ids=args.ids), timeout=args.timeout)
            print(f"deleted {done.deleted_count}, not found {done.not_found_count}")
    return 0


def add_collection_commands(sub) -> None:
    actions = sub.add_parser("collections", help="list, get, create or delete collections").add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", help="every collection with its state and counts")
    p = actions.add_parser("get", help="one collection's config, state and counts")
    p.add_argument("name", help="collection name or alias")
    p = actions.add_parser("create", help="a new collection; unset flags take the server's defaults")
    p.add_argument("name", help="1-64 of [A-Za-z0-9_-], starting with a letter or digit")
    p.add_argument("--language", default="", choices=["", "auto", "en", "ko"], help="auto (mixed, Korean-aware), en or ko")
    p.add_argument("--embedding-model", default="", help="model id or directory, or 'external' (callers send vectors)")
    p.add_argument("--dimension", type=int, default=0, help="the vectors' length, with --embedding-model external")
    p.add_argument("--analyzer", default="", help="keyword analyzer (default: the language's)")
    p.add_argument("--chunk-size", type=int, default=0, help="tokens per chunk")
    p.add_argument("--chunk-overlap", type=int, default=0, help="tokens shared by neighbouring chunks")
    p.add_argument("--reranker-model", default="", help="cross-encoder for --rerank searches")
    p.add_argument("--refresh-interval-ms", type=int, default=0, help="keyword leg refresh after writes (-1: before each ack)")
    p.add_argument("--dense-index", default="", choices=["", "auto", "flat", "hnsw"], help="exact scan, HNSW graph, or auto")
    p.add_argument("--quantization", default="", choices=["", "none", "sq8"], help="sq8: 8-bit HNSW vectors")
    p.add_argument("--backend", default="", choices=["", "embedded", "qdrant"], help="where it is stored")
    p = actions.add_parser("delete", help="delete a collection and all its documents (asks first)")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="do not ask")
    for p in actions.choices.values():
        p.add_argument("--json", action="store_true", help="print the response as JSON")
        add_connection_flags(p, timeout=120)
        p.set_defaults(func=cmd_collections)

    actions = sub.add_parser("documents", help="get, list, count or delete a collection's documents").add_subparsers(
        dest="action", required=True)
    p = actions.add_parser("get", help="documents by id: text, title, metadata, chunks")
    p.add_argument("collection")
    p.add_argument("ids", nargs="+")
    p = actions.add_parser("list", help="one page of documents, in a stable order")
    p.add_argument("collection")
    add_filter_flags(p)
    p.add_argument("--page-size", type=int, default=50)
    p.add_argument("--page-token", default="", help="the token the previous page printed")
    p = actions.add_parser("count", help="how many documents (match the filter)")
    p.add_argument("collection")
    add_filter_flags(p)
    p = actions.add_parser("delete", help="delete documents by id")
    p.add_argument("collection")
    p.add_argument("ids", nargs="+")
    for p in actions.choices.values():
        p.add_argument("--json", action="store_true", help="print the response as JSON")
        add_connection_flags(p, timeout=60)
        p.set_defaults(func=cmd_documents)
