"""Prompt-lookup decoding against plain decoding on the answer model, the same prompts, greedy (issue 38).

    python -m searchsvc.lab.bench.prompt_lookup [--dataset ../shared/data/autorag-ko] [--questions 10]
        [--max-tokens 160] [--draft 10]

Each prompt is what the service would send for a dev question whose judged pages were retrieved: its judged pages
first, then other pages of the same file, packed to the answer budget (answer/prompt.py), in the language's
template. The model (llm settings, default Qwen2.5-Coder-1.5B Q4_K_M) answers every prompt at temperature 0 without
and then with prompt lookup (`llm.prompt_lookup_tokens`), one model load each. Printed per question and in total:
generation tok/s (completion tokens over the time after the first token), whether both outputs are identical, and
the share of drafted tokens the model accepted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from searchsvc.answer.llm import build_llm
from searchsvc.answer.prompt import build_messages, pack_context
from searchsvc.config import Settings
from searchsvc.domain.types import Hit
from searchsvc.ingest.loaders import load_jsonl
from searchsvc.lab.relevance import load_qrels, load_queries
from searchsvc.platform import hardware


def prompts(dataset: Path, count: int, count_tokens, budget: int, max_hits: int) -> list[tuple[str, list]]:
    pages = {d.id: d.text for d in load_jsonl(dataset / "corpus.jsonl")}
    qrels = load_qrels(dataset / "qrels" / "dev.tsv")
    out = []
    for qid, question in list((q, t) for q, t in load_queries(dataset / "queries.jsonl").items() if q in qrels)[:count]:
        gold = [p for p in qrels[qid] if p in pages]
        same_file = [p for p in pages if p.rpartition(" - ")[0] == gold[0].rpartition(" - ")[0] and p not in gold]
        hits = [Hit(p, p, pages[p], "", 1.0, {}) for p in gold + same_file[:max_hits]]
        out.append((question, build_messages(question, pack_context(hits, count_tokens, budget, max_hits))))
    return out


def answer(llm, messages, max_tokens: int) -> tuple[str, int, float]:
    """(text, completion tokens, seconds after the first token)."""
    started, first, text = time.perf_counter(), None, ""
    generation = llm.stream(messages, max_tokens=max_tokens, temperature=0.0)
    for piece in generation:
        first = first or time.perf_counter()
        text += piece
    return text, generation.usage.completion_tokens, time.perf_counter() - (first or started)


def run(settings: Settings, dataset: Path, questions: int, max_tokens: int, draft: int) -> dict:
    results: dict[int, list] = {}
    for tokens in (0, draft):
        llm = build_llm(settings.llm.model_copy(update={"prompt_lookup_tokens": tokens}), settings.gguf_dir)
        asked = prompts(dataset, questions, llm.count_tokens, settings.answer.context_tokens, settings.answer.max_context_hits)
        answer(llm, asked[0][1], 4)  # warm-up
        results[tokens] = [answer(llm, messages, max_tokens) for _, messages in asked]
        lookup = llm.llm.llama.draft_model
        if lookup is not None:
            results["acceptance"] = (lookup.accepted, lookup.drafted)
        llm.close()
    print(f"CPU flags: {hardware.describe()}; model {settings.llm.model}; greedy, at most {max_tokens} tokens; "
          f"prompt lookup drafts up to {draft} tokens (2-gram match)")
    print(f"  {'question':44} {'plain tok/s':>11} {'lookup tok/s':>12} {'speed-up':>8} {'same output':>11}")
    plain_tokens = plain_s = lookup_tokens = lookup_s = 0.0
    same = 0
    for (question, _), a, b in zip(asked, results[0], results[draft]):
        same += a[0] == b[0]
        plain_tokens, plain_s = plain_tokens + a[1], plain_s + a[2]
        lookup_tokens, lookup_s = lookup_tokens + b[1], lookup_s + b[2]
        ra, rb = a[1] / a[2], b[1] / b[2]
        print(f"  {question[:40]:44} {ra:11.1f} {rb:12.1f} {rb / ra:7.2f}x {'yes' if a[0] == b[0] else 'NO':>11}")
    accepted, drafted = results.get("acceptance", (0, 0))
    ratio = (lookup_tokens / lookup_s) / (plain_tokens / plain_s)
    print(f"  all: plain {plain_tokens / plain_s:.1f} tok/s, prompt lookup {lookup_tokens / lookup_s:.1f} tok/s = {ratio:.2f}x; "
          f"identical outputs {same}/{len(asked)}; drafted {drafted}, accepted {accepted} ({accepted / max(drafted, 1):.0%})")
    return {"speedup": ratio, "identical": same, "questions": len(asked), "accepted": accepted, "drafted": drafted}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=Path("../shared/data/autorag-ko"))
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--draft", type=int, default=10)
    args = p.parse_args(argv)
    run(Settings(), args.dataset, args.questions, args.max_tokens, args.draft)


if __name__ == "__main__":
    main()
