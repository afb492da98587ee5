"""ReembedCollection: a collection's chunks re-embedded with another model replace the old version atomically,
against the session's loopback server and, for crash recovery, real directories on disk."""

from __future__ import annotations

import json
import shutil

import grpc
import pytest

from conftest import CORPUS, SYNC_REFRESH, doc, ids, index, search, server_settings
from searchsvc.collections.catalog import Catalog
from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, TRAINED_MANIFEST, ModelRegistry, resolve_model_path
from searchsvc.v1 import searchsvc_pb2 as pb

SHORT_MODEL = "minilm-first-8-tokens"  # an id: a directory under <index_dir>/models with a manifest


def short_model(models_dir):
    """A real, different embedder: MiniLM reading only the first 8 tokens, so long texts embed differently."""
    from sentence_transformers import SentenceTransformer

    path = models_dir / SHORT_MODEL
    if not path.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        model = SentenceTransformer(resolve_model_path(DEFAULT_EMBEDDING_MODEL), device="cpu")
        model.max_seq_length = 8
        model.save(str(path))
        (path / TRAINED_MANIFEST).write_text(json.dumps({"kind": "embedder", "base_model": DEFAULT_EMBEDDING_MODEL}))
    return SentenceTransformer(str(path), device="cpu")


def test_reembed_swaps_in_the_new_model_by_id(server, stub, collection):
    index(stub, collection, CORPUS)
    before = stub.GetCollection(pb.GetCollectionRequest(name=collection))
    query = "which city is the capital of South Korea"
    old_top = search(stub, collection, query, mode=pb.SEARCH_MODE_DENSE, top_k=1, explain=True).hits[0]
    new_model = short_model(server.settings.index_dir / "models")

    after = stub.ReembedCollection(pb.ReembedCollectionRequest(name=collection, embedding_model=SHORT_MODEL), timeout=120)
    assert after.config.embedding_model == SHORT_MODEL
    assert (after.document_count, after.chunk_count) == (before.document_count, before.chunk_count)

    hit = search(stub, collection, query, mode=pb.SEARCH_MODE_DENSE, top_k=1, explain=True).hits[0]
    q, d = new_model.encode([query, f"{hit.title}\n{hit.text}"], normalize_embeddings=True)
    # The stored vectors are the new model's (to ~2e-4 where passages are embedded in bf16: sentence_engine auto
    # on a CPU with AMX; another model is off by far more).
    assert hit.explanation.dense.score == pytest.approx(float(q @ d), abs=2e-3)
    if hit.chunk_id == old_top.chunk_id:
        assert hit.explanation.dense.score != pytest.approx(old_top.explanation.dense.score, abs=1e-3)
    # Keyword search and writes work on the new version.
    assert ids(search(stub, collection, "Eiffel Tower", mode=pb.SEARCH_MODE_KEYWORD, top_k=1)) == ["paris"]
    index(stub, collection, [doc("rome", "Rome is the capital of Italy, home of the Colosseum.", "Rome")])
    assert "rome" in ids(search(stub, collection, "Colosseum in Italy", top_k=3))


def test_reembed_rejects_bad_requests_and_keeps_the_data(stub, collection):
    index(stub, collection, CORPUS[:2])
    cases = [
        (pb.ReembedCollectionRequest(name=collection, embedding_model=""), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ReembedCollectionRequest(name=collection, embedding_model="/no/such/model"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ReembedCollectionRequest(name=collection, embedding_model=DEFAULT_EMBEDDING_MODEL), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ReembedCollectionRequest(name="no-such-collection", embedding_model="x"), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.ReembedCollection(request, timeout=60)
        assert err.value.code() == code, request
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert "embedding_model" in err.value.details()
    got = stub.GetCollection(pb.GetCollectionRequest(name=collection))
    assert got.config.embedding_model == DEFAULT_EMBEDDING_MODEL and got.document_count == 2
    assert ids(search(stub, collection, "purring felines", top_k=1)) == ["cats"]


@pytest.fixture
def catalog(tmp_path):
    settings = server_settings(tmp_path / "idx")
    models = ModelRegistry(models_dir=settings.models_dir, cache_dir=settings.derived_models_dir)
    (tmp_path / "idx" / "models").mkdir(parents=True)
    short_model(tmp_path / "idx" / "models")
    cat = Catalog(settings, models)
    cat.open_all()
    yield cat
    cat.close()


def _create(catalog, name, docs):
    from searchsvc.domain.types import CollectionConfig, Document

    coll = catalog.create(name, CollectionConfig("", "", 0, 0, refresh_interval_ms=SYNC_REFRESH))
    coll.index_documents([Document(id=d.id, text=d.text, title=d.title, metadata=dict(d.metadata)) for d in docs])
    return coll


def test_a_write_made_during_the_reembed_is_in_the_new_version(catalog, monkeypatch):
    from searchsvc.domain.types import Document
    from searchsvc.storage.embedded.collection import Collection

    coll = _create(catalog, "live", CORPUS)
    version = coll.version
    original = Collection.chunks

    def chunks_then_write(self):
        snapshot = original(self)
        # Lands after the bulk of the vectors were computed: must be embedded at the swap, not lost.
        self.index_documents([Document(id="rome", text="Rome is the capital of Italy.")])
        return snapshot

    monkeypatch.setattr(Collection, "chunks", chunks_then_write)
    new = catalog.reembed("live", SHORT_MODEL)
    assert new is catalog.get("live") and new is not coll and coll.closed
    assert new.document_count == len(CORPUS) + 1 and new.version == version + 2  # the write, then the new version
    assert new.dense.get_nodes(new.dense.chunk_ids_of("rome"))
    with pytest.raises(Exception, match="re-embed with a new model; retry"):
        coll.index_documents([Document(id="late", text="too late for the old version")])
    assert not list(catalog.root.glob(".reembed-*")) and not list(catalog.root.glob(".old-*"))


def _stage_crash(catalog, tmp_path, complete: bool):
    """Leave the disk as a crash would: the new version staged (complete or not) beside the live directory."""
    from searchsvc.storage.embedded.collection import Collection

    coll = _create(catalog, "docs", CORPUS)
    original = Collection.write_reembedded
    root = catalog.root

    def crash_in_swap(self, target, config, dense, done):
        writer = original(self, target, config, dense, done)
        writer.__enter__()
        writer.__exit__(None, None, None)
        if not complete:
            (target / "CURRENT").unlink()
        else:
            shutil.move(str(self.path), str(root / ".old-docs"))  # the first of the swap's two renames
        shutil.copytree(target, tmp_path / "staged")
        raise SystemExit("crash")

    try:
        Collection.write_reembedded = crash_in_swap
        with pytest.raises(SystemExit):
            catalog.reembed("docs", SHORT_MODEL)
    finally:
        Collection.write_reembedded = original
    coll.close(checkpoint=False)
    catalog._collections.clear()
    shutil.copytree(tmp_path / "staged", root / ".reembed-docs")  # reembed's cleanup ran; a crash would not


@pytest.mark.parametrize("complete", [True, False])
def test_restart_after_a_crash_mid_reembed_finds_one_whole_version(catalog, tmp_path, complete):
    _stage_crash(catalog, tmp_path, complete)
    reopened = Catalog(catalog.settings, catalog.models)
    reopened.open_all()
    try:
        coll = reopened.get("docs")
        # Complete staging with the live directory moved away: the swap is finished. Incomplete: discarded.
        assert coll.config.embedding_model == (SHORT_MODEL if complete else DEFAULT_EMBEDDING_MODEL)
        assert coll.document_count == len(CORPUS)
        vector = coll.dense.embed_query("capital of France")
        assert coll.dense.search(vector, 1)[0].chunk_id == "paris#0"
        assert not list(reopened.root.glob(".reembed-*")) and not list(reopened.root.glob(".old-*"))
    finally:
        reopened.close()
