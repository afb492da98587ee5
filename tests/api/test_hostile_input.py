"""Hostile input (issue 17): bytes that are not a request message, on every RPC the server serves, are
INVALID_ARGUMENT with one log line per method, never a traceback."""

from __future__ import annotations

import logging

import grpc
import pytest

from conftest import ids, index, search, server_settings
from searchsvc.v1 import searchsvc_pb2 as pb

GARBAGE = b"\xff\xff\xff\x07garbage that is no protobuf"


def every_method() -> list[tuple[str, bool, bool]]:
    """(path, client streams, server streams) of every RPC in the proto, plus health and reflection."""
    service = pb.DESCRIPTOR.services_by_name["SearchService"]
    methods = [(f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming) for m in service.methods]
    return methods + [("/grpc.health.v1.Health/Check", False, False), ("/grpc.health.v1.Health/Watch", False, True),
                      ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True)]


def call_with_garbage(channel: grpc.Channel, path: str, client_streams: bool, server_streams: bool) -> grpc.RpcError:
    kind = ("stream" if client_streams else "unary") + "_" + ("stream" if server_streams else "unary")
    call = getattr(channel, kind)(path)  # no serializers: the raw bytes go on the wire
    request = iter([GARBAGE]) if client_streams else GARBAGE
    with pytest.raises(grpc.RpcError) as err:
        response = call(request, timeout=30)
        if server_streams:
            list(response)
    return err.value


@pytest.fixture(scope="module")
def fresh_channel(tmp_path_factory):
    """A server of this module's own: what other tests sent the session server (garbage included, which the
    server logs once a minute per method) cannot change what these tests see."""
    from searchsvc.api.server import BackgroundServer

    with BackgroundServer(server_settings(tmp_path_factory.mktemp("hostile"))) as server:
        with grpc.insecure_channel(server.target) as channel:
            yield channel


@pytest.mark.parametrize("path, client_streams, server_streams", every_method())
def test_undecodable_requests_are_invalid_argument_logged_once(fresh_channel, caplog, path, client_streams, server_streams):
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            err = call_with_garbage(fresh_channel, path, client_streams, server_streams)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, err.code(), err.details())
            assert "not a valid" in err.details()
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in said] == [logging.WARNING], [r.getMessage() for r in said]  # once, not three times
    assert path in said[0].getMessage() and not said[0].exc_info


def test_well_formed_requests_still_work_after_garbage(stub, channel):
    call_with_garbage(channel, "/searchsvc.v1.SearchService/ListCollections", False, False)
    stub.ListCollections(pb.ListCollectionsRequest())


def test_metadata_over_each_limit_is_rejected_by_field_and_nothing_stored(stub, collection):
    """Defaults (config.py): 64 pairs, keys of 128 bytes, values of 4,096, 16,384 bytes per document."""
    batch = [
        pb.Document(id="ok", text="kept", metadata={f"k{i}": "v" * 200 for i in range(64)}),  # 64 pairs, 13.6 KB
        pb.Document(id="pairs", text="too many pairs", metadata={f"k{i}": "v" for i in range(65)}),
        pb.Document(id="key", text="long key", metadata={"k" * 129: "v"}),
        pb.Document(id="value", text="long value", metadata={"tag": "v" * 4097}),
        pb.Document(id="total", text="too much in all", metadata={f"k{i}": "v" * 4000 for i in range(5)}),
        pb.Document(id="value-ko", text="긴 값", metadata={"tag": "값" * 1366}),  # 4,098 bytes of UTF-8 in 1,366 characters
    ]
    [ack] = index(stub, collection, batch, batch_size=10)
    assert ack.indexed_count == 1
    assert [(e.document_id, e.field) for e in ack.errors] == [
        ("pairs", "documents[1].metadata"),
        ("key", "documents[2].metadata['" + "k" * 40 + "']"),
        ("value", "documents[3].metadata['tag']"),
        ("total", "documents[4].metadata"),
        ("value-ko", "documents[5].metadata['tag']"),
    ]
    assert "at most 64" in ack.errors[0].message and "at most 4096" in ack.errors[2].message
    found = search(stub, collection, "long key value pairs kept", mode=pb.SEARCH_MODE_KEYWORD, top_k=10)
    assert ids(found) == ["ok"]


def test_a_search_response_stops_at_the_byte_budget(server, stub, collection):
    """The in-process test server's budget is small (conftest: max_response_bytes): hits are added best first
    until the next would pass it; the rest are counted, never built."""
    budget = server.settings.max_response_bytes
    # Each document brings its vector: one chunk of ~14 KB text, no model run (the budget is about hits, not
    # embedding: 280 MiniLM chunks cost this test 25 s of CPU).
    docs = [pb.Document(id=f"d{i:02}", text=f"shared words number {i} " + "filler text " * 1200,
                        metadata={f"k{j}": "m" * 1000 for j in range(15)}, vector=[1.0, float(i)] + [0.0] * 382)
            for i in range(40)]  # ~30 KB per hit
    index(stub, collection, docs, batch_size=10)
    small = search(stub, collection, "shared words", mode=pb.SEARCH_MODE_KEYWORD, top_k=3)
    full = search(stub, collection, "shared words", mode=pb.SEARCH_MODE_KEYWORD, top_k=40, explain=True)
    assert full.ByteSize() <= budget and full.truncated_hits > 0 and len(full.hits) + full.truncated_hits == 40
    assert ids(full)[:3] == ids(small) and small.truncated_hits == 0  # the best hits are the ones kept



def test_requests_may_name_only_allowed_models(stub, collection, tmp_path_factory):
    """Packaged models, the server's models directory and model_allow_list (the test server allows its temp tree)."""
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="sneaky", config=pb.CollectionConfig(embedding_model="/usr/lib/python3")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_allow_list" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        search(stub, collection, "x", rerank=pb.RerankOptions(enabled=True, model="../../etc"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_allow_list" in err.value.details()
