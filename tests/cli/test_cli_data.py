"""The data commands against a real server (issue 19): export / import between backends and embedders, aliases,
and a snapshot carried between servers as a file."""

from __future__ import annotations

import json

import pytest

from conftest import fresh_collection, index
from searchsvc.cli.main import main
from searchsvc.v1 import searchsvc_pb2 as pb

LONG = "First paragraph about migration.\n\n  Second, indented paragraph. " * 60


def documents() -> list[pb.Document]:
    out = [pb.Document(id="long", text=LONG, title="Long one", metadata={"kind": "long"})]
    for i in range(5):
        d = pb.Document(id=f"d{i}", text=f"short document {i}", metadata={"kind": "short"})
        d.typed_metadata["year"].int_value = 2020 + i
        d.typed_metadata["when"].timestamp_value.FromMicroseconds(1_700_000_000_123_456 + i)
        d.typed_metadata["tags"].string_list_value.values.extend(["a", f"t{i}"])
        out.append(d)
    return out


def stored(stub, collection: str) -> dict[str, tuple]:
    got = stub.GetDocuments(pb.GetDocumentsRequest(collection=collection, ids=[d.id for d in documents()]))
    return {d.id: (d.text, d.title, dict(d.metadata), dict(d.typed_metadata)) for d in got.documents}


def test_export_then_import_into_the_other_backend(stub, server, tmp_path):
    target = ["--target", server.target]
    out = tmp_path / "export.jsonl"
    with fresh_collection(stub) as source, fresh_collection(stub, backend="qdrant") as copy:
        index(stub, source, documents())
        assert main(["export", source, str(out), *target]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 6 and "vector" not in rows[0]
        assert main(["import", copy, str(out), *target]) == 0
        assert stored(stub, copy) == stored(stub, source)
        assert stored(stub, copy)["long"][0] == LONG


def test_an_external_collection_exports_its_vectors(stub, server, tmp_path):
    target = ["--target", server.target]
    out = tmp_path / "vectors.jsonl"
    config = pb.CollectionConfig(embedding_model="external", dimension=3)
    for name in ("ext-source", "ext-copy"):
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))
    try:
        index(stub, "ext-source", [pb.Document(id="x", text="east", vector=[1, 0, 0]), pb.Document(id="y", text="north", vector=[0, 3, 4])])
        assert main(["export", "ext-source", str(out), *target]) == 0
        assert main(["import", "ext-copy", str(out), *target]) == 0
        hits = stub.Search(pb.SearchRequest(collection="ext-copy", query_vector=[0, 0.6, 0.8], mode=pb.SEARCH_MODE_DENSE, explain=True)).hits
        assert hits[0].document_id == "y" and hits[0].explanation.dense.score == pytest.approx(1.0, abs=1e-5)
    finally:
        for name in ("ext-source", "ext-copy"):
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_alias_and_snapshot_commands(stub, server, tmp_path, capsys):
    target = ["--target", server.target]
    with fresh_collection(stub) as name:
        index(stub, name, documents())
        # (stdout is not asserted: the session server's llama.cpp loader swaps sys.stdout process-wide)
        assert main(["alias", "create", "cli-alias", name, *target]) == 0
        assert {a.alias: a.collection for a in stub.ListAliases(pb.ListAliasesRequest()).aliases}["cli-alias"] == name
        assert main(["snapshot", "create", "cli-alias", *target]) == 0
        snapshot = stub.ListSnapshots(pb.ListSnapshotsRequest(collection=name)).snapshots[0].name
        archive = tmp_path / "carried.snapshot"
        assert main(["snapshot", "download", snapshot, str(archive), *target]) == 0
        assert main(["snapshot", "delete", snapshot, *target]) == 0
        assert not stub.ListSnapshots(pb.ListSnapshotsRequest(collection=name)).snapshots
        assert main(["snapshot", "upload", str(archive), *target]) == 0
        assert main(["snapshot", "restore", snapshot, f"{name}-copy", *target]) == 0
        try:
            assert stored(stub, f"{name}-copy") == stored(stub, name)
            # A server-side refusal is a status line and exit code 1, not a traceback.
            assert main(["snapshot", "restore", snapshot, f"{name}-copy", *target]) == 1
            # (The in-process session server may log to stderr meanwhile, e.g. llama.cpp loading its kernels.)
            err = capsys.readouterr().err
            assert [line for line in err.splitlines() if line.startswith("error:")][0].startswith("error: ALREADY_EXISTS:")
            assert "Traceback" not in err
        finally:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=f"{name}-copy"))
            main(["snapshot", "delete", snapshot, *target])
            main(["alias", "delete", "cli-alias", *target])
