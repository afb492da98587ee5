"""Overload and deadlines (issue 17) on a real in-process server with small admission limits: calls past the
bound are refused at once with RESOURCE_EXHAUSTED and a retry hint, the rest succeed, the server stays healthy;
a search whose deadline passes is abandoned between stages.

A slow stage is made by wrapping one collection's query embedding with a sleep (what a loaded CPU or a slow
model does); everything else is the real server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import index, server_settings
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    from searchsvc.api.server import BackgroundServer

    settings = server_settings(tmp_path_factory.mktemp("idx"), search_workers=2, max_inflight_searches=3)
    with BackgroundServer(settings) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="slow", config=pb.CollectionConfig(refresh_interval_ms=-1)))
            index(stub, "slow", [pb.Document(id="a", text="apples are red"), pb.Document(id="b", text="bananas are yellow")])
            collection = server.components["service"].catalog.get("slow")
            real = collection.embed_query

            def slow_embed(query):
                time.sleep(0.5)
                return real(query)

            collection.embed_query = slow_embed
            yield server, channel


def test_past_the_bound_calls_are_shed_quickly_the_rest_succeed(small_server):
    server, channel = small_server
    stub = pb_grpc.SearchServiceStub(channel)
    outcomes: list[tuple[str, float, tuple]] = []
    lock = threading.Lock()

    def one(_):
        started = time.monotonic()
        try:
            stub.Search(pb.SearchRequest(collection="slow", query="red apples"), timeout=30)
            result = ("OK", time.monotonic() - started, ())
        except grpc.RpcError as err:
            result = (err.code().name, time.monotonic() - started, err.trailing_metadata() or ())
        with lock:
            outcomes.append(result)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(one, range(12)))
    shed = [o for o in outcomes if o[0] == "RESOURCE_EXHAUSTED"]
    ok = [o for o in outcomes if o[0] == "OK"]
    assert len(ok) + len(shed) == 12 and 3 <= len(ok) and len(shed) >= 1, outcomes
    assert all(elapsed < 0.4 for _, elapsed, _ in shed)  # refused at once, not after waiting for a slot
    assert all(dict(md).get("grpc-retry-pushback-ms") == "100" for _, _, md in shed)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub.Search(pb.SearchRequest(collection="slow", query="yellow"), timeout=30)  # and it takes work again
    assert server.components["service"].search_gate.in_flight == 0


def test_a_search_past_its_deadline_is_abandoned_between_stages(small_server):
    """The query embedding is held until the caller has seen DEADLINE_EXCEEDED (an event the test controls, not a
    race against a sleep), so the deadline check before the dense leg must find it passed. The count is the server
    under test's own (service.abandoned), read for the dense stage alone."""
    server, channel = small_server
    stub = pb_grpc.SearchServiceStub(channel)
    service = server.components["service"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(pb.SearchRequest(collection="slow", query="red"), timeout=0.001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    collection = service.catalog.get("slow")
    slow_embed = collection.embed_query
    caller_gave_up = threading.Event()
    embedding_started = threading.Event()

    def embed_after_the_caller_gave_up(query):
        embedding_started.set()
        assert caller_gave_up.wait(30)
        return slow_embed(query)

    collection.embed_query = embed_after_the_caller_gave_up
    try:
        before = service.abandoned["dense"]
        # A deadline generous enough for any machine to start the call: only the held embedding outlasts it.
        call = stub.Search.future(pb.SearchRequest(collection="slow", query="red"), timeout=3)
        assert embedding_started.wait(3)  # the call got past admission and into the pipeline
        assert call.exception(30) is not None and call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        caller_gave_up.set()
        waited_until = time.monotonic() + 30
        while service.abandoned["dense"] == before and time.monotonic() < waited_until:
            time.sleep(0.02)
        assert service.abandoned["dense"] == before + 1
    finally:
        caller_gave_up.set()
        collection.embed_query = slow_embed
