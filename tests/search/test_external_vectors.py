"""Bring-your-own vectors through the API: a collection with embedding_model "external", documents that carry
their vectors, searches by query_vector (DENSE without text, HYBRID with text), the vectors surviving a restart,
and precise INVALID_ARGUMENT for wrong dimensions, non-finite values and missing vectors."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from conftest import SYNC_REFRESH, ServerProcess, field_violation, ids, index, search
from searchsvc.v1 import searchsvc_pb2 as pb

DIM = 8
RNG = np.random.default_rng(7)
VECTORS = {name: RNG.standard_normal(DIM).astype(np.float32) for name in ("red", "green", "blue", "cyan")}
TEXTS = {
    "red": "Red is the colour of ripe tomatoes.",
    "green": "Green is the colour of grass and leaves.",
    "blue": "Blue is the colour of the clear sky.",
    "cyan": "Cyan mixes green and blue light.",
}


def external_docs(**extra) -> list[pb.Document]:
    return [pb.Document(id=n, text=TEXTS[n], vector=VECTORS[n].tolist(), **extra) for n in VECTORS]


@pytest.fixture
def external(stub):
    name = "ext-vectors"
    config = pb.CollectionConfig(embedding_model="external", dimension=DIM, refresh_interval_ms=SYNC_REFRESH)
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))
    yield name
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def nearest(query: np.ndarray) -> list[str]:
    """The exact cosine ranking, computed here."""
    cos = {n: float(v @ query / np.linalg.norm(v) / np.linalg.norm(query)) for n, v in VECTORS.items()}
    return sorted(cos, key=lambda n: -cos[n])


def test_external_collection_indexes_and_searches_by_vector(stub, external):
    info = stub.GetCollection(pb.GetCollectionRequest(name=external))
    assert (info.config.embedding_model, info.config.dimension, info.dimension) == ("external", DIM, DIM)
    acks = index(stub, external, external_docs(), batch_size=4)
    assert acks[0].indexed_count == 4 and not acks[0].errors
    assert stub.GetCollection(pb.GetCollectionRequest(name=external)).chunk_count == 4, "one chunk per vector document"

    query = VECTORS["blue"] + 0.3 * VECTORS["green"]
    dense = search(stub, external, "", mode=pb.SEARCH_MODE_DENSE, query_vector=(3 * query).tolist(), top_k=4)
    assert ids(dense) == nearest(query), "cosine order, whatever the query vector's length"
    assert dense.hits[0].score == pytest.approx(max(
        float(v @ query / np.linalg.norm(v) / np.linalg.norm(query)) for v in VECTORS.values()), abs=1e-5)

    hybrid = search(stub, external, "colour of grass", query_vector=VECTORS["green"].tolist(), top_k=2)
    assert ids(hybrid)[0] == "green", "both legs agree on green"
    keyword = search(stub, external, "tomatoes", mode=pb.SEARCH_MODE_KEYWORD)
    assert ids(keyword) == ["red"]
    cut = search(stub, external, "", mode=pb.SEARCH_MODE_DENSE, query_vector=VECTORS["red"].tolist(), similarity_cutoff=0.999)
    assert ids(cut) == ["red"], "the cutoff reads the cosine to the caller's query vector"


@pytest.mark.parametrize(
    "vector, message",
    [([1.0] * (DIM - 1), "dimension is 8"), ([1.0] * (DIM - 1) + [math.nan], "not finite"),
     ([1.0] * (DIM - 1) + [math.inf], "not finite"), ([0.0] * DIM, "all zeros")],
)
def test_bad_document_vectors_are_rejected_by_field(stub, external, vector, message):
    docs = [pb.Document(id="ok", text="fine", vector=VECTORS["red"].tolist()), pb.Document(id="bad", text="x", vector=vector)]
    ack = index(stub, external, docs, batch_size=2)[0]
    assert ack.indexed_count == 1
    [error] = ack.errors
    assert (error.index, error.field, error.code) == (1, "documents[1].vector", grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert message in error.message


def test_external_collection_requires_vectors(stub, external):
    ack = index(stub, external, [pb.Document(id="novec", text="no vector here")])[0]
    assert ack.indexed_count == 0 and ack.errors[0].field == "documents[0].vector"
    for request in (dict(query="sky"), dict(query="sky", mode=pb.SEARCH_MODE_DENSE)):  # the dense leg needs a vector
        with pytest.raises(grpc.RpcError) as err:
            search(stub, external, **request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == "query_vector"
    for bad, message in (([1.0] * 3, "dimension"), ([math.nan] * DIM, "not finite")):
        with pytest.raises(grpc.RpcError) as err:
            search(stub, external, "sky", query_vector=bad)
        assert field_violation(err.value) == "query_vector" and message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        search(stub, external, "", mode=pb.SEARCH_MODE_HYBRID, query_vector=VECTORS["red"].tolist())
    assert field_violation(err.value) == "query", "the keyword leg needs the text"


@pytest.mark.parametrize(
    "config, field",
    [(pb.CollectionConfig(embedding_model="external"), "config.dimension"),
     (pb.CollectionConfig(embedding_model="external", dimension=5000), "config.dimension"),
     (pb.CollectionConfig(dimension=16), "config.dimension")],
)
def test_external_config_is_checked(stub, config, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="ext-bad", config=config))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == field


def test_a_model_collection_takes_a_callers_vectors_too(stub, collection):
    info = stub.GetCollection(pb.GetCollectionRequest(name=collection))
    index(stub, collection, [pb.Document(id="text", text="Paris is the capital of France.")])
    rng = np.random.default_rng(1)
    mine = rng.standard_normal(info.dimension).astype(np.float32)
    index(stub, collection, [pb.Document(id="mine", text="A document embedded by its sender.", vector=mine.tolist())])
    hit = search(stub, collection, "", mode=pb.SEARCH_MODE_DENSE, query_vector=mine.tolist(), top_k=1, explain=True)
    assert ids(hit) == ["mine"] and hit.hits[0].score == pytest.approx(1.0, abs=1e-5)
    # Without a query_vector the model embeds the query, as before.
    assert ids(search(stub, collection, "capital of France", mode=pb.SEARCH_MODE_DENSE, top_k=1)) == ["text"]
    with pytest.raises(grpc.RpcError) as err:
        search(stub, collection, "x", query_vector=[1.0, 2.0])
    assert field_violation(err.value) == "query_vector"


def test_external_vectors_survive_a_restart(tmp_path):
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        config = pb.CollectionConfig(embedding_model="external", dimension=DIM)
        stub.CreateCollection(pb.CreateCollectionRequest(name="ext", config=config))
        index(stub, "ext", external_docs(), batch_size=4)
        server.kill9()  # acked means durable: the vectors come back from the log
    with ServerProcess(tmp_path, env={"SEARCHSVC_LOG_LEVEL": "INFO"}) as server:
        stub = server.stub()
        for name, vector in VECTORS.items():
            hit = search(stub, "ext", "", mode=pb.SEARCH_MODE_DENSE, query_vector=vector.tolist(), top_k=1)
            assert ids(hit) == [name] and hit.hits[0].score == pytest.approx(1.0, abs=1e-5)
        # Its only collection runs no model, so the server loaded none: no torch (~200 MB), no inference runtime.
        def mapped(library: str) -> bool:
            return library in open(f"/proc/{server.proc.pid}/maps").read()

        assert not mapped("libtorch") and not mapped("onnxruntime")
        # A collection that needs a model loads it when it is created.
        stub.CreateCollection(pb.CreateCollectionRequest(name="text"))
        index(stub, "text", [pb.Document(id=n, text=t) for n, t in TEXTS.items()], batch_size=4)
        assert ids(search(stub, "text", "ripe tomatoes", mode=pb.SEARCH_MODE_DENSE, top_k=1)) == ["red"]
        assert mapped("onnxruntime")


def test_reembed_into_external_is_refused_and_out_of_it_works(stub, external, collection):
    from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL

    with pytest.raises(grpc.RpcError) as err:
        stub.ReembedCollection(pb.ReembedCollectionRequest(name=collection, embedding_model="external"), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == "embedding_model"

    index(stub, external, external_docs(), batch_size=4)
    after = stub.ReembedCollection(pb.ReembedCollectionRequest(name=external, embedding_model=DEFAULT_EMBEDDING_MODEL), timeout=120)
    assert (after.config.embedding_model, after.config.dimension, after.dimension) == (DEFAULT_EMBEDDING_MODEL, 0, 384)
    # The texts are now embedded by the model: a text query finds them without any vector.
    assert ids(search(stub, external, "colour of grass and leaves", mode=pb.SEARCH_MODE_DENSE, top_k=1)) == ["green"]
