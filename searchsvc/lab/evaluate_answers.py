"""`searchsvc eval-answers DATASET [--unanswerable OTHER]`: answer quality through the Answer RPC.

Per question: citation accuracy (the answer cites at least one gold document), similarity to the reference
answer (content-token F1: words for Latin script, character bigrams for Hangul, so Korean particles don't
count against an answer), refusal rate; per call: time to first token, generation tokens/s, guardrail ms.
With --unanswerable, the dataset's questions are also asked of OTHER's collection (off-domain: the right
answer is a refusal).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from searchsvc.api.server import BackgroundServer, private_server
from searchsvc.config import Settings
from searchsvc.domain.text import content_tokens, is_refusal
from searchsvc.lab.evaluate import ensure_indexed, pct, scratch_settings
from searchsvc.lab.relevance import load_qrels
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


def token_f1(answer: str, reference: str) -> float:
    a, r = content_tokens(answer), content_tokens(reference)
    common = len(a & r)
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def load_questions(dataset: Path, split: str) -> list[dict]:
    qrels = load_qrels(dataset / "qrels" / f"{split}.tsv")
    with open(dataset / "queries.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = []
    for q in rows:
        qid = str(q["_id"])
        if qid in qrels:
            refs = q.get("answer") or []
            out.append({"id": qid, "text": q["text"], "gold": {d for d, g in qrels[qid].items() if g > 0},
                        "reference": refs[0] if isinstance(refs, list) and refs else refs or ""})
    return out


def run_answer_eval(
    settings: Settings,
    dataset: Path,
    *,
    limit: int | None = None,
    unanswerable: Path | None = None,
    unanswerable_limit: int = 10,
    split: str = "dev",
    seed: int = 0,
    max_tokens: int = 160,
) -> dict:
    questions = load_questions(dataset, split)
    rng = random.Random(seed)
    if limit and limit < len(questions):
        questions = rng.sample(questions, limit)
    with tempfile.TemporaryDirectory() as tmp:
        settings = scratch_settings(settings, tmp)
        with BackgroundServer(private_server(settings)) as server, grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            name = ensure_indexed(stub, server.target, dataset)
            answered = [_ask(stub, name, q, max_tokens) for q in questions]
            off_domain = []
            if unanswerable is not None:
                other = ensure_indexed(stub, server.target, unanswerable)
                for q in questions[:unanswerable_limit]:
                    off_domain.append(_ask(stub, other, q, max_tokens))
    report = summarize(answered, off_domain)
    print(json.dumps({"dataset": dataset.name, "questions": len(answered), **report}, indent=2, ensure_ascii=False))
    return {"report": report, "answers": answered, "off_domain": off_domain}


def _ask(stub, collection: str, q: dict, max_tokens: int) -> dict:
    request = pb.AnswerRequest(
        search=pb.SearchRequest(collection=collection, query=q["text"]), max_tokens=max_tokens, bypass_cache=True
    )
    started = time.perf_counter()
    r = stub.Answer(request, timeout=600)
    wall = (time.perf_counter() - started) * 1000
    t = r.timings
    decode_s = max(1e-9, (t.generate_ms - t.first_token_ms) / 1000)
    cited = {c.document_id for c in r.citations}
    row = {
        "id": q["id"],
        "answer": r.answer,
        "kind": pb.AnswerKind.Name(r.kind),
        "guardrails": pb.GuardrailStatus.Name(r.guardrails.status),
        "rails": [h.rail for h in r.guardrails.hits],
        "cited": sorted(cited),
        "citation_hit": bool(cited & q["gold"]),
        "context_hit": bool({h.document_id for h in r.context} & q["gold"]),
        "refused": r.kind in _NO_ANSWER or is_refusal(r.answer),
        "f1": token_f1(r.answer, q["reference"]) if q["reference"] else None,
        "prompt_tokens": r.usage.prompt_tokens,
        "completion_tokens": r.usage.completion_tokens,
        "first_token_ms": t.first_token_ms,
        # what the caller waits for the first token: input rails, retrieval, packing the context, prompt reading
        "until_first_token_ms": t.guard_input_ms + t.retrieve_ms + t.context_ms + t.first_token_ms,
        "context_ms": t.context_ms,
        "decode_tok_s": (r.usage.completion_tokens - 1) / decode_s if r.usage.completion_tokens > 1 else 0.0,
        "guard_input_ms": r.guardrails.input_ms,
        "guard_output_ms": r.guardrails.output_ms,
        "total_ms": wall,
    }
    print(f"{row['id']}: {row['kind']} cite={row['citation_hit']} ttft={t.first_token_ms:.0f}ms {r.answer[:100]!r}", flush=True)
    return row


_NO_ANSWER = (pb.ANSWER_KIND_REFUSED, pb.ANSWER_KIND_UNANSWERED, pb.ANSWER_KIND_NO_CONTEXT)


def summarize(rows: list[dict], off_domain: list[dict]) -> dict:
    def mean(key: str, subset=None) -> float | None:
        values = [r[key] for r in (rows if subset is None else subset) if r[key] is not None]
        return float(np.mean(values)) if values else None  # None: nothing to measure (no reference answers)

    answered = [r for r in rows if not r["refused"]]
    return {
        "citation_accuracy": mean("citation_hit"),
        "citation_accuracy_when_gold_in_context": mean("citation_hit", [r for r in rows if r["context_hit"]]),
        "gold_in_context": mean("context_hit"),
        "reference_f1": mean("f1"),
        "refusal_rate_answerable": mean("refused"),
        "refusal_rate_unanswerable": mean("refused", off_domain) if off_domain else None,
        "prompt_tokens_mean": mean("prompt_tokens"),
        "first_token_ms_p50": pct([r["first_token_ms"] for r in rows], 50),
        "until_first_token_ms_p50": pct([r["until_first_token_ms"] for r in rows], 50),
        "context_ms_p50": pct([r["context_ms"] for r in rows], 50),
        "decode_tokens_per_s_p50": pct([r["decode_tok_s"] for r in answered], 50),
        "guard_input_ms_p50": pct([r["guard_input_ms"] for r in rows], 50),
        "guard_output_ms_p50": pct([r["guard_output_ms"] for r in rows], 50),
        "total_ms_p50": pct([r["total_ms"] for r in rows], 50),
        "kinds": {k: sum(r["kind"] == k for r in rows) for k in sorted({r["kind"] for r in rows})},
    }
