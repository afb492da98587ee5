"""Prometheus metrics (issue 17), served on their own HTTP port (`metrics_port`; off when unset).

One registry per process (`REGISTRY`), not prometheus_client's global one, so that nothing a library registers
leaks into our scrape. What is measured where:
- per RPC method and status code: calls and latency, by a server interceptor (api/interceptors.py: `RpcMetrics`);
- per pipeline stage (embed, dense, keyword, fuse, rerank, cutoff; retrieve, generate, guard_input,
  guard_output): latency, from each result's own timings (`observe_search`, `observe_answer`);
- ingest: documents, chunks and rejected documents; the WAL's fsync latency (storage/embedded/wal.py);
- at scrape time (api/metrics_endpoint.py: `ServerCollector`): chunks, documents and bytes on disk per collection (the first
  `max_collection_labels` names, so a server with thousands of collections cannot explode the series count),
  LLM prompt and completion tokens, answer-cache hits and misses, calls in flight and shed per kind of work.
Names and units follow Prometheus conventions: snake_case, `_total` for counters, base units (seconds, bytes).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
