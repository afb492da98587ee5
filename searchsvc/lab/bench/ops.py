"""Operations benchmarks (issue 17), each measured in one run on this machine:

- `searchsvc bench --soak MINUTES`: a mixed workload (searches, re-indexing, extractive answers) at ~80% of the
  capacity measured just before, on a real server process; per minute: server RSS, search p50/p99, calls done,
  errors by status code. Leaks and drift show as a rising RSS or p99; the last line is the RSS drift over the
  last 5 minutes.
- `searchsvc bench --observability CHUNKS`: Search p50 with metrics and tracing on vs off, on two copies of a
  collection of CHUNKS external-vector chunks served side by side; each query goes to each configuration, in
  random order: off; metrics and tracing at the default sampling; metrics and every trace recorded.
"""

from __future__ import annotations

import queue
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from searchsvc.client.channel import bulk_index, to_pb
from searchsvc.config import Settings
from searchsvc.lab.bench.workload import ClusteredVectors, SyntheticCorpus, free_port
from searchsvc.lab.process import ServerProcess
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

SOAK_DOCS = 2000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Workload:
    """One call of the mix: 88% searches (all modes), 10% re-indexing 4 existing documents, 2% extractive answers."""

    def __init__(self, stub, corpus: SyntheticCorpus, seed: int = 7) -> None:
        self.stub, self.corpus = stub, corpus
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def __call__(self) -> tuple[str, float, str]:
        with self.lock:
            roll = self.rng.random()
            words = " ".join(self.corpus.words(self.rng.randint(1, 4)))
            ids = [self.rng.randrange(SOAK_DOCS) for _ in range(4)]
            mode = self.rng.choice([pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD])
        started = time.perf_counter()
        kind = "search"
        try:
            if roll < 0.88:
                self.stub.Search(pb.SearchRequest(collection="soak", query=words, mode=mode), timeout=30)
            elif roll < 0.98:
                kind = "index"
                docs = [to_pb(d) for i in ids for d in self.corpus.docs(1, start=i)]
                list(self.stub.BulkIndex(iter([pb.BulkIndexRequest(collection="soak", documents=docs)]), timeout=60))
            else:
                kind = "answer"
                self.stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection="soak", query=words), extractive=True), timeout=60)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        return kind, (time.perf_counter() - started) * 1000, code


def run_soak(settings: Settings, minutes: int) -> None:
    env = {"SEARCHSVC_LLM__BACKEND": "none", "SEARCHSVC_LOG_LEVEL": "WARNING"}
    corpus = SyntheticCorpus()
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) if settings.index_dir == Path("indexes") else settings.index_dir
        with ServerProcess(index_dir, env=env) as server, grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="soak", config=pb.CollectionConfig(language="en")))
            bulk_index(lambda: grpc.insecure_channel(server.target), "soak", corpus.docs(SOAK_DOCS), batch_size=128)
            work = _Workload(stub, corpus)
            # Capacity: the mix run closed-loop by 4 clients for 20 s.
            done = 0
            deadline = time.monotonic() + 20

            def closed_loop(_):
                nonlocal done
                while time.monotonic() < deadline:
                    work()
                    done += 1
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(closed_loop, range(4)))
            capacity = done / 20
            rate = 0.8 * capacity
            print(f"capacity: {capacity:.1f} calls/s (the mix, 4 clients closed-loop); soak at {rate:.1f} calls/s for {minutes} min")
            print(f"{'min':>3} {'RSS MB':>8} {'search p50':>10} {'p99 ms':>7} {'calls':>6}  errors")
            rss_per_minute: list[float] = []
            finished_minutes: queue.Queue = queue.Queue()

            def report() -> None:  # waits for each minute's calls apart from the submitter, which keeps its schedule
                while (item := finished_minutes.get()) is not None:
                    minute, futures, rss = item
                    results = [f.result() for f in futures]
                    searches = [ms for kind, ms, code in results if kind == "search" and code == "OK"]
                    errors = Counter(code for _, _, code in results if code != "OK")
                    p50, p99 = (np.percentile(searches, 50), np.percentile(searches, 99)) if searches else (0, 0)
                    print(f"{minute:>3} {rss:>8,.0f} {p50:>10.1f} {p99:>7.1f} {len(results):>6}  {dict(errors) or '-'}", flush=True)

            reporter = threading.Thread(target=report)
            reporter.start()
            with ThreadPoolExecutor(64) as pool:
                next_at = time.monotonic()
                for minute in range(1, minutes + 1):
                    futures = []
                    end = next_at + 60
                    while next_at < end:  # open loop: calls start on schedule, whatever the server does
                        time.sleep(max(0.0, next_at - time.monotonic()))
                        futures.append(pool.submit(work))
                        next_at += 1 / rate
                    rss = _rss_mb(server.proc.pid)
                    rss_per_minute.append(rss)
                    finished_minutes.put((minute, futures, rss))
                finished_minutes.put(None)
                reporter.join()
            if len(rss_per_minute) > 5:
                window = rss_per_minute[-6:]
                print(f"RSS drift over the last 5 minutes: {100 * (window[-1] - window[0]) / window[0]:+.1f}% "
                      f"({window[0]:,.0f} -> {window[-1]:,.0f} MB)")


def run_observability_overhead(settings: Settings, chunks: int, queries: int, rounds: int = 3) -> None:
    """Search p50 with metrics (a scraped port) and tracing (spans recorded and batched to an exporter) on vs off."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from searchsvc.api.server import BackgroundServer, private_server
    from searchsvc.ops import tracing

    dimension = 384
    corpus, vectors = SyntheticCorpus(), ClusteredVectors(dimension)
    with tempfile.TemporaryDirectory() as tmp:
        base = private_server(settings).model_copy(update={"index_dir": Path(tmp), "port": 0,
                                                           "llm": settings.llm.model_copy(update={"backend": "none"})})
        with BackgroundServer(base) as server, grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="o", config=pb.CollectionConfig(
                embedding_model="external", dimension=dimension, dense_index=pb.DenseIndexConfig(kind="hnsw"))))
            for start in range(0, chunks, 1000):
                docs = corpus.docs(min(1000, chunks - start), start=start)
                vs = vectors.sample(len(docs))
                request = pb.BulkIndexRequest(collection="o", documents=[
                    pb.Document(id=d.id, text=d.text, vector=v.tolist()) for d, v in zip(docs, vs)])
                list(stub.BulkIndex(iter([request])))
        rng = random.Random(3)
        requests = [pb.SearchRequest(collection="o", query=" ".join(corpus.words(3)), query_vector=vectors.sample(1)[0].tolist())
                    for _ in range(queries)]
        # Two servers on two copies of the collection, one plain and one with metrics (scraped) and tracing (spans
        # batched to an exporter); each query goes to both, in random order, so drift and order cancel out. The
        # traced server runs each query twice: with the default sampling of traces that start here, and with all.
        shutil.copytree(Path(tmp) / "o", Path(tmp) / "copy" / "o")
        exporter = InMemorySpanExporter()
        providers = {"on": TracerProvider(sampler=tracing.default_sampler(settings.trace_sample_ratio)),
                     "on, every trace": TracerProvider()}
        for provider in providers.values():
            provider.add_span_processor(BatchSpanProcessor(exporter))
        port = free_port()
        on_settings = base.model_copy(update={"index_dir": Path(tmp) / "copy", "metrics_port": port})
        with BackgroundServer(base) as plain, BackgroundServer(on_settings) as observed, \
                grpc.insecure_channel(plain.target) as plain_channel, grpc.insecure_channel(observed.target) as observed_channel:
            stubs = {"off": pb_grpc.SearchServiceStub(plain_channel)}
            stubs |= {which: pb_grpc.SearchServiceStub(observed_channel) for which in providers}

            def timed(which: str, request) -> float:
                tracing.use_provider(providers.get(which))
                started = time.perf_counter()
                stubs[which].Search(request)
                return (time.perf_counter() - started) * 1000

            for r in requests[:50]:  # warm both
                for which in stubs:
                    timed(which, r)
            times: dict[str, list[float]] = {which: [] for which in stubs}
            for _ in range(rounds):
                for r in requests:
                    order = list(stubs)
                    rng.shuffle(order)
                    for which in order:
                        times[which].append(timed(which, r))
            import urllib.request

            scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            tracing.use_provider(None)
            for provider in providers.values():
                provider.force_flush()
        off = np.percentile(times["off"], 50)
        print(f"Search at {chunks:,} chunks, HYBRID, {len(times['off'])} queries to each configuration (each query to all, "
              f"in random order); {len(exporter.get_finished_spans()):,} spans exported, {len(scraped):,} bytes scraped; "
              f"sampling: {settings.trace_sample_ratio:.0%} of root traces")
        for which, t in times.items():
            p50 = np.percentile(t, 50)
            paired = np.median(np.subtract(t, times["off"]))
            print(f"  {which:>16}: p50 {p50:.2f} ms, p99 {np.percentile(t, 99):.2f} ms"
                  + (f"; overhead on p50 {100 * (p50 - off) / off:+.1f}% (median paired difference {paired * 1000:+.0f} us)"
                     if which != "off" else ""))

