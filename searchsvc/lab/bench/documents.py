"""`searchsvc bench --documents [DATASET]`: files in, measured against the same pages sent as text (issue 37).

DATASET is a BEIR folder whose corpus ids are `<domain> - <file> - <page>`, as AutoRAG-ko's are (default
../shared/data/autorag-ko: 720 Korean pages of 32 PDFs). Each source file is rebuilt from its pages as a PDF, a
DOCX and an HWPX, one page per corpus page (lab/document_files.py; a page missing from the corpus stays an empty
page, so page numbers hold). Then, in one run on this machine:

- extraction alone, per format: pages/s and CPU per page (searchsvc.ingest.extract.extract in this process);
- through the service (an in-process server, the server's default language): each format's files into a
  collection of their own, and the corpus pages as text into another; indexing wall time, and the share of it
  that extraction's CPU accounts for (the rest is chunking, embedding and the write path);
- page-level HYBRID nDCG@10 per collection on the dataset's judged queries: a hit from a file counts as the page
  it came from (`<file id> - <page>`), each page once, in rank order.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import grpc

from searchsvc.api.server import BackgroundServer, private_server
from searchsvc.client.channel import bulk_index
from searchsvc.config import Settings
from searchsvc.domain.types import Document
from searchsvc.ingest.extract import extract
from searchsvc.ingest.loaders import load_jsonl
from searchsvc.lab import document_files
from searchsvc.lab.relevance import load_qrels, load_queries, ndcg_at_k
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

FORMATS = ("pdf", "docx", "hwpx")


def source_files(dataset: Path) -> dict[str, list[str]]:
    """`<domain> - <file>` -> the texts of its pages 1..N (a page the corpus lacks is "")."""
    pages: dict[str, dict[int, str]] = defaultdict(dict)
    for doc in load_jsonl(dataset / "corpus.jsonl"):
        file_id, _, page = doc.id.rpartition(" - ")
        if not file_id or not page.isdigit():
            raise ValueError(f"{doc.id!r}: corpus ids must be '<domain> - <file> - <page>'")
        pages[file_id][int(page)] = doc.text
    return {f: [by_page.get(n, "") for n in range(1, max(by_page) + 1)] for f, by_page in sorted(pages.items())}


def build(kind: str, pages: list[str]) -> bytes:
    if kind == "pdf":
        return document_files.pdf(pages, title="")
    if kind == "docx":
        return document_files.docx([text.split("\n") if text else [""] for text in pages])
    return document_files.hwpx([text.split("\n") if text else [""] for text in pages])


def file_name(file_id: str, kind: str) -> str:
    return f"{Path(file_id.split(' - ', 1)[-1]).stem}.{kind}"


def page_ids(response: pb.SearchResponse) -> list[str]:
    """The pages of the hits, in rank order, each once: a chunk of a file is `<file id> - <page>`."""
    seen: list[str] = []
    for hit in response.hits:
        page = hit.typed_metadata.get("page")
        pid = f"{hit.document_id} - {page.int_value}" if page is not None else hit.document_id
        if pid not in seen:
            seen.append(pid)
    return seen


def run_documents(settings: Settings, dataset: Path, split: str = "dev", queries_limit: int | None = None) -> dict:
    files = source_files(dataset)
    n_pages = sum(len(p) for p in files.values())
    text_pages = sum(1 for p in files.values() for t in p if t.strip())
    print(f"{dataset.name}: {len(files)} files, {n_pages} pages ({text_pages} with text)")
    built = {kind: {f: build(kind, pages) for f, pages in files.items()} for kind in FORMATS}

    print("\nextraction alone (this process, one core):")
    print(f"  {'format':6} {'pages/s':>8} {'CPU ms/page':>12} {'MB':>6}")
    extraction_cpu = {}
    for kind in FORMATS:
        cpu, wall = time.process_time(), time.perf_counter()
        for f, data in built[kind].items():
            extract(data, file_name(f, kind))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        extraction_cpu[kind] = cpu
        size = sum(map(len, built[kind].values())) / 2**20
        print(f"  {kind:6} {n_pages / wall:8.0f} {cpu / n_pages * 1000:12.2f} {size:6.1f}")

    qrels = load_qrels(dataset / "qrels" / f"{split}.tsv")
    queries = [(q, t) for q, t in load_queries(dataset / "queries.jsonl").items() if q in qrels][:queries_limit]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        no_llm = settings.llm.model_copy(update={"backend": "none"})  # nothing here answers: no 1.1 GB model loaded
        server_settings = private_server(settings).model_copy(update={"index_dir": Path(scratch), "port": 0, "llm": no_llm})
        with BackgroundServer(server_settings) as server, grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            loads = {"text": [Document(f"{f} - {n}", t) for f, pages in files.items() for n, t in enumerate(pages, 1) if t.strip()]}
            for kind in FORMATS:
                loads[kind] = [Document(f, "", content=data, filename=file_name(f, kind)) for f, data in built[kind].items()]
            print(f"\nthrough the service ({len(queries)} {split} queries, HYBRID, page-level nDCG@10):")
            print(f"  {'as':6} {'index s':>8} {'pages/s':>8} {'extract share':>15} {'nDCG@10':>8}")
            for kind, docs in loads.items():
                name = f"bench-{kind}"
                stub.CreateCollection(pb.CreateCollectionRequest(name=name))
                started = time.perf_counter()
                acks = bulk_index(lambda: grpc.insecure_channel(server.target), name, docs, batch_size=8, refresh=True)
                took = time.perf_counter() - started
                failed = [e for a in acks for e in a.errors]
                if failed:
                    raise RuntimeError(f"{kind}: {len(failed)} documents rejected, e.g. {failed[0].field}: {failed[0].message}")
                scores = []
                for qid, text in queries:
                    response = stub.Search(pb.SearchRequest(collection=name, query=text, top_k=30), timeout=60)
                    scores.append(ndcg_at_k(page_ids(response)[:10], qrels[qid], 10))
                ndcg = sum(scores) / len(scores) if scores else 0.0
                share = f"{extraction_cpu[kind] / took:14.0%}" if kind in extraction_cpu else f"{'-':>15}"
                print(f"  {kind:6} {took:8.1f} {text_pages / took:8.1f} {share} {ndcg:8.4f}")
                results[kind] = {"index_s": took, "ndcg@10": ndcg, "per_query": scores}
    base = results["text"]["ndcg@10"]
    print("\nnDCG@10 against the pages sent as text: " + ", ".join(f"{k} {results[k]['ndcg@10'] - base:+.4f}" for k in FORMATS))
    return results
