"""The /metrics HTTP endpoint (`metrics_port`) and what it reads from the running server at scrape time: chunks,
documents and bytes on disk per collection (the first `max_collection_labels` names, so thousands of collections
cannot explode the series count), LLM tokens, answer-cache lookups, calls in flight and shed per kind of work, the process's resident memory and
what each loaded model added to it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from searchsvc.ops import metrics
from searchsvc.retrieve import analyzers
from searchsvc.retrieve.models import resident_bytes

if TYPE_CHECKING:
    from searchsvc.api.servicer import SearchService


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
            cache = CounterMetricFamily("searchsvc_answer_cache_lookups", "Answer-cache lookups, by kind and result.",
                                        labels=["kind", "result"])
            cache.add_metric(["exact", "hit"], s.cache_hits)
            cache.add_metric(["exact", "miss"], s.cache_misses)
            cache.add_metric(["similar", "hit"], s.semantic_cache_hits)
            cache.add_metric(["similar", "miss"], s.semantic_cache_misses)
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
        models = GaugeMetricFamily(
            "searchsvc_model_resident_bytes",
            "Loaded embedders, rerankers and kiwi: how much the server's resident memory grew while each loaded.", labels=["model"])
        for name, size in sorted(service.catalog.models.resident_bytes.items()):
            models.add_metric([name], size)
        if analyzers.KIWI_RESIDENT_BYTES:  # the Korean analyzer's model, loaded once per process
            models.add_metric(["kiwi"], analyzers.KIWI_RESIDENT_BYTES)
        yield models
        resident = GaugeMetricFamily("searchsvc_resident_bytes", "The server process's resident memory (RSS).")
        resident.add_metric([], resident_bytes())
        yield resident


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
    metrics.REGISTRY.register(collector)
    server, _ = start_http_server(port, addr=host, registry=metrics.REGISTRY)
    return server, collector
