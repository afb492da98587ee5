"""Command line: `searchsvc serve | index | import | search | answer | collections | documents | export | alias |
snapshot | repair | move-to-qdrant | eval | eval-answers | train-embedder | bench`."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import re
import shutil
import sys
from pathlib import Path

from searchsvc.cli.collections import add_collection_commands
from searchsvc.cli.common import add_connection_flags, connect, connection_options, reports_rpc_errors
from searchsvc.cli.data import add_data_commands
from searchsvc.cli.search import add_search_commands
from searchsvc.config import apply_process_env, load_settings


def _settings(args: argparse.Namespace, **extra):
    overrides = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "index_dir", None) is not None:
        overrides["index_dir"] = args.index_dir
    return load_settings(getattr(args, "config", None), **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from searchsvc.api.server import serve
    from searchsvc.ops import logs

    settings = _settings(args, host=args.host, port=args.port)
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0


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

    index_dir = args.index_dir or _settings(args).index_dir
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

    settings = _settings(args)
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


def cmd_eval(args: argparse.Namespace) -> int:
    from searchsvc.lab.evaluate import run_eval

    settings = _settings(args, port=0, rerank_int8=args.rerank_int8, rerank_max_length=args.rerank_max_length)
    logging.basicConfig(level=logging.WARNING)
    result = run_eval(
        settings, Path(args.dataset), limit_queries=args.limit_queries, split=args.split, holdout=args.holdout,
        seed=args.seed, validation_fraction=args.validation_fraction, embedding_model=args.embedding_model,
        analyzer=args.analyzer, language=args.language, reranker_model=args.reranker_model, rerank_candidates=args.rerank_candidates, rerank_fusion=args.rerank_fusion,
        modes=args.modes.split(",") if args.modes else None, backend=args.backend,
        mmr=[float(x) for x in args.mmr.split(",")] if args.mmr else None,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def cmd_eval_answers(args: argparse.Namespace) -> int:
    from searchsvc.lab.evaluate_answers import run_answer_eval

    llm = {"model": args.model} if args.model else {}
    settings = _settings(args)
    if llm:
        settings = settings.model_copy(update={"llm": settings.llm.model_copy(update=llm)})
    result = run_answer_eval(
        settings, Path(args.dataset), limit=args.limit, unanswerable=Path(args.unanswerable) if args.unanswerable else None,
        unanswerable_limit=args.unanswerable_limit,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


def _train(args: argparse.Namespace, train, recipe) -> int:
    """Shared by the train-* commands: load the dataset, resolve base model and output dir, print the report."""
    from dataclasses import asdict

    from searchsvc.lab.train.data import load_retrieval_data
    from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL

    settings = _settings(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = load_retrieval_data(Path(args.dataset), args.split, seed=args.seed, validation_fraction=args.validation_fraction)
    out = args.out or settings.models_dir
    base = args.base or settings.default_embedding_model or DEFAULT_EMBEDDING_MODEL
    summary = asdict(train(data, base, out, recipe, data_licence=args.data_licence))
    summary["loss_history"] = summary["loss_history"][:: max(1, len(summary["loss_history"]) // 10)]
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train_embedder(args: argparse.Namespace) -> int:
    from searchsvc.lab.train.embedder import EmbedderRecipe, train_embedder

    recipe = EmbedderRecipe(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, negatives=args.negatives, seed=args.seed,
        use_qrels=not args.no_qrels, pseudo_queries=args.pseudo_queries or "",
    )
    return _train(args, train_embedder, recipe)


def cmd_train_reranker(args: argparse.Namespace) -> int:
    from searchsvc.lab.train.reranker import RerankerRecipe, train_reranker

    recipe = RerankerRecipe(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, negatives=args.negatives,
        candidates=args.candidates, max_length=args.max_length, teacher_dense_weight=args.teacher_dense_weight,
        use_qrels=not args.no_qrels, pseudo_queries=args.pseudo_queries or "", max_pseudo_queries=args.max_pseudo_queries,
        seed=args.seed,
    )
    return _train(args, train_reranker, recipe)


def cmd_bench_rerank(args: argparse.Namespace) -> int:
    from searchsvc.lab.bench.service import bench_rerank

    logging.basicConfig(level=logging.WARNING)
    bench_rerank(_settings(args), args.model, Path(args.dataset), queries=args.queries)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from searchsvc.lab.bench.service import run_bench

    settings = _settings(args, port=0)
    logging.basicConfig(level=logging.WARNING)
    if args.soak or args.observability:
        from searchsvc.lab.bench import ops as bench_ops

        if args.soak:
            bench_ops.run_soak(settings, args.soak)
        else:
            bench_ops.run_observability_overhead(settings, args.observability, args.queries)
        return 0
    if args.filters:
        from searchsvc.lab.bench.filters import run_filters

        run_filters(settings, args.filters, args.queries)
        return 0
    if args.snapshots:
        from searchsvc.lab.bench.snapshots import run_snapshots

        run_snapshots(settings, args.snapshots)
        return 0
    if args.scale:
        from searchsvc.lab.bench.scale import run_scale

        run_scale(settings, args.scale, args.queries, quantization=args.quantization)
        return 0
    if args.part in ("all", "encoders"):
        from searchsvc.api.server import configure_threads
        from searchsvc.lab.bench import encoders as bench_encoders

        configure_threads(settings)
        passages = bench_encoders.load_passages(Path(args.passages) if args.passages else None, args.passage_count)
        bench_encoders.run(passages, runs=args.queries // 4 or 1)
    if args.part in ("all", "service"):
        run_bench(settings, sizes=[int(s) for s in args.sizes.split(",")], ingest_docs=args.ingest_docs, queries=args.queries,
                  vectors=args.with_vectors)
    if args.part in ("all", "llm"):
        from searchsvc.lab.bench import encoders as bench_encoders
        from searchsvc.lab.bench import llm as bench_llm

        text = "\n\n".join(bench_encoders.load_passages(Path(args.passages) if args.passages else None, 40))
        bench_llm.run(settings.llm, settings.gguf_dir, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="searchsvc", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (same keys as SEARCHSVC_* variables)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--index-dir", type=Path)
    p.set_defaults(func=cmd_serve)

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

    add_search_commands(sub)
    add_collection_commands(sub)

    add_data_commands(sub)

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

    p = sub.add_parser("eval", help="nDCG@10 / Recall@100 / MRR@10 per mode on a BEIR-layout dataset")
    p.add_argument("dataset")
    p.add_argument("--index-dir", type=Path, help="default: a temporary directory")
    p.add_argument("--split", default="dev")
    p.add_argument("--limit-queries", type=int)
    p.add_argument("--holdout", choices=["train", "validation"], help="only this side of train-embedder's query split")
    p.add_argument("--seed", type=int, default=13, help="the split's seed (as given to train-embedder)")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="as given to train-embedder")
    p.add_argument("--embedding-model", default="", help="model id or directory for the eval collection")
    p.add_argument("--analyzer", default="", help="the eval collection's analyzer (default: by language)")
    p.add_argument("--language", default="", choices=["", "auto", "en", "ko"], help="the eval collection's language (default: the server's)")
    p.add_argument("--reranker-model", default="", help="adds a HYBRID+RERANK row with this cross-encoder")
    p.add_argument("--rerank-candidates", type=int, default=20, help="fused candidates the reranker scores")
    p.add_argument("--rerank-fusion", choices=["rrf", "relative_score"], default="rrf", help="the hybrid ranking reranked")
    p.add_argument("--rerank-int8", action="store_true", help="the int8 fast path (settings.rerank_int8)")
    p.add_argument("--rerank-max-length", type=int, default=256, help="query + passage tokens per pair")
    p.add_argument("--modes", help="comma-separated subset of KEYWORD,DENSE,HYBRID,HYBRID-RSF,HYBRID-DEFAULT,HYBRID+RERANK")
    p.add_argument("--mmr", metavar="LAMBDAS", help="comma-separated MMR lambdas (e.g. 1,0.7,0.5): a HYBRID+MMR row each, "
                   "top 10 of 40 candidates, with dup@10 (the share of top-10 pairs at cosine > 0.95)")
    p.add_argument("--backend", default="", choices=["", "embedded", "qdrant"],
                   help="where the eval collection is stored (default: the server's; qdrant: the configured cluster, else local mode)")
    p.add_argument("--out", help="write per-query nDCG@10 and latencies as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("eval-answers", help="citation accuracy, answer similarity, refusals, TTFT on a dataset")
    p.add_argument("dataset")
    p.add_argument("--index-dir", type=Path, help="default: a temporary directory")
    p.add_argument("--limit", type=int, help="sample this many questions (fixed seed)")
    p.add_argument("--unanswerable", help="a second dataset whose collection the questions are also asked of")
    p.add_argument("--unanswerable-limit", type=int, default=10)
    p.add_argument("--model", help="override llm.model (e.g. qwen2.5-coder-1.5b-instruct)")
    p.add_argument("--out", help="write every answer and the summary as JSON here")
    p.set_defaults(func=cmd_eval_answers)

    p = sub.add_parser("train-embedder", help="fine-tune the embedder on a dataset's judged queries (train split)")
    p.add_argument("dataset", help="BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--base", help="model to start from (default: the server's default embedding model)")
    p.add_argument("--out", type=Path, help="where the versioned model directory goes (default: <index_dir>/models)")
    p.add_argument("--index-dir", type=Path)
    p.add_argument("--split", default="dev", help="qrels file whose queries are split into train/validation")
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--negatives", type=int, default=1, help="mined hard negatives per pair")
    p.add_argument("--pseudo-queries", choices=["title", "ict"], help="add label-free pairs made from the corpus")
    p.add_argument("--no-qrels", action="store_true", help="label-free: train on pseudo-queries only (the qrels still measure)")
    p.add_argument("--data-licence", default="", help="recorded in the manifest")
    p.set_defaults(func=cmd_train_embedder)

    p = sub.add_parser("train-reranker", help="distil a cross-encoder from the collection's bi-encoder + BM25 ranking")
    p.add_argument("dataset", help="BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--base", help="bi-encoder: the teacher's dense leg and the student's initial weights (e.g. a train-embedder output)")
    p.add_argument("--out", type=Path, help="where the versioned model directory goes (default: <index_dir>/models)")
    p.add_argument("--index-dir", type=Path)
    p.add_argument("--split", default="dev")
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8, help="rows of 1 positive + negatives")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--negatives", type=int, default=3, help="teacher candidates per row besides the positive")
    p.add_argument("--candidates", type=int, default=20, help="teacher top-k: negatives' pool and the validation input")
    p.add_argument("--max-length", type=int, default=192, help="query + passage tokens")
    p.add_argument("--teacher-dense-weight", type=float, default=0.6)
    p.add_argument("--pseudo-queries", choices=["title", "ict", "title,ict"], help="add label-free queries made from the corpus")
    p.add_argument("--max-pseudo-queries", type=int, default=2000, help="per kind")
    p.add_argument("--no-qrels", action="store_true", help="label-free: pseudo-queries only (the qrels still measure)")
    p.add_argument("--data-licence", default="", help="recorded in the manifest")
    p.set_defaults(func=cmd_train_reranker)

    p = sub.add_parser("bench", help="ingest ratio vs bare encoder, search latency at scale, peak RSS")
    p.add_argument("--index-dir", type=Path, help="default: a temporary directory")
    p.add_argument("--sizes", default="10000,100000", help="chunk counts for the search latency runs")
    p.add_argument("--ingest-docs", type=int, default=2000)
    p.add_argument("--with-vectors", action="store_true",
                   help="load the search-latency collections with random Document.vector values (no embedder: 100k in minutes)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--part", choices=["all", "encoders", "service", "llm"], default="all",
                   help="encoders: each encoder on each engine vs the matmul peak; service: ingest and search through the "
                   "server; llm: the answer model's prompt reading and generation vs the matmul peak and memory bandwidth")
    p.add_argument("--passages", help="a dataset (e.g. ../shared/data/scifact) whose texts the encoders embed; default: synthetic")
    p.add_argument("--passage-count", type=int, default=256)
    p.add_argument("--scale", type=int, metavar="CHUNKS",
                   help="instead of the parts: one collection of CHUNKS external-vector chunks (issue 15's figures: "
                   "docs/s as it grows, RSS, restart to SERVING, search p50/p99, recall@10, checkpoint times)")
    p.add_argument("--quantization", choices=["none", "sq8"], default="none",
                   help="with --scale: the collection's dense_index.quantization")
    p.add_argument("--soak", type=int, metavar="MINUTES",
                   help="instead of the parts: a mixed workload at ~80%% of measured capacity; per minute RSS, search p50/p99, errors")
    p.add_argument("--filters", type=int, metavar="CHUNKS",
                   help="instead of the parts: filtered search p50 at 1%%, 10%% and 50%% selectivity against unfiltered")
    p.add_argument("--snapshots", metavar="DATASET|CHUNKS",
                   help="instead of the parts: snapshot, restore and export times and archive size of a dataset's "
                   "collection (e.g. ../shared/data/scifact) or of CHUNKS synthetic external-vector chunks")
    p.add_argument("--observability", type=int, metavar="CHUNKS",
                   help="instead of the parts: Search p50 with metrics and tracing on vs off at CHUNKS chunks")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-rerank", help="rerank latency p50/p95 for 20 and 50 candidates: fp32 vs int8, 256 vs 128 tokens")
    p.add_argument("model", help="cross-encoder id, path or trained-model id")
    p.add_argument("dataset", help="BEIR layout: its passages and queries are the pairs scored")
    p.add_argument("--queries", type=int, default=30)
    p.set_defaults(func=cmd_bench_rerank)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_process_env()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
