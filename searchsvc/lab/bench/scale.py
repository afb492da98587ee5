"""`searchsvc bench --scale N`: one collection of N chunks through the API, as issue 15 measures it.

The collection has embedding_model "external" (384-d, no model runs at ingest): each document is one chunk of
10-30 Zipf-distributed pseudo-words (workload.SyntheticCorpus) with a vector from workload.ClusteredVectors. Reported:
BulkIndex docs/s for the first 10k chunks and for each later tenth (a slowdown as the collection grows shows
there) with the CPU the server (and its kernel share: file writes) and this client spent per document, first into
a flat collection, then into the HNSW one (issue 41: its acks do not wait for the graph, so they run at ≥ 0.9 of
the flat rate) with the graph builder's backlog at each step; while that backlog drains, DENSE search p50/p99 and
recall@10 against an exact scan at each tenth of it; server RSS after loading and after a restart, the time from process start to SERVING with the collection loaded, search
p50/p99 for DENSE (by query vector), KEYWORD and HYBRID (text and vector), recall@10 of the dense index against
an exact scan, and the time of a checkpoint after loading and after 1% of the documents changed (each read from
the server's own log line).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from searchsvc.client.channel import bulk_index
from searchsvc.config import Settings
from searchsvc.lab.bench.service import _timed_searches, dense_recall, exact_hits
from searchsvc.lab.bench.workload import ClusteredVectors, SyntheticCorpus
from searchsvc.lab.process import ServerProcess
from searchsvc.platform import hardware
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

NAME = "scale"
DIMENSION = 384
BATCH = 1000  # documents per BulkIndex request: the server's default maximum


def _rss_mb(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(server: ServerProcess) -> tuple[float, float]:
    """(user, kernel) CPU seconds the server process has used, every thread. The kernel's share is mostly
    writing files: at 700k-800k chunks, 0.18 of 1.07 ms per document, the FAISS snapshots."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _checkpoints(server: ServerProcess) -> list[tuple[float, str]]:
    """(seconds, what it wrote) of every checkpoint in the server's log: "a FAISS snapshot" (every vector
    rewritten) or "a dense-log commit, …" (the docstore commit alone)."""
    pattern = r"checkpoint at seq \d+ in ([\d.]+) s \((.*)\)"
    return [(float(m.group(1)), m.group(2)) for line in server.output if (m := re.search(pattern, line))]


def _describe_checkpoints(server: ServerProcess) -> str:
    found = _checkpoints(server)
    full = [s for s, kind in found if kind == "a FAISS snapshot"]
    delta = [s for s, kind in found if kind.startswith("a dense-log commit")]
    if not found:
        return "no checkpoint logged"
    last_s, last_kind = found[-1]
    return (f"last {last_s:.2f} s ({last_kind}); {len(delta)} committing the dense log"
            + (f" (max {max(delta):.2f} s)" if delta else "") + f", {len(full)} writing a FAISS snapshot"
            + (f" ({', '.join(f'{s:.1f}' for s in full)} s)" if full else ""))


def _load(server: ServerProcess, corpus: SyntheticCorpus, vectors: ClusteredVectors, start: int, count: int) -> tuple[float, str]:
    """(docs/s, CPU per document of the server and of this client while loading `count` documents, their
    vectors). Both share this machine's cores: at N cores, R docs/s leaves N / R seconds of CPU per document for
    the two."""
    docs = corpus.docs(count, start=start, min_words=10, max_words=30)
    sampled = vectors.sample(count)
    for doc, vector in zip(docs, sampled):
        doc.vector = vector
    server_cpu, client_cpu, started = _cpu_s(server), time.process_time(), time.perf_counter()
    bulk_index(lambda: grpc.insecure_channel(server.target), NAME, docs, batch_size=BATCH)
    wall = time.perf_counter() - started
    (user, kernel), (user0, kernel0) = _cpu_s(server), server_cpu

    def per_doc(seconds: float) -> str:
        return f"{seconds / count * 1e3:.2f} ms"

    cpu = (f"CPU per doc: server {per_doc(user + kernel - user0 - kernel0)} ({per_doc(kernel - kernel0)} in the kernel), "
           f"client {per_doc(time.process_time() - client_cpu)}, of {per_doc((os.cpu_count() or 1) * wall)} on {os.cpu_count()} cores")
    return count / wall, cpu


def _searches(stub, corpus: SyntheticCorpus, vectors: ClusteredVectors, n: int) -> None:
    texts = [" ".join(corpus.words(corpus.rng.randint(2, 5))) for _ in range(n)]
    qv = vectors.sample(n)
    runs = {
        "DENSE (vector)": [pb.SearchRequest(collection=NAME, mode=pb.SEARCH_MODE_DENSE, query_vector=v.tolist()) for v in qv],
        "KEYWORD": [pb.SearchRequest(collection=NAME, query=t, mode=pb.SEARCH_MODE_KEYWORD) for t in texts],
        "HYBRID": [pb.SearchRequest(collection=NAME, query=t, query_vector=v.tolist()) for t, v in zip(texts, qv)],
    }
    for label, requests in runs.items():
        times, responses = _timed_searches(stub, requests)
        server = [r.timings.total_ms for r in responses]
        print(f"  {label:<15} p50 {np.percentile(times, 50):6.1f} ms  p99 {np.percentile(times, 99):6.1f} ms"
              f"  (server p50 {np.percentile(server, 50):.1f} ms)", flush=True)
        if label.startswith("DENSE"):
            exact = exact_hits(stub, requests)  # once: the sweep below asks the same queries
            print(f"  recall@10 of the dense index against an exact scan of the stored (for sq8: quantized) vectors: "
                  f"{dense_recall(responses, exact):.3f}", flush=True)
            for ef in (64, 256, 512):  # the same queries with a narrower or wider beam (DenseSearchOptions.ef_search)
                wider = [pb.SearchRequest(collection=NAME, mode=pb.SEARCH_MODE_DENSE, query_vector=v.tolist(),
                                          dense=pb.DenseSearchOptions(ef_search=ef)) for v in qv]
                times, found = _timed_searches(stub, wider)
                print(f"    ef_search {ef:>3}: recall@10 {dense_recall(found, exact):.3f}, p50 {np.percentile(times, 50):.1f} ms"
                      f"  p99 {np.percentile(times, 99):.1f} ms", flush=True)


def _marks(total: int) -> list[int]:
    first = min(10_000, total)
    return [first] + [total * i // 10 for i in range(1, 11) if total * i // 10 > first]


def _load_flat(index_dir: Path, env: dict, total: int) -> list[float]:
    """docs/s per step of the same load into a flat collection, in its own server: the rate an HNSW collection's
    acks are held to (issue 41: ≥ 0.9 of it at every tenth)."""
    corpus, vectors = SyntheticCorpus(), ClusteredVectors(DIMENSION)
    rates, loaded = [], 0
    with ServerProcess(index_dir, env=env) as server:
        stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(server.target))
        config = pb.CollectionConfig(embedding_model="external", dimension=DIMENSION, dense_index=pb.DenseIndexConfig(kind="flat"))
        stub.CreateCollection(pb.CreateCollectionRequest(name=NAME, config=config))
        for mark in _marks(total):
            rate, cpu = _load(server, corpus, vectors, loaded, mark - loaded)
            print(f"  {mark:>9,} chunks (flat): {rate:7.0f} docs/s for the last {mark - loaded:,}  ({cpu})", flush=True)
            rates.append(rate)
            loaded = mark
    return rates


def _drain(stub, server: ServerProcess, vectors: ClusteredVectors, probes: int = 200, recall_queries: int = 50) -> None:
    """While the graph builder drains the backlog: DENSE-by-vector search p50/p99 and recall@10 against an exact
    scan, at the start, at each tenth of the backlog drained (or after 30 s without one), and once it is empty."""
    backlog = stub.GetCollection(pb.GetCollectionRequest(name=NAME)).dense_backlog
    started, probed = time.perf_counter(), -1e9
    left = [backlog * share // 10 for share in range(9, -1, -1)]  # 90%, 80%, ... 0% of it left
    print(f"draining a backlog of {backlog:,} vectors (searches scan it exactly meanwhile):", flush=True)
    while True:
        elapsed = time.perf_counter() - started
        passed = [mark for mark in left if backlog <= mark]
        if passed or elapsed - probed >= 30:  # the first pass too: probed starts far back
            left = [mark for mark in left if mark not in passed]
            requests = [pb.SearchRequest(collection=NAME, mode=pb.SEARCH_MODE_DENSE, query_vector=v.tolist())
                        for v in vectors.sample(probes)]
            times, responses = _timed_searches(stub, requests)
            recall = dense_recall(responses[:recall_queries], exact_hits(stub, requests[:recall_queries]))
            print(f"  {elapsed:6.0f} s: backlog {backlog:>9,}  DENSE p50 {np.percentile(times, 50):5.1f} ms  "
                  f"p99 {np.percentile(times, 99):5.1f} ms  recall@10 {recall:.3f}  server RSS {_rss_mb(server):,.0f} MB", flush=True)
            probed = time.perf_counter() - started
            if backlog == 0:
                return
        time.sleep(1)
        backlog = stub.GetCollection(pb.GetCollectionRequest(name=NAME)).dense_backlog


def run_scale(settings: Settings, total: int, queries: int, quantization: str = "none") -> None:
    corpus, vectors = SyntheticCorpus(), ClusteredVectors(DIMENSION)
    # The checkpoint times come from the server's log; no answer LLM, so RSS is the collection's and the encoders'.
    env = {"SEARCHSVC_LOG_LEVEL": "INFO", "SEARCHSVC_LLM__BACKEND": "none"}
    print(hardware.describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"loading {total:,} chunks of {DIMENSION}-d external vectors, {BATCH} per request, into a flat collection, "
              f"then the same documents into an HNSW one", flush=True)
        flat = _load_flat(Path(tmp) / "flat", env, total)
        index_dir = Path(tmp) / "hnsw" if settings.index_dir == Path("indexes") else settings.index_dir
        with ServerProcess(index_dir, env=env) as server:
            stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(server.target))
            config = pb.CollectionConfig(embedding_model="external", dimension=DIMENSION,
                                         dense_index=pb.DenseIndexConfig(kind="hnsw", quantization=quantization))
            stub.CreateCollection(pb.CreateCollectionRequest(name=NAME, config=config))
        with ServerProcess(index_dir, env=env) as server:
            stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(server.target))
            baseline = _rss_mb(server)
            print(f"server RSS with the empty collection, after a restart: {baseline:,.0f} MB")
            loaded = 0
            for mark, flat_rate in zip(_marks(total), flat):
                rate, cpu = _load(server, corpus, vectors, loaded, mark - loaded)
                info = stub.GetCollection(pb.GetCollectionRequest(name=NAME))
                print(f"  {mark:>9,} chunks (hnsw): {rate:7.0f} docs/s for the last {mark - loaded:,}, {rate / flat_rate:.2f} of "
                      f"flat's; backlog {info.dense_backlog:,}  (server RSS {_rss_mb(server):,.0f} MB; {cpu})", flush=True)
                loaded = mark
            _drain(stub, server, vectors)
            time.sleep(3)  # the keyword leg's last refresh
            print(f"after loading and draining: server RSS {_rss_mb(server):,.0f} MB, peak {server.peak_rss_mb():,.0f} MB")
            _searches(stub, corpus, vectors, queries)
            stopping = time.perf_counter()
            server.stop()
            print(f"graceful stop: {time.perf_counter() - stopping:.1f} s; checkpoints: {_describe_checkpoints(server)}")

        started = time.perf_counter()
        with ServerProcess(index_dir, env=env) as server:
            rss = _rss_mb(server)
            print(f"restart: SERVING with the collection loaded after {time.perf_counter() - started:.1f} s; "
                  f"server RSS {rss:,.0f} MB, {(rss - baseline) * 2**20 / total:,.0f} bytes per chunk above the empty server")
            for line in server.output:
                if f"collection {NAME} loaded" in line:
                    print("  server log:", line.strip())
        # 1% of the documents replaced, every BulkIndex request (1,000 documents) checkpointed as it is acked:
        # the sum of those checkpoints is what committing the 1% cost; the stop then writes a FAISS snapshot.
        with ServerProcess(index_dir, env={**env, "SEARCHSVC_CHECKPOINT_WAL_BYTES": "1"}) as server:
            changed = max(total // 100, 1)
            corpus.rng.seed(99)
            _load(server, corpus, vectors, 0, changed)  # the same ids again: replacements
            during = _checkpoints(server)
            server.stop()
            final = _checkpoints(server)[len(during):]
            print(f"checkpoints while {changed:,} documents (1%) were replaced: {len(during)} taking {sum(s for s, _ in during):.2f} s"
                  f" in all ({', '.join(f'{s:.2f}' for s, _ in during)} s; last: {during[-1][1] if during else '-'})")
            print("then stopping: " + ", ".join(f"{s:.2f} s ({kind})" for s, kind in final))
