"""Restart, kill -9 and torn writes, against `python -m searchsvc serve` subprocesses and real files."""

import shutil
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import CORPUS, SYNC_REFRESH, ServerProcess, doc, ids, index, search
from searchsvc.client.channel import bulk_index
from searchsvc.domain.types import Document
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


# ---------------------------------------------------------------- storage faults on real files
@pytest.fixture
def small_fs(tmp_path):
    """A real 8 MB filesystem (tmpfs) that a test can fill; skipped where mounting needs rights it lacks."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small filesystem")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def unique_docs(start: int, count: int) -> list[pb.Document]:
    return [doc(f"d{i}", f"Document tok{i} fills the disk with words about storage, space and recovery {i}.") for i in range(start, start + count)]


def stream(stub, name, docs, batch=20) -> tuple[list[str], grpc.RpcError | None]:
    """Send `docs` in batches on one stream; the ids of the acked batches, and the error that ended it."""
    batches = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    requests = (pb.BulkIndexRequest(collection=name, documents=b, sequence=n + 1) for n, b in enumerate(batches))
    acked: list[str] = []
    try:
        for ack in stub.BulkIndex(requests, timeout=120):
            acked += [d.id for d in batches[ack.sequence - 1]]
    except grpc.RpcError as err:
        return acked, err
    return acked, None


def test_disk_full_then_freed_then_kill9_keeps_every_acked_document(small_fs):
    index_dir = small_fs / "indexes"
    env = {"SEARCHSVC_MIN_FREE_DISK_BYTES": "0", "SEARCHSVC_LLM__BACKEND": "none", "SEARCHSVC_CHECKPOINT_WAL_BYTES": "100000"}
    with ServerProcess(index_dir, env) as server:
        stub = server.stub()
        create(stub, "full")
        ballast = small_fs / "ballast"
        free = shutil.disk_usage(small_fs).free
        with open(ballast, "wb") as f:  # leave ~250 KB: a few batches fit, then the disk is full
            f.write(b"\0" * (free - 250_000))
        acked, err = stream(stub, "full", unique_docs(0, 2000))
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "".join(server.output)[-3000:]
        assert "disk full" in err.details() and "'full'" in err.details()
        assert len(acked) >= 20, "some batches fit before the disk filled"

        ballast.unlink()  # space freed: the next batches are acked
        later, err = stream(stub, "full", unique_docs(5000, 40))
        assert err is None and len(later) == 40
        acked += later
        server.kill9()
    assert "Traceback" not in "".join(server.output), "a full disk is logged in one line, not a traceback"

    with ServerProcess(index_dir, env) as server:
        stub = server.stub()
        assert counts(stub, "full")[0] == len(acked)
        for doc_id in later:
            hits = search(stub, "full", f"tok{doc_id[1:]}", mode=pb.SEARCH_MODE_KEYWORD, top_k=1).hits
            assert [h.document_id for h in hits] == [doc_id]


def test_corrupt_wal_middle_refuses_to_open_and_repair_reports_what_it_drops(tmp_path):
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        create(stub, "rot")
        create(stub, "fine")
        index(stub, "rot", CORPUS[:3], batch_size=1)
        index(stub, "fine", CORPUS[:1])
        server.kill9()
    wal = tmp_path / "rot" / "wal.log"
    data = bytearray(wal.read_bytes())
    second = iter_frames(bytes(data))[1]
    data[second + 40] ^= 0x01  # bit rot inside the second of three records
    wal.write_bytes(bytes(data))

    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        got = stub.GetCollection(pb.GetCollectionRequest(name="rot"))
        assert got.state == pb.COLLECTION_STATE_FAILED and "records seq 2..2 are lost" in got.state_reason
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.target))
        check = health.Check(health_pb2.HealthCheckRequest(service="searchsvc.v1.Collection/rot"))
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            search(stub, "rot", "cats")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "corrupt" in err.value.details()
        assert counts(stub, "fine") == (1, 1), "the other collections open as usual"
        assert wal.read_bytes() == bytes(data), "nothing was changed"

        # The server does not hold the failed collection's log, so an operator can repair it live.
        dry = repair_cli(tmp_path, "rot")
        assert dry.returncode == 2 and "would drop" in dry.stdout and "records seq 2..2 are lost" in dry.stdout, dry.stdout
        assert wal.read_bytes() == bytes(data)
        done = repair_cli(tmp_path, "rot", "--apply")
        assert done.returncode == 0 and "dropped" in done.stdout, done.stdout
        reopened = stub.ReopenCollection(pb.ReopenCollectionRequest(name="rot"), timeout=60)
        assert reopened.state == pb.COLLECTION_STATE_READY and reopened.document_count == 2
        assert health.Check(health_pb2.HealthCheckRequest(service="searchsvc.v1.Collection/rot")).status == health_pb2.HealthCheckResponse.SERVING
        busy = repair_cli(tmp_path, "rot")
        assert busy.returncode == 1 and "open in another process" in busy.stderr


def iter_frames(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 8 + int.from_bytes(data[offset : offset + 4], "little")
    return offsets


def repair_cli(index_dir, name, *flags) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "searchsvc", "repair", name, "--index-dir", str(index_dir), *flags],
        capture_output=True, text=True, timeout=120,
    )
