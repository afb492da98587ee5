"""The similar-question answer cache measured: how often it answers a paraphrase, and whether it ever answers the
wrong question (issue 38).

    python -m searchsvc.lab.bench.answer_cache [DATASET ...] [--min-cosine 0.95]

For each BEIR dataset (default ../shared/data/autorag-ko and ../shared/data/scifact), an in-process server with
`answer.semantic_cache` on and extractive answers (the cache treats them as generated ones; no LLM time) indexes
the corpus and answers, in order:

1. every judged dev question once. They are all different questions, so any similar-question hit here is a false
   hit: another question's answer;
2. for AutoRAG-ko, a paraphrase of each (paraphrases_ko.py): a hit is true when it returns the answer its own
   question got in step 1;
3. a contrast of each: a different question in mostly the same words (another year, the opposite extreme, another
   party). Any hit is false.

It prints the hits of each step and, for paraphrases and contrasts, the cosine of each to its question (the
collection's own query embedder), so the margin to the threshold shows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import grpc
import numpy as np

from searchsvc.api.server import BackgroundServer, private_server
from searchsvc.client.channel import bulk_index
from searchsvc.config import Settings
from searchsvc.ingest.loaders import load_jsonl
from searchsvc.lab.bench.paraphrases_ko import PARAPHRASES_KO
from searchsvc.lab.relevance import load_qrels, load_queries
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


def _ask(stub, collection: str, question: str) -> pb.AnswerResponse:
    return stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection=collection, query=question)), timeout=120)


def run(dataset: Path, min_cosine: float, limit: int | None = None) -> dict:
    qrels = load_qrels(dataset / "qrels" / "dev.tsv")
    questions = dict([(q, t) for q, t in load_queries(dataset / "queries.jsonl").items() if q in qrels][:limit])
    variants = PARAPHRASES_KO if dataset.name == "autorag-ko" else {}
    settings = Settings()
    with tempfile.TemporaryDirectory() as scratch:
        server_settings = private_server(settings).model_copy(update={
            "index_dir": Path(scratch), "port": 0, "llm": settings.llm.model_copy(update={"backend": "none"}),
            "answer": settings.answer.model_copy(update={"semantic_cache": True, "semantic_cache_min_cosine": min_cosine}),
        })
        with BackgroundServer(server_settings) as server, grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="bench"))
            bulk_index(lambda: grpc.insecure_channel(server.target), "bench", load_jsonl(dataset / "corpus.jsonl"), refresh=True)
            first = {q: _ask(stub, "bench", t) for q, t in questions.items()}
            false_first = [(q, r.usage.cached_similarity) for q, r in first.items() if r.usage.cached]
            print(f"\n{dataset.name}: {len(questions)} dev questions, similar-question cache at cosine >= {min_cosine}")
            print(f"  distinct questions: {len(false_first)} false hits {false_first or ''}")
            out = {"questions": len(questions), "false_hits_distinct": len(false_first)}
            if variants:
                collection = server.components["service"].catalog.get("bench")

                def cosine(a: str, b: str) -> float:
                    va, vb = (np.asarray(collection.embed_query(x), np.float32) for x in (a, b))
                    return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))

                para = {q: _ask(stub, "bench", variants[q][0]) for q in questions if q in variants}
                true_hits = [q for q, r in para.items() if r.usage.cached and r.answer == first[q].answer]
                wrong = [q for q, r in para.items() if r.usage.cached and r.answer != first[q].answer]
                contrast = {q: _ask(stub, "bench", variants[q][1]) for q in questions if q in variants}
                false_contrast = [q for q, r in contrast.items() if r.usage.cached]
                cos_para = [cosine(questions[q], variants[q][0]) for q in para]
                cos_contrast = [cosine(questions[q], variants[q][1]) for q in contrast]
                above = sum(c >= min_cosine for c in cos_para), sum(c >= min_cosine for c in cos_contrast)
                print(f"  paraphrases: {len(true_hits)}/{len(para)} hit their own question's answer, {len(wrong)} another's;"
                      f" cosine to the question min {min(cos_para):.3f} median {np.median(cos_para):.3f} max {max(cos_para):.3f};"
                      f" {above[0]} at or above {min_cosine}")
                print(f"  contrasts:   {len(false_contrast)}/{len(contrast)} false hits;"
                      f" cosine to the question min {min(cos_contrast):.3f} median {np.median(cos_contrast):.3f} max {max(cos_contrast):.3f};"
                      f" {above[1]} at or above {min_cosine} (question similarity alone would answer them)")
                out.update(paraphrase_hits=len(true_hits), paraphrase_wrong=len(wrong), paraphrases=len(para),
                           false_hits_contrast=len(false_contrast), cosine_paraphrase=cos_para, cosine_contrast=cos_contrast)
            stats = stub.GetAnswerStats(pb.GetAnswerStatsRequest())
            print(f"  server: {stats.semantic_cache_hits} similar-question hits, {stats.semantic_cache_misses} misses")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="*", type=Path, default=[Path("../shared/data/autorag-ko"), Path("../shared/data/scifact")])
    p.add_argument("--min-cosine", type=float, default=0.95)
    p.add_argument("--questions", type=int, default=None, help="the first N dev questions of each dataset")
    args = p.parse_args(argv)
    for dataset in args.datasets:
        run(dataset, args.min_cosine, args.questions)


if __name__ == "__main__":
    main()
