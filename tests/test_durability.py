"""Restart, kill -9 and torn writes, against `python -m searchsvc serve` subprocesses and real files."""

import grpc
import pytest

from conftest import CORPUS, SYNC_REFRESH, ServerProcess, doc, ids, index, search
from searchsvc.client import bulk_index
from searchsvc.types import Document
from searchsvc.v1 import searchsvc_pb2 as pb

pytestmark = pytest.mark.slow

QUERIES = ["capital city", "similarity search library", "animals that bark", "term frequency ranking"]


def all_results(stub, name):
    return {
        (q, mode): [(h.chunk_id, round(h.score, 5)) for h in search(stub, name, q, mode=mode, top_k=6).hits]
        for q in QUERIES
        for mode in (pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD)
    }


def create(stub, name):
    config = pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config), timeout=60)


def counts(stub, name):
    got = stub.GetCollection(pb.GetCollectionRequest(name=name))
    return got.document_count, got.chunk_count


@pytest.mark.parametrize("shutdown", ["graceful", "kill9"])
def test_restart_gives_the_same_results(tmp_path, shutdown):
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        create(stub, "docs")
        index(stub, "docs", CORPUS)
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="docs", ids=["dogs"]))
        index(stub, "docs", [doc("cats", "Cats are independent pets that sleep all day.", "Cats", kind="animal")])
        before = all_results(stub, "docs")
        server.stop() if shutdown == "graceful" else server.kill9()
    # A clean stop checkpoints; after kill -9 everything must come back from the WAL alone.
    assert (tmp_path / "docs" / "CURRENT").exists() == (shutdown == "graceful")

    with ServerProcess(tmp_path) as server:
        assert counts(server.stub(), "docs") == (5, 5)
        assert all_results(server.stub(), "docs") == before


def test_kill9_mid_stream_loses_no_acked_batch_and_resend_does_not_duplicate(tmp_path):
    docs = [Document(f"d{i}", f"Document number {i} about topic {i % 13} and item {i}.") for i in range(3000)]
    acked: list[int] = []
    with ServerProcess(tmp_path) as server:
        create(server.stub(), "bulk")

        def on_ack(ack):
            acked.append(ack.sequence)
            if len(acked) == 5:
                server.kill9()

        with pytest.raises(grpc.RpcError):
            bulk_index(lambda: grpc.insecure_channel(server.target), "bulk", iter(docs), batch_size=50, retries=0, on_ack=on_ack)
    assert len(acked) >= 5

    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        survived, _ = counts(stub, "bulk")
        assert survived >= 50 * len(acked), "every acked batch survived kill -9"
        # A reconnecting client resends what was not acked (here: from the start): nothing duplicates.
        bulk_index(lambda: grpc.insecure_channel(server.target), "bulk", iter(docs[:400]), batch_size=50)
        assert counts(stub, "bulk") == (max(survived, 400),) * 2
        hits = search(stub, "bulk", "Document number 7 about topic 7", mode=pb.SEARCH_MODE_KEYWORD, top_k=50).hits
        assert len({h.chunk_id for h in hits}) == len(hits)


def test_torn_wal_tail_is_recovered_at_start(tmp_path):
    with ServerProcess(tmp_path) as server:
        create(server.stub(), "torn")
        index(server.stub(), "torn", CORPUS[:2], batch_size=1)
        server.kill9()
    wal = tmp_path / "torn" / "wal.log"
    size = wal.stat().st_size
    with open(wal, "ab") as f:  # a record whose write was cut short by the crash
        f.write(b"\x00\x10\x00\x00\xde\xad\xbe\xef{\"seq\": 3, \"op\"")

    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        assert counts(stub, "torn") == (2, 2)
        assert wal.stat().st_size == size, "torn tail cut back to the last whole record"
        index(stub, "torn", CORPUS[2:3])
        assert ids(search(stub, "torn", "FAISS vectors", top_k=1)) == ["faiss"]
