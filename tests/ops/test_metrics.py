"""Prometheus metrics (issue 17): a real server with its /metrics port, scraped over HTTP before and after an
ingest and searches; the counters and histograms must have moved by what was done."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import index, server_settings
from searchsvc.lab.bench.workload import free_port
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from searchsvc.api.server import BackgroundServer

    port = free_port()
    settings = server_settings(tmp_path_factory.mktemp("idx"), metrics_port=port, unused_model_grace_s=0)
    with BackgroundServer(settings) as server, grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SearchServiceStub(channel), f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample, keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_rpcs_stages_ingest_and_collections_are_counted(measured):
    stub, url = measured
    stub.CreateCollection(pb.CreateCollectionRequest(name="m", config=pb.CollectionConfig(refresh_interval_ms=-1)))
    before = scrape(url)
    index(stub, "m", [pb.Document(id="a", text="apples are red"), pb.Document(id="b", text="bananas are yellow"),
                      pb.Document(id="bad", text="")], batch_size=10)
    for query in ("red apples", "yellow"):
        stub.Search(pb.SearchRequest(collection="m", query=query))
    with pytest.raises(grpc.RpcError):
        stub.Search(pb.SearchRequest(collection="missing", query="x"))
    # A call is counted when the server finishes it, which may be just after its caller has the answer: scrape
    # until the last call shows (bounded), then check everything.
    rpcs = ("searchsvc_rpc_duration_seconds_count", (("method", "Search"),))
    waited_until = time.monotonic() + 10
    while (after := scrape(url)).get(rpcs, 0.0) - before.get(rpcs, 0.0) < 3 and time.monotonic() < waited_until:
        time.sleep(0.05)

    def moved(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("searchsvc_rpc_requests_total", method="Search", code="OK") == 2
    assert moved("searchsvc_rpc_requests_total", method="Search", code="NOT_FOUND") == 1
    assert moved("searchsvc_rpc_requests_total", method="BulkIndex", code="OK") == 1
    assert moved("searchsvc_rpc_duration_seconds_count", method="Search") == 3
    for stage in ("embed", "dense", "keyword", "fuse"):
        assert moved("searchsvc_stage_duration_seconds_count", stage=stage) == 2, stage
    assert moved("searchsvc_ingest_documents_total") == 2 and moved("searchsvc_ingest_rejected_documents_total") == 1
    assert moved("searchsvc_ingest_chunks_total") == 2
    assert moved("searchsvc_wal_fsync_duration_seconds_count") >= 1
    assert after[("searchsvc_collection_chunks", (("collection", "m"),))] == 2
    assert after[("searchsvc_collection_disk_bytes", (("collection", "m"),))] > 0
    assert after[("searchsvc_in_flight_requests", (("kind", "search"),))] == 0
    assert ("searchsvc_shed_requests_total", (("kind", "search"),)) in after


def test_models_are_reported_while_used_and_dropped_with_their_last_collection(measured):
    stub, url = measured
    minilm = (("model", "sentence-transformers/all-MiniLM-L6-v2"),)
    for name in ("held", "kept"):
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(language="en")))
    loaded = scrape(url)
    assert loaded[("searchsvc_model_resident_bytes", minilm)] > 0
    assert loaded[("searchsvc_resident_bytes", ())] > loaded[("searchsvc_model_resident_bytes", minilm)]
    stub.DeleteCollection(pb.DeleteCollectionRequest(name="held"))
    assert ("searchsvc_model_resident_bytes", minilm) in scrape(url)  # "kept" uses it
    stub.CreateCollection(pb.CreateCollectionRequest(name="ko", config=pb.CollectionConfig(language="ko", refresh_interval_ms=-1)))
    index(stub, "ko", [pb.Document(id="a", text="서울은 한국의 수도이다")])
    assert scrape(url)[("searchsvc_model_resident_bytes", (("model", "kiwi"),))] > 0  # Korean text loaded it
    for collection in stub.ListCollections(pb.ListCollectionsRequest()).collections:  # "kept", "ko", and "m" if made
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection.name))
    assert ("searchsvc_model_resident_bytes", minilm) not in scrape(url)  # nothing left uses it
