"""Storage faults below a collection and through the API: a failed WAL append, a failed fsync, a checkpoint cut
short by a full disk, the free-space watermark. Real models and files; faults come from an injected file layer
(tests/faulty_files.py) or a patched snapshot writer, so no root is needed."""

from __future__ import annotations

import errno
import os

import grpc
import pytest
from faulty_files import FaultyFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import doc, index, search
from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.types import CollectionConfig, Document, SearchParams
from searchsvc.errors import FailedPrecondition, ResourceExhausted, Unavailable
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.pipeline import SearchPipeline
from searchsvc.storage.embedded.collection import Collection
from searchsvc.v1 import searchsvc_pb2 as pb


@pytest.fixture(scope="module")
def models():
    return ModelRegistry()


def open_catalog(tmp_path, models, **settings) -> Catalog:
    catalog = Catalog(load_settings(index_dir=tmp_path, default_language="en", **settings), models)
    catalog.open_all()
    return catalog


def crash(coll: Collection) -> None:
    """What kill -9 leaves: files as they are (no checkpoint), the WAL's fd and lock released."""
    coll.keyword.close()  # uncommitted keyword writes are lost, as in a crash
    coll.wal.close()
    coll.dense.kvstore.close()  # its open transaction is rolled back, as in a crash


def docs(*ids: str) -> list[Document]:
    return [Document(i, f"document {i} about storage faults and recovery") for i in ids]


def stored_ids(catalog: Catalog, name: str) -> set[str]:
    coll = catalog.get(name)
    return {n.metadata["document_id"] for n in coll.dense.docstore.docs.values()}


def with_faulty_wal(catalog: Catalog, name: str) -> tuple[Collection, FaultyFiles]:
    coll = catalog.get(name)
    files = FaultyFiles()
    coll.wal.files = files  # the same fd; only the calls made on it can now fail
    return coll, files


def test_disk_full_mid_append_is_resource_exhausted_and_later_acks_survive_a_crash(tmp_path, models):
    catalog = open_catalog(tmp_path, models)
    catalog.create("c", CollectionConfig("", "", 0, 0, refresh_interval_ms=-1))
    coll, files = with_faulty_wal(catalog, "c")
    coll.index_documents(docs("a", "b"))

    files.arm(after_bytes=100)  # the disk fills 100 bytes into the next record
    with pytest.raises(ResourceExhausted, match=r"disk full: collection 'c'"):
        coll.index_documents(docs("lost"))
    assert not coll.read_only_reason and coll.document_count == 2
    files.disarm()  # space freed
    coll.index_documents(docs("c", "d"))
    crash(coll)

    again = open_catalog(tmp_path, models)
    assert stored_ids(again, "c") == {"a", "b", "c", "d"}


def test_failed_fsync_makes_the_collection_read_only_searchable_until_reopened(tmp_path, models):
    catalog = open_catalog(tmp_path, models)
    catalog.create("c", CollectionConfig("", "", 0, 0, refresh_interval_ms=-1))
    coll, files = with_faulty_wal(catalog, "c")
    coll.index_documents(docs("a", "b"))

    files.arm(fsync=True, code=errno.EIO)
    with pytest.raises(Unavailable, match="storage error.*read-only"):
        coll.index_documents(docs("x"))
    files.disarm()
    with pytest.raises(FailedPrecondition, match="read-only after a storage fault: fsync failed"):
        coll.index_documents(docs("y"))
    with pytest.raises(FailedPrecondition):
        coll.delete_documents(["a"])
    hits = SearchPipeline(models).search(coll, SearchParams("storage faults", top_k=5)).hits
    assert {h.document_id for h in hits} == {"a", "b"}, "searches keep working on what was acked"

    reopened = catalog.reopen("c")
    assert not reopened.read_only_reason
    reopened.index_documents(docs("z"))
    assert stored_ids(catalog, "c") == {"a", "b", "z"}
    catalog.close()


@pytest.mark.parametrize("failing_step", ["persist", "docstore-commit", "wal-reset"])
def test_checkpoint_cut_short_by_a_full_disk_keeps_every_acked_write(tmp_path, models, monkeypatch, failing_step):
    catalog = open_catalog(tmp_path, models, checkpoint_wal_bytes=1)  # every batch checkpoints
    coll = catalog.create("c", CollectionConfig("", "", 0, 0, refresh_interval_ms=-1))
    coll.index_documents(docs("a"))
    snapshot = (tmp_path / "c" / "CURRENT").read_text()
    disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing_step == "persist":  # half a FAISS snapshot written, then no space
        monkeypatch.setattr("searchsvc.storage.embedded.collection.DENSE_SNAPSHOT_CHANGES", 0)  # a checkpoint that writes one
        def persist(target, previous=None):
            target.mkdir(parents=True)
            (target / "docstore.json").write_text('{"half": ')
            raise disk_full
        monkeypatch.setattr(coll.dense, "persist", persist)
    elif failing_step == "docstore-commit":  # the snapshot is whole, the docstore's commit (the switch) fails
        def commit(**meta):
            raise disk_full
        monkeypatch.setattr(coll.dense.kvstore, "commit", commit)
    else:  # the switch happened; emptying the WAL fails
        files = FaultyFiles()
        coll.wal.files = files
        files.arm(truncate=True, code=errno.ENOSPC)

    report = coll.index_documents(docs("b"))  # durable in the WAL before the checkpoint: acked all the same
    assert report.indexed == 1
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert not [n for n in names if n.startswith(".tmp-") or n.endswith(".tmp")], names
    current = (tmp_path / "c" / "CURRENT").read_text()
    if failing_step != "wal-reset":
        assert current == snapshot and [n for n in names if n.startswith("snap-")] == [snapshot], "no half snapshot made current"
    coll.wal.files = FaultyFiles()  # healthy again: later batches commit (their checkpoint waits for its retry time)
    coll.index_documents(docs("c"))
    crash(coll)

    again = open_catalog(tmp_path, models)
    assert stored_ids(again, "c") == {"a", "b", "c"}
    again.close()


def test_watermark_refuses_a_batch_before_writing_anything(tmp_path, models):
    catalog = open_catalog(tmp_path, models, min_free_disk_bytes=2**62)
    coll = catalog.create("c", CollectionConfig("", "", 0, 0, refresh_interval_ms=-1))
    with pytest.raises(ResourceExhausted, match=r"disk full: collection 'c'.*watermark"):
        coll.index_documents(docs("a"))
    assert coll.wal.size() == 0 and (tmp_path / "c" / "wal.log").stat().st_size == 0
    catalog.close()


# ---------------------------------------------------------------- the same faults through the gRPC API
def live_collection(server, name) -> Collection:
    return server.components["service"].catalog.get(name)


def test_api_maps_disk_full_and_io_errors_and_health_follows_read_only(server, channel, stub, collection, caplog):
    health = health_pb2_grpc.HealthStub(channel)
    service_name = f"searchsvc.v1.Collection/{collection}"
    index(stub, collection, [doc("a", "Acked before the disk filled.")])
    coll = live_collection(server, collection)

    coll.min_free_disk_bytes = 2**62  # the flood-stage watermark
    with pytest.raises(grpc.RpcError) as err:
        index(stub, collection, [doc("b", "Refused up front.")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk full" in err.value.details() and repr(collection) in err.value.details()
    coll.min_free_disk_bytes = 0

    files = FaultyFiles()
    coll.wal.files = files
    files.arm(after_bytes=10)
    with pytest.raises(grpc.RpcError) as err:
        index(stub, collection, [doc("c", "Cut short by ENOSPC.")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk full" in err.value.details()

    files.arm(fsync=True, code=errno.EIO)
    with pytest.raises(grpc.RpcError) as err:
        index(stub, collection, [doc("d", "Its fsync fails.")])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    files.disarm()
    assert health.Check(health_pb2.HealthCheckRequest(service=service_name)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    got = stub.GetCollection(pb.GetCollectionRequest(name=collection))
    assert got.state == pb.COLLECTION_STATE_READ_ONLY and "fsync failed" in got.state_reason
    with pytest.raises(grpc.RpcError) as err:
        index(stub, collection, [doc("e", "Refused: read-only.")])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [h.document_id for h in search(stub, collection, "acked disk").hits] == ["a"]

    reopened = stub.ReopenCollection(pb.ReopenCollectionRequest(name=collection), timeout=60)
    assert reopened.state == pb.COLLECTION_STATE_READY and reopened.document_count == 1
    assert health.Check(health_pb2.HealthCheckRequest(service=service_name)).status == health_pb2.HealthCheckResponse.SERVING
    index(stub, collection, [doc("f", "Accepted after the reopen.")])
    assert stub.GetCollection(pb.GetCollectionRequest(name=collection)).document_count == 2
    assert not [r for r in caplog.records if r.exc_info], "environmental faults are logged without tracebacks"


def test_reopen_unknown_collection_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.ReopenCollection(pb.ReopenCollectionRequest(name="no-such-collection"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("file", ["default__vector_store.json", "index_store.json"])
def test_snapshot_writers_report_a_full_disk_as_enospc(tmp_path, models, file):
    # /dev/full fails every write with ENOSPC: faiss's writer (RuntimeError upstream) and LlamaIndex's JSON alike.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    catalog = open_catalog(tmp_path / "idx", models)
    coll = catalog.create("c", CollectionConfig("", "", 0, 0, refresh_interval_ms=-1))
    coll.index_documents(docs(*[f"d{i}" for i in range(50)]))
    target = tmp_path / "snap"
    target.mkdir()
    (target / file).symlink_to("/dev/full")
    with pytest.raises(OSError) as err:
        coll.dense.persist(target)
    assert err.value.errno == errno.ENOSPC
    catalog.close()
