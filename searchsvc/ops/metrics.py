"""Prometheus metrics (issue 17), served on their own HTTP port (`metrics_port`; off when unset).

One registry per process (`REGISTRY`), not prometheus_client's global one, so that nothing a library registers
leaks into our scrape. What is measured where:
- per RPC method and status code: calls and latency, by a server interceptor (`RpcMetrics`);
- per pipeline stage (embed, dense, keyword, fuse, rerank, cutoff; retrieve, generate, guard_input,
  guard_output): latency, from each result's own timings (`observe_search`, `observe_answer`);
- ingest: documents, chunks and rejected documents; the WAL's fsync latency (storage/embedded/wal.py);
- at scrape time (`ServerCollector`): chunks, documents and bytes on disk per collection (the first
  `max_collection_labels` names, so a server with thousands of collections cannot explode the series count),
  LLM prompt and completion tokens, answer-cache hits and misses, calls in flight and shed per kind of work.
Names and units follow Prometheus conventions: snake_case, `_total` for counters, base units (seconds, bytes).
"""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from searchsvc.api.servicer import SearchService

REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 1 ms (a cached query embedding) to 2 min (a long answer on 2 cores).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

RPC_CALLS = Counter("searchsvc_rpc_requests_total", "RPCs handled, by method and status code.", ["method", "code"], registry=REGISTRY)
RPC_SECONDS = Histogram("searchsvc_rpc_duration_seconds", "RPC latency, by method.", ["method"], buckets=_BUCKETS, registry=REGISTRY)
STAGE_SECONDS = Histogram("searchsvc_stage_duration_seconds", "Pipeline stage latency (search and answer stages).",
                          ["stage"], buckets=_BUCKETS, registry=REGISTRY)
INGEST_DOCUMENTS = Counter("searchsvc_ingest_documents_total", "Documents indexed (acked).", registry=REGISTRY)
INGEST_CHUNKS = Counter("searchsvc_ingest_chunks_total", "Chunks written by indexed documents.", registry=REGISTRY)
INGEST_REJECTED = Counter("searchsvc_ingest_rejected_documents_total", "Documents rejected by field checks.", registry=REGISTRY)
WAL_FSYNC_SECONDS = Histogram("searchsvc_wal_fsync_duration_seconds", "Write-ahead log fsync latency (embedded backend).",
                              buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=REGISTRY)
GUARDRAIL_HITS = Counter("searchsvc_guardrail_hits_total", "Guardrail rails that fired, by rail and action.",
                         ["rail", "action"], registry=REGISTRY)


def observe_search(timings_ms: dict[str, float]) -> None:
    for stage, ms in timings_ms.items():
        if stage != "total" and ms:
            STAGE_SECONDS.labels(stage).observe(ms / 1000)


def observe_answer(result) -> None:
    observe_search(result.search_timings_ms or {})
    for stage in ("retrieve", "generate", "guard_input", "guard_output"):
        if result.timings_ms.get(stage):
            STAGE_SECONDS.labels(stage).observe(result.timings_ms[stage] / 1000)
    for hit in result.guard.hits:
        GUARDRAIL_HITS.labels(hit.rail, hit.action).inc()


def observe_ingest(report) -> None:
    INGEST_DOCUMENTS.inc(report.indexed)
    INGEST_CHUNKS.inc(report.chunks)
    INGEST_REJECTED.inc(len(report.errors))


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by its final status code (read from the context once the call is done)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        from searchsvc.api.wire import within_each_call

        method = details.method.rsplit("/", 1)[-1]

        @asynccontextmanager
        async def counted(context):
            started = time.perf_counter()

            def done(ctx) -> None:
                code = ctx.code()
                if code is None:
                    code = grpc.StatusCode.CANCELLED if ctx.cancelled() else grpc.StatusCode.OK
                RPC_CALLS.labels(method, code.name).inc()
                RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

            context.add_done_callback(done)
            yield

        return within_each_call(handler, counted)


class ServerCollector:
    """What is read at scrape time from the running server's parts."""

    def __init__(self, service: "SearchService", max_collection_labels: int) -> None:
        self.service = service
        self.max_collection_labels = max_collection_labels

    def collect(self) -> Iterable:
        service = self.service
        in_flight = GaugeMetricFamily("searchsvc_in_flight_requests", "Calls in the server now, by kind of work.", labels=["kind"])
        shed = CounterMetricFamily("searchsvc_shed_requests", "Calls refused at admission (RESOURCE_EXHAUSTED), by kind.", labels=["kind"])
        for gate in (service.search_gate, service.answer_gate, service.ingest_gate):
            in_flight.add_metric([gate.kind], gate.in_flight)
            shed.add_metric([gate.kind], gate.shed)
        yield in_flight
        yield shed
        if service.answers is not None:
            s = service.answers.stats
            tokens = CounterMetricFamily("searchsvc_llm_tokens", "LLM tokens, by kind.", labels=["kind"])
            tokens.add_metric(["prompt"], s.prompt_tokens)
            tokens.add_metric(["completion"], s.completion_tokens)
            yield tokens
            cache = CounterMetricFamily("searchsvc_answer_cache_lookups", "Answer-cache lookups, by result.", labels=["result"])
            cache.add_metric(["hit"], s.cache_hits)
            cache.add_metric(["miss"], s.cache_misses)
            yield cache
        chunks = GaugeMetricFamily("searchsvc_collection_chunks", "Chunks per collection (embedded collections).", labels=["collection"])
        documents = GaugeMetricFamily("searchsvc_collection_documents", "Documents per collection (embedded collections).", labels=["collection"])
        disk = GaugeMetricFamily("searchsvc_collection_disk_bytes", "Bytes on disk per collection (embedded collections).", labels=["collection"])
        for collection in service.catalog.list()[: self.max_collection_labels]:
            if collection.config.backend == "qdrant":
                continue  # counting is a call to the cluster; Qdrant's own /metrics reports its collections
            chunks.add_metric([collection.name], collection.chunk_count)
            documents.add_metric([collection.name], collection.document_count)
            disk.add_metric([collection.name], _disk_bytes(collection.path))
        yield chunks
        yield documents
        yield disk


def _disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass  # replaced by a checkpoint meanwhile
    return total


def serve_metrics(service: "SearchService", host: str, port: int, max_collection_labels: int):
    """Start the /metrics HTTP endpoint; returns its server (shut down with the gRPC server)."""
    from prometheus_client import start_http_server

    collector = ServerCollector(service, max_collection_labels)
    REGISTRY.register(collector)
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    return server, collector
