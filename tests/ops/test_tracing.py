"""OpenTelemetry traces (issue 17): a Search made with a caller's `traceparent` yields one trace, with the RPC's
SERVER span as the caller's child and one span per pipeline stage under it (in-memory exporter, real server)."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from conftest import CORPUS, index
from searchsvc.ops import tracing
from searchsvc.v1 import searchsvc_pb2 as pb

TRACE_ID, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def finished(exporter: InMemorySpanExporter, rpc_name: str):
    """The spans, once the RPC's own has ended (it ends in the call's done callback, just after the reply)."""
    deadline = time.monotonic() + 5
    while not any(s.name.endswith(rpc_name) for s in exporter.get_finished_spans()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return exporter.get_finished_spans()


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def test_a_search_is_one_trace_continuing_the_callers_with_a_span_per_stage(stub, collection, spans):
    index(stub, collection, CORPUS)
    finished(spans, "/BulkIndex")
    spans.clear()
    metadata = [("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")]
    stub.Search(pb.SearchRequest(collection=collection, query="capital of Korea", top_k=3), metadata=metadata)
    finished_spans = finished(spans, "/Search")
    assert {format(s.context.trace_id, "032x") for s in finished_spans} == {TRACE_ID}  # one trace, the caller's
    (rpc,) = [s for s in finished_spans if s.kind == SpanKind.SERVER]
    assert rpc.name == "searchsvc.v1.SearchService/Search" and format(rpc.parent.span_id, "016x") == CALLER_SPAN
    assert rpc.attributes["rpc.system"] == "grpc" and rpc.attributes["rpc.grpc.status_code"] == 0
    assert rpc.attributes["searchsvc.collection"] == collection and rpc.attributes["searchsvc.hits"] == 3
    stages = {s.name for s in finished_spans if s.parent is not None and s.parent.span_id == rpc.context.span_id}
    assert {"search.embed", "search.dense", "search.keyword", "search.fuse"} <= stages


def test_without_a_provider_nothing_is_recorded(stub, collection):
    assert tracing.tracer().start_span("x").is_recording() is False
    stub.Search(pb.SearchRequest(collection=collection, query="anything"))  # and the server works as before


def test_a_failed_call_is_an_error_span_and_an_answer_traces_its_guardrails(stub, collection, spans):
    import grpc

    with pytest.raises(grpc.RpcError):
        stub.Search(pb.SearchRequest(collection="no-such-collection", query="x"))
    (failed,) = finished(spans, "/Search")
    assert failed.status.status_code.name == "ERROR" and failed.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND
    index(stub, collection, CORPUS)
    finished(spans, "/BulkIndex")
    spans.clear()
    stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection=collection, query="What do cats hunt?"), extractive=True),
                timeout=120)
    names = {s.name for s in finished(spans, "/Answer")}
    assert "searchsvc.v1.SearchService/Answer" in names and "search.dense" in names
    assert len({s.context.trace_id for s in spans.get_finished_spans()}) == 1


def test_the_default_sampler_follows_the_callers_sampled_traces_and_samples_the_rest(stub, collection):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.default_sampler(0.0))  # no root trace of our own: only the callers'
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        stub.Search(pb.SearchRequest(collection=collection, query="not traced"))
        stub.Search(pb.SearchRequest(collection=collection, query="traced"), metadata=[("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")])
        spans = finished(exporter, "/Search")
        time.sleep(0.2)  # had the first call been recorded, its span would have ended by now
        assert {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()} == {TRACE_ID} and spans
    finally:
        tracing.use_provider(None)
