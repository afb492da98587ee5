"""Restart, kill -9 and torn writes, against `python -m searchsvc serve` subprocesses and real files."""

import threading
import time

import grpc
import pytest

from conftest import CORPUS, SYNC_REFRESH, ServerProcess, doc, ids, index, search
from searchsvc.client import bulk_index
from searchsvc.types import Document
from searchsvc.v1 import searchsvc_pb2 as pb

pytestmark = pytest.mark.slow

QUERIES = ["capital city", "similarity search library", "animals that bark", "term frequency ranking"]


def snapshot_results(stub, name):
    return {
        (q, mode): [(h.chunk_id, round(h.score, 5)) for h in search(stub, name, q, mode=mode, top_k=6).hits]
        for q in QUERIES
        for mode in (pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD)
    }


def create(stub, name):
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)), timeout=60)


@pytest.mark.parametrize("shutdown", ["graceful", "kill9"])
def test_restart_gives_the_same_results(tmp_path, shutdown):
    server = ServerProcess(tmp_path).start()
    ch, stub = server.stub()
    create(stub, "docs")
    index(stub, "docs", CORPUS)
    stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="docs", ids=["dogs"]))
    index(stub, "docs", [doc("cats", "Cats are independent pets that sleep all day.", "Cats", kind="animal")])
    before = snapshot_results(stub, "docs")
    ch.close()
    server.stop() if shutdown == "graceful" else server.kill9()
    if shutdown == "graceful":
        assert (tmp_path / "docs" / "CURRENT").exists(), "clean shutdown checkpoints"
    else:
        assert not (tmp_path / "docs" / "CURRENT").exists(), "kill -9: everything must come back from the WAL"

    server = ServerProcess(tmp_path).start()
    ch, stub = server.stub()
    try:
        got = stub.GetCollection(pb.GetCollectionRequest(name="docs"))
        assert (got.document_count, got.chunk_count) == (5, 5)
        assert snapshot_results(stub, "docs") == before
    finally:
        ch.close()
        server.stop()


def test_kill9_mid_stream_loses_no_acked_batch_and_resend_does_not_duplicate(tmp_path):
    server = ServerProcess(tmp_path).start()
    ch, stub = server.stub()
    create(stub, "bulk")
    ch.close()
    docs = [Document(f"d{i}", f"Document number {i} about topic {i % 13} and item {i}.") for i in range(3000)]
    acked: list[int] = []
    killed = threading.Event()

    def on_ack(ack):
        acked.append(ack.sequence)
        if len(acked) == 5 and not killed.is_set():
            killed.set()
            server.kill9()

    with pytest.raises(grpc.RpcError):
        bulk_index(lambda: grpc.insecure_channel(server.target), "bulk", iter(docs), batch_size=50, retries=0, on_ack=on_ack)
    assert killed.is_set() and len(acked) >= 5

    server = ServerProcess(tmp_path).start()
    ch, stub = server.stub()
    try:
        got = stub.GetCollection(pb.GetCollectionRequest(name="bulk"))
        assert got.document_count >= 50 * len(acked), "every acked batch survived kill -9"
        # A reconnecting client resends everything not acked (here: from the start): no duplicates.
        bulk_index(lambda: grpc.insecure_channel(server.target), "bulk", iter(docs[:400]), batch_size=50)
        again = stub.GetCollection(pb.GetCollectionRequest(name="bulk"))
        assert again.document_count == max(got.document_count, 400)
        assert again.chunk_count == again.document_count
        hits = search(stub, "bulk", "Document number 7 about topic 7", mode=pb.SEARCH_MODE_KEYWORD, top_k=50).hits
        assert len({h.chunk_id for h in hits}) == len(hits)
    finally:
        ch.close()
        server.stop()


def test_torn_wal_tail_is_recovered_at_start(tmp_path):
    server = ServerProcess(tmp_path).start()
    ch, stub = server.stub()
    create(stub, "torn")
    index(stub, "torn", CORPUS[:2], batch_size=1)
    ch.close()
    server.kill9()
    wal = tmp_path / "torn" / "wal.log"
    size = wal.stat().st_size
    with open(wal, "ab") as f:  # a record whose write was cut short by the crash
        f.write(b"\x00\x10\x00\x00\xde\xad\xbe\xef{\"seq\": 3, \"op\"")

    server = ServerProcess(tmp_path).start()
    ch, stub = server.stub()
    try:
        assert stub.GetCollection(pb.GetCollectionRequest(name="torn")).document_count == 2
        assert wal.stat().st_size == size, "torn tail cut back to the last whole record"
        index(stub, "torn", CORPUS[2:3])
        assert ids(search(stub, "torn", "FAISS vectors", top_k=1)) == ["faiss"]
    finally:
        ch.close()
        server.stop()
