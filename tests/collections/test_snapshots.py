"""Snapshots (issue 19): consistent while a BulkIndex stream goes on, verified member by member before a
restore, never half-listed after kill -9, movable between servers (download, upload)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time

import grpc
import pytest

from conftest import ServerProcess, fresh_collection, index
from searchsvc.storage.embedded.snapshot import FORMAT_VERSION
from searchsvc.v1 import searchsvc_pb2 as pb

BATCHES, PER_BATCH = 40, 10


def batch(k: int) -> list[pb.Document]:
    return [pb.Document(id=f"b{k:02d}-{i}", text=f"batch {k} document {i}: " + "words to index " * (i + 1),
                        metadata={"batch": str(k)}) for i in range(PER_BATCH)]


def all_documents(stub, collection: str) -> dict[str, pb.StoredDocument]:
    found, token = {}, ""
    while True:
        page = stub.ListDocuments(pb.ListDocumentsRequest(collection=collection, page_size=1000, page_token=token,
                                                          view=pb.DOCUMENT_VIEW_FULL))
        found.update({d.id: d for d in page.documents})
        if not (token := page.next_page_token):
            return found


def snapshot_path(server, name: str):
    return server.settings.snapshots_dir / f"{name}.snapshot"


def test_a_snapshot_during_bulk_index_holds_exactly_the_writes_before_its_sequence(stub, server):
    with fresh_collection(stub) as name:
        acked: list[int] = []

        def requests():
            for k in range(1, BATCHES + 1):
                yield pb.BulkIndexRequest(collection=name, documents=batch(k), sequence=k)
                time.sleep(0.03)  # a stream that outlasts the snapshot

        def stream():
            for ack in stub.BulkIndex(requests(), timeout=300):
                acked.append(ack.sequence)

        streaming = threading.Thread(target=stream)
        streaming.start()
        while len(acked) < 5:
            time.sleep(0.01)
        snap = stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=name), timeout=120)
        acked_when_done = len(acked)
        streaming.join()
        # Each batch is one write of a fresh collection: write k is batch k.
        assert 5 <= snap.sequence <= acked_when_done < BATCHES
        assert (snap.collection, snap.document_count, snap.format_version) == (name, snap.sequence * PER_BATCH, FORMAT_VERSION)
        assert snap.name.startswith(f"{name}@") and snap.sha256 == hashlib.sha256(snapshot_path(server, snap.name).read_bytes()).hexdigest()
        assert snap.name in [s.name for s in stub.ListSnapshots(pb.ListSnapshotsRequest(collection=name)).snapshots]

        restored = stub.RestoreSnapshot(pb.RestoreSnapshotRequest(name=snap.name, collection=f"{name}-restored"), timeout=120)
        try:
            assert restored.document_count == snap.sequence * PER_BATCH and restored.config == snap.config
            live, back = all_documents(stub, name), all_documents(stub, restored.name)
            assert set(back) == {d.id for k in range(1, snap.sequence + 1) for d in batch(k)}
            assert all(back[i] == live[i] for i in back)  # whole documents: text, metadata, chunks
            # Both legs and filters work on the restored collection, and it takes writes.
            for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_DENSE):
                hits = stub.Search(pb.SearchRequest(collection=restored.name, query="batch 3 document 2", mode=mode,
                                                    filter={"batch": "3"})).hits
                assert hits and {h.metadata["batch"] for h in hits} == {"3"}
            index(stub, restored.name, batch(99))
            assert stub.CountDocuments(pb.CountDocumentsRequest(collection=restored.name)).count == (snap.sequence + 1) * PER_BATCH
        finally:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=restored.name))
            stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name=snap.name))


def _member_offset(path, member: str) -> tuple[int, int]:
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
        return info.offset_data, info.size


def test_a_corrupted_snapshot_is_refused_naming_the_member(stub, server):
    with fresh_collection(stub) as name:
        index(stub, name, batch(1))
        snap = stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=name))
        path = snapshot_path(server, snap.name)
        offset, size = _member_offset(path, "docstore.sqlite")
        data = bytearray(path.read_bytes())
        data[offset + size // 2] ^= 0x01  # one flipped bit
        path.write_bytes(bytes(data))
        with pytest.raises(grpc.RpcError) as err:
            stub.RestoreSnapshot(pb.RestoreSnapshotRequest(name=snap.name, collection=f"{name}-r"))
        assert err.value.code() == grpc.StatusCode.DATA_LOSS and "member docstore.sqlite" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # nothing was created
            stub.GetCollection(pb.GetCollectionRequest(name=f"{name}-r"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert not list(server.settings.index_dir.glob(".restore-*"))
        stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name=snap.name))


def _rewritten(archive: bytes, **manifest_changes) -> bytes:
    """The archive with its manifest changed (its members untouched)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as source, tarfile.open(fileobj=out, mode="w") as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), **manifest_changes}).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return out.getvalue()


def _upload(stub, name: str, data: bytes) -> pb.Snapshot:
    parts = [pb.UploadSnapshotRequest(name=name)] + [
        pb.UploadSnapshotRequest(data=data[i : i + 100_000]) for i in range(0, len(data), 100_000)]
    return stub.UploadSnapshot(iter(parts))


def test_download_upload_and_restore_elsewhere(stub, server, tmp_path):
    with fresh_collection(stub) as name:
        index(stub, name, batch(1) + batch(2), batch_size=PER_BATCH)
        snap = stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=name))
        data = b"".join(part.data for part in stub.DownloadSnapshot(pb.DownloadSnapshotRequest(name=snap.name)))
        assert hashlib.sha256(data).hexdigest() == snap.sha256
        original = all_documents(stub, name)
        stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name=snap.name))

    # Another server (another index dir): upload, restore under the old name.
    with ServerProcess(tmp_path / "elsewhere") as other:
        remote = other.stub()
        uploaded = _upload(remote, snap.name, data)
        assert (uploaded.sha256, uploaded.document_count, uploaded.sequence) == (snap.sha256, 2 * PER_BATCH, snap.sequence)
        with pytest.raises(grpc.RpcError) as err:
            _upload(remote, snap.name, data)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        remote.RestoreSnapshot(pb.RestoreSnapshotRequest(name=snap.name, collection=name))
        assert all_documents(remote, name) == original
        with pytest.raises(grpc.RpcError) as err:
            remote.RestoreSnapshot(pb.RestoreSnapshotRequest(name=snap.name, collection=name))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

        # A newer format is refused clearly; a damaged upload names its member; a name the manifest does not give.
        newer = _rewritten(data, format_version=99)
        with pytest.raises(grpc.RpcError) as err:
            _upload(remote, f"{name}@newer-1", newer)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "format version 99" in err.value.details()
        damaged = bytearray(data)
        offset, size = 0, 0
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next(m for m in tar if m.name.startswith("keyword/") and m.size > 100)
            offset, size = member.offset_data, member.size
        damaged[offset + size // 2] ^= 0xFF
        with pytest.raises(grpc.RpcError) as err:
            _upload(remote, f"{name}@damaged-1", bytes(damaged))
        assert err.value.code() == grpc.StatusCode.DATA_LOSS and f"member {member.name}" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _upload(remote, f"{name}@renamed-1", data)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [s.name for s in remote.ListSnapshots(pb.ListSnapshotsRequest()).snapshots] == [snap.name]
        assert not list((tmp_path / "elsewhere" / ".snapshots").glob(".tmp-*"))


def test_kill_9_during_snapshot_creation_leaves_no_half_snapshot(tmp_path):
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        stub.CreateCollection(pb.CreateCollectionRequest(name="big", config=pb.CollectionConfig(embedding_model="external", dimension=384)))
        vectors = [[((i * 7 + j) % 13) / 13 + 0.01 for j in range(384)] for i in range(20)]
        requests = [pb.BulkIndexRequest(collection="big", documents=[
            pb.Document(id=f"d{k}-{i}", text=f"document {k} {i} " * 20, vector=vectors[i]) for i in range(20)]) for k in range(200)]
        list(stub.BulkIndex(iter(requests), timeout=300))
        snapshots = tmp_path / ".snapshots"
        creating = stub.CreateSnapshot.future(pb.CreateSnapshotRequest(collection="big"), timeout=120)
        deadline = time.monotonic() + 60
        while not list(snapshots.glob(".tmp-*")) and not creating.done() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not creating.done(), "the snapshot finished before it could be interrupted"
        server.kill9()
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        assert not stub.ListSnapshots(pb.ListSnapshotsRequest()).snapshots
        assert not list(snapshots.glob(".tmp-*")) and not list(tmp_path.glob(".snapshot-staging-*"))
        assert stub.GetCollection(pb.GetCollectionRequest(name="big")).document_count == 4000
        done = stub.CreateSnapshot(pb.CreateSnapshotRequest(collection="big"), timeout=120)  # and one can be taken
        assert done.document_count == 4000


def test_a_qdrant_collection_is_refused(stub):
    with fresh_collection(stub, backend="qdrant") as name:
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=name))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "Qdrant" in err.value.details()


@pytest.mark.parametrize("call, request_, code", [
    ("DeleteSnapshot", pb.DeleteSnapshotRequest(name="none@1-1"), grpc.StatusCode.NOT_FOUND),
    ("DeleteSnapshot", pb.DeleteSnapshotRequest(name="../etc"), grpc.StatusCode.INVALID_ARGUMENT),
    ("RestoreSnapshot", pb.RestoreSnapshotRequest(name="none@1-1", collection="x"), grpc.StatusCode.NOT_FOUND),
])
def test_bad_snapshot_requests(stub, call, request_, code):
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request_)
    assert err.value.code() == code
