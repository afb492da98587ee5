"""`searchsvc search` and `searchsvc answer`: a running server from the terminal (issue 20).

Tables through rich (plain text when stdout is not a terminal); `--json` prints the response in protobuf's JSON
mapping for scripts and jq. `answer` prints the text as the stream delivers it, then the citations and the
guardrail verdict; Ctrl-C cancels the call, and the server stops generating within a token.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from searchsvc.cli.common import (
    EXIT_INTERRUPTED,
    add_connection_flags,
    add_filter_flags,
    apply_filter_flags,
    connect,
    reports_rpc_errors,
)

SNIPPET_CHARS = 160


def _snippet(hit) -> str:
    text = hit.highlight.snippet if hit.highlight.snippet else hit.text
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _leg(score) -> str:
    return f"#{score.rank} {score.score:.3f}" if score.rank else "-"


def search_request(args: argparse.Namespace):
    from searchsvc.v1 import searchsvc_pb2 as pb

    request = pb.SearchRequest(collection=args.collection, query=args.query, top_k=args.top_k, explain=args.explain,
                               highlight=args.highlight, collections=args.also)
    request.mode = {"hybrid": pb.SEARCH_MODE_HYBRID, "dense": pb.SEARCH_MODE_DENSE, "keyword": pb.SEARCH_MODE_KEYWORD}[args.mode]
    if args.fusion:
        request.fusion = {"rrf": pb.FUSION_RRF, "relative_score": pb.FUSION_RELATIVE_SCORE}[args.fusion]
    if args.rerank or args.rerank_model:
        request.rerank.enabled = True
        request.rerank.model = args.rerank_model
    if args.cutoff is not None:
        request.similarity_cutoff = args.cutoff
    apply_filter_flags(args, request)
    return request


def _place(typed_metadata) -> str:
    """Where in its file a hit was read: " p.12", " slide 3", " Sales row 14" ("" for a document sent as text)."""
    def value(key: str):
        v = typed_metadata.get(key)
        return None if v is None else getattr(v, v.WhichOneof("kind"))

    if (page := value("page")) is not None:
        return f" p.{page}"
    if (slide := value("slide")) is not None:
        return f" slide {slide}"
    if (row := value("row")) is not None:
        return f" {value('sheet') + ' ' if value('sheet') else ''}row {row}"
    return ""


def hits_table(hits, explain: bool, several: bool = False) -> Table:
    """`several`: hits of several collections, each named."""
    table = Table(show_lines=False, expand=False)
    for column, justify in (("#", "right"), ("score", "right"), ("document", "left"), ("title", "left")):
        table.add_column(column, justify=justify, no_wrap=column != "title")
    if explain:
        for column in ("dense", "keyword", "rerank", "cosine"):
            table.add_column(column, justify="right", no_wrap=True)
    table.add_column("text", overflow="fold")
    for rank, h in enumerate(hits, start=1):
        document = h.document_id + _place(h.typed_metadata)
        row = [str(rank), f"{h.score:.4f}", f"{document} ({h.collection})" if several else document, h.title]
        if explain:
            e = h.explanation
            row += [_leg(e.dense), _leg(e.keyword), f"{e.rerank_score:.3f}" if e.HasField("rerank_score") else "-",
                    f"{e.similarity:.3f}" if e.HasField("similarity") else "-"]
        table.add_row(*row, _snippet(h))
    return table


@reports_rpc_errors
def cmd_search(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    request = search_request(args)
    channel, stub = connect(args)
    with channel:
        response = stub.Search(request, timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(response, indent=2, ensure_ascii=False))
        return 0
    console = Console()
    if not response.hits:
        console.print("no hits")
    else:
        console.print(hits_table(response.hits, args.explain, several=bool(args.also)))
    t = response.timings
    notes = [f"{len(response.hits)} hits in {t.total_ms:.1f} ms (embed {t.embed_ms:.1f}, dense {t.dense_ms:.1f}, "
             f"keyword {t.keyword_ms:.1f}, rerank {t.rerank_ms:.1f})"]
    if response.cutoff_dropped:
        notes.append(f"{response.cutoff_dropped} under the similarity cutoff")
    if response.truncated_hits:
        notes.append(f"{response.truncated_hits} left out (response size limit)")
    if response.rerank.skipped_reason:
        notes.append(f"rerank skipped: {response.rerank.skipped_reason}")
    console.print("; ".join(notes), style="dim", highlight=False)
    return 0


def answer_request(args: argparse.Namespace):
    from searchsvc.v1 import searchsvc_pb2 as pb

    search = pb.SearchRequest(collection=args.collection, query=args.question, top_k=args.top_k)
    apply_filter_flags(args, search)
    request = pb.AnswerRequest(search=search, max_tokens=args.max_tokens, extractive=args.extractive, bypass_cache=args.no_cache)
    if args.temperature is not None:
        request.temperature = args.temperature
    return request


@reports_rpc_errors
def cmd_answer(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from searchsvc.v1 import searchsvc_pb2 as pb

    channel, stub = connect(args)
    with channel:
        call = stub.StreamAnswer(answer_request(args), timeout=args.timeout)
        streamed, done = [], None
        try:
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "delta" and not args.json:
                    streamed.append(event.delta.text)
                    sys.stdout.write(event.delta.text)
                    sys.stdout.flush()
                elif kind == "done":
                    done = event.done
        except KeyboardInterrupt:
            call.cancel()  # the server sees the cancellation and stops generating
            print("\ncancelled", file=sys.stderr)
            return EXIT_INTERRUPTED
    if done is None:
        print("\nerror: the stream ended without its final event", file=sys.stderr)
        return 1
    if args.json:
        print(json_format.MessageToJson(done, indent=2, ensure_ascii=False))
        return 0
    console = Console()
    if done.answer.strip() != "".join(streamed).strip():  # the final check changed it: this text is authoritative
        console.print("\n[the guardrails revised the answer; final text:]", style="yellow", highlight=False)
        console.print(done.answer, highlight=False)
    else:
        print()
    for c in done.citations:
        quote = " ".join(c.quote.split())
        where = f" {c.filename or c.document_id}" + (f" p.{c.page}" if c.page else "")
        console.print(f"{c.marker}{where} ({c.chunk_id}){' inferred' if c.inferred else ''}: \u201c{quote}\u201d",
                      highlight=False, markup=False)
    verdict = pb.GuardrailStatus.Name(done.guardrails.status).removeprefix("GUARDRAIL_STATUS_")
    rails = "; ".join(f"{h.rail} {h.action}: {h.reason}" for h in done.guardrails.hits)
    kind = pb.AnswerKind.Name(done.kind).removeprefix("ANSWER_KIND_")
    console.print(f"{kind} answer, guardrails {verdict}{' (' + rails + ')' if rails else ''}; {done.usage.prompt_tokens} "
                  f"prompt + {done.usage.completion_tokens} generated tokens{' (cached)' if done.usage.cached else ''}, "
                  f"first token {done.timings.first_token_ms / 1000:.1f} s, total {done.timings.total_ms / 1000:.1f} s "
                  f"({' '.join(filter(None, (done.generator.backend, done.generator.model)))})", style="dim",
                  highlight=False, markup=False)
    return 0


def add_search_commands(sub) -> None:
    p = sub.add_parser("search", help="search a collection and print the hits as a table (or --json)")
    p.add_argument("collection", help="collection name or alias")
    p.add_argument("query")
    p.add_argument("--mode", choices=["hybrid", "dense", "keyword"], default="hybrid", help="which legs run (default hybrid)")
    p.add_argument("-k", "--top-k", type=int, default=10, help="hits to return (default 10)")
    add_filter_flags(p)
    p.add_argument("--fusion", choices=["rrf", "relative_score"], help="how hybrid merges the legs (default: the query language's)")
    p.add_argument("--rerank", action="store_true", help="rerank with the collection's cross-encoder")
    p.add_argument("--rerank-model", default="", help="rerank with this cross-encoder (admin keys only)")
    p.add_argument("--cutoff", type=float, help="drop hits whose cosine to the query is below this")
    p.add_argument("--highlight", action="store_true", help="snippets around the matched terms")
    p.add_argument("--also", action="append", default=[], metavar="COLLECTION", help="search this collection too (repeat)")
    p.add_argument("--explain", action="store_true", help="each leg's rank and score, the rerank score and the cosine")
    p.add_argument("--json", action="store_true", help="print the response as JSON (protobuf's JSON mapping)")
    add_connection_flags(p, timeout=30)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("answer", help="answer a question from a collection, streaming the text, then citations and verdict")
    p.add_argument("collection", help="collection name or alias")
    p.add_argument("question")
    p.add_argument("-k", "--top-k", type=int, default=0, help="passages given to the model (default: the server's, 5)")
    add_filter_flags(p)
    p.add_argument("--max-tokens", type=int, default=0, help="longest answer in tokens (default: the server's)")
    p.add_argument("--temperature", type=float, help="sampling temperature, 0-2 (default: the server's)")
    p.add_argument("--extractive", action="store_true", help="quote the best passages instead of generating")
    p.add_argument("--no-cache", action="store_true", help="answer again even if this question was answered before")
    p.add_argument("--json", action="store_true", help="print only the final response as JSON")
    add_connection_flags(p, timeout=600)
    p.set_defaults(func=cmd_answer)
