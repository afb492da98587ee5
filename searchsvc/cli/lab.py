"""The lab's commands: `eval`, `eval-data`, `eval-answers`, `train-embedder`, `train-reranker`, `bench`, `bench-rerank`. Each
imports its part of searchsvc.lab only when it runs."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from searchsvc.cli.common import settings_from


def cmd_eval(args: argparse.Namespace) -> int:
    from searchsvc.lab.evaluate import run_eval

    settings = settings_from(args, port=0, rerank_int8=args.rerank_int8, rerank_max_length=args.rerank_max_length)
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
    settings = settings_from(args)
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

    settings = settings_from(args)
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
    bench_rerank(settings_from(args), args.model, Path(args.dataset), queries=args.queries)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from searchsvc.lab.bench.service import run_bench

    settings = settings_from(args, port=0)
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
    if args.documents:
        from searchsvc.lab.bench.documents import run_documents

        run_documents(settings, Path(args.documents), queries_limit=args.queries)
        return 0
    if args.recall:
        from searchsvc.lab.bench.recall import run_recall

        run_recall(args.recall, args.target_recall)
        return 0
    if args.memory:
        from searchsvc.lab.bench.memory import run_memory

        run_memory(settings)
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


def cmd_eval_data(args: argparse.Namespace) -> int:
    from searchsvc.lab.data import msmarco_kor

    out = msmarco_kor.prepare(args.source or msmarco_kor.SOURCE_URL, Path(args.out) if args.out else msmarco_kor.DEFAULT_DIR)
    print(out)
    return 0


def add_lab_commands(sub) -> None:
    """The eval, train and bench commands."""
    p = sub.add_parser("eval-data", help="write a dataset that cannot be committed (msmarco-kor: research use) in BEIR layout")
    p.add_argument("dataset", choices=["msmarco-kor"])
    p.add_argument("--source", help="a local copy of the source file (default: fetch it from GitHub, pinned by commit)")
    p.add_argument("--out", help="default: ~/.cache/searchsvc/datasets/<dataset>")
    p.set_defaults(func=cmd_eval_data)

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
    p.add_argument("--recall", type=int, metavar="VECTORS",
                   help="instead of the parts: dense_index.target_recall on clustered, Gaussian and SciFact vectors "
                   "(calibrated efSearch, recall@10 of unseen queries at it and at the default 256, search p50)")
    p.add_argument("--target-recall", type=float, default=0.95, help="with --recall: the target (default 0.95)")
    p.add_argument("--memory", action="store_true",
                   help="instead of the parts: server RSS idle, with an en and a ko collection, and after a search in "
                   "each (LLM off), beside what each model added")
    p.add_argument("--soak", type=int, metavar="MINUTES",
                   help="instead of the parts: a mixed workload at ~80%% of measured capacity; per minute RSS, search p50/p99, errors")
    p.add_argument("--filters", type=int, metavar="CHUNKS",
                   help="instead of the parts: filtered search p50 at 1%%, 10%% and 50%% selectivity against unfiltered")
    p.add_argument("--snapshots", metavar="DATASET|CHUNKS",
                   help="instead of the parts: snapshot, restore and export times and archive size of a dataset's "
                   "collection (e.g. ../shared/data/scifact) or of CHUNKS synthetic external-vector chunks")
    p.add_argument("--documents", nargs="?", const="../shared/data/autorag-ko", metavar="DATASET",
                   help="instead of the parts: a BEIR dataset of '<domain> - <file> - <page>' pages rebuilt as PDF, DOCX and "
                   "HWPX; extraction pages/s and CPU per page, and page-level HYBRID nDCG@10 of each against the pages as text")
    p.add_argument("--observability", type=int, metavar="CHUNKS",
                   help="instead of the parts: Search p50 with metrics and tracing on vs off at CHUNKS chunks")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-rerank", help="rerank latency p50/p95 for 20 and 50 candidates: fp32 vs int8, 256 vs 128 tokens")
    p.add_argument("model", help="cross-encoder id, path or trained-model id")
    p.add_argument("dataset", help="BEIR layout: its passages and queries are the pairs scored")
    p.add_argument("--queries", type=int, default=30)
    p.set_defaults(func=cmd_bench_rerank)
