"""Collections with backend "qdrant" through the API, on qdrant-client's local mode under the index dir: create,
bulk index with acks, replace, delete, filters, every search mode, the collection coming back after a restart
(its config lives in Qdrant, not in the index dir), and precise errors for what the backend does not take."""

from __future__ import annotations

import grpc
import pytest
from conftest import field_violation

from conftest import ServerProcess, ids, index, search
from searchsvc.v1 import searchsvc_pb2 as pb

DOCS = {
    "tomato": ("Tomatoes are red fruits that ripen in summer.", {"kind": "food"}),
    "grass": ("Grass is green and grows in fields.", {"kind": "plant"}),
    "sky": ("The clear sky is blue during the day.", {"kind": "nature"}),
    "basil": ("Basil is a green herb used with tomatoes.", {"kind": "food"}),
}


def docs(**changes) -> list[pb.Document]:
    texts = {**DOCS, **changes}
    return [pb.Document(id=i, text=t, metadata=m) for i, (t, m) in texts.items()]


def test_a_qdrant_collection_indexes_searches_and_survives_a_restart(tmp_path):
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        created = stub.CreateCollection(pb.CreateCollectionRequest(name="q", config=pb.CollectionConfig(backend="qdrant")))
        assert created.config.backend == "qdrant" and created.dense_index_in_use == "qdrant"
        assert created.config.keyword_avg_terms == created.config.chunk_size // 2  # BM25's fixed average length
        acks = index(stub, "q", docs(), batch_size=2)
        assert [a.indexed_count for a in acks] == [2, 2] and all(a.failed_count == 0 for a in acks)
        assert ids(search(stub, "q", "red tomatoes", mode=pb.SEARCH_MODE_KEYWORD))[0] == "tomato"
        assert ids(search(stub, "q", "what colour is the sky", mode=pb.SEARCH_MODE_DENSE, top_k=1)) == ["sky"]
        hybrid = search(stub, "q", "green herb", explain=True)
        assert ids(hybrid)[0] == "basil" and hybrid.hits[0].explanation.keyword.rank == 1
        assert set(ids(search(stub, "q", "green", filter={"kind": "food"}))) == {"basil", "tomato"}  # no grass
        assert ids(search(stub, "q", "green", mode=pb.SEARCH_MODE_KEYWORD, filter={"kind": "food"})) == ["basil"]
        # Answers over what the Qdrant collection retrieved, quoted from its chunks.
        answer = stub.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection="q", query="What colour is grass?"),
                                              extractive=True), timeout=120)
        assert answer.kind == pb.ANSWER_KIND_EXTRACTIVE and answer.citations[0].document_id == "grass"
        assert all(c.quote in answer.context[c.source - 1].text for c in answer.citations)
        # Re-sending replaces; deletes remove; the counts follow.
        (ack,) = index(stub, "q", [pb.Document(id="sky", text="The night sky is dark.", metadata={"kind": "nature"})])
        assert ack.replaced_count == 1
        assert "sky" not in ids(search(stub, "q", "blue", mode=pb.SEARCH_MODE_KEYWORD))
        deleted = stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="q", ids=["grass", "nothing"]))
        assert (deleted.deleted_count, deleted.not_found_count) == (1, 1)
        got = stub.GetCollection(pb.GetCollectionRequest(name="q"))
        assert (got.document_count, got.chunk_count) == (3, 3)
        assert not (tmp_path / "q").exists() and (tmp_path / ".qdrant").is_dir()  # stored in Qdrant, not the index dir
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        names = [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]
        assert names == ["q"]
        assert ids(search(stub, "q", "night sky", mode=pb.SEARCH_MODE_KEYWORD))[0] == "sky"
        assert "grass" not in ids(search(stub, "q", "green", top_k=10))
        with pytest.raises(grpc.RpcError) as err:
            stub.ReembedCollection(pb.ReembedCollectionRequest(name="q", embedding_model="multilingual-e5-small"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="q"))
    with ServerProcess(tmp_path) as server:
        assert list(server.stub().ListCollections(pb.ListCollectionsRequest()).collections) == []


@pytest.mark.parametrize("config, field", [
    (pb.CollectionConfig(backend="cassandra"), "config.backend"),
    (pb.CollectionConfig(backend="qdrant", dense_index=pb.DenseIndexConfig(kind="hnsw")), "config.dense_index"),
    (pb.CollectionConfig(backend="embedded", keyword_avg_terms=100), "config.keyword_avg_terms"),  # tantivy's is exact
    (pb.CollectionConfig(backend="qdrant", keyword_avg_terms=-1), "config.keyword_avg_terms"),
])
def test_bad_backend_configs_are_rejected_by_field(stub, config, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="bad", config=config))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violation(err.value) == field


def test_an_unreachable_cluster_is_unavailable_and_does_not_stop_the_server(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SEARCHSVC_QDRANT__URL": f"http://127.0.0.1:{port}", "SEARCHSVC_QDRANT__TIMEOUT_S": "2"}
    with ServerProcess(tmp_path, env=env) as server:  # starts: its Qdrant collections are looked up at first use
        stub = server.stub()
        for call in (
            lambda: stub.CreateCollection(pb.CreateCollectionRequest(name="q", config=pb.CollectionConfig(backend="qdrant")), timeout=30),
            lambda: search(stub, "q", "anything"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "retry" in err.value.details()
        stub.CreateCollection(pb.CreateCollectionRequest(name="local", config=pb.CollectionConfig(refresh_interval_ms=-1)))
        # embedded collections are unaffected
        index(stub, "local", docs())
        assert ids(search(stub, "local", "red tomatoes", mode=pb.SEARCH_MODE_KEYWORD))[0] == "tomato"


def test_move_to_qdrant_copies_an_embedded_collection_that_then_answers_the_same(tmp_path):
    import os
    import subprocess
    import sys

    def move(*extra):
        env = {**os.environ, "SEARCHSVC_TORCH_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "searchsvc", "move-to-qdrant", "m", "--index-dir", str(tmp_path), *extra],
                              capture_output=True, text=True, env=env, timeout=300)

    queries = [("red tomatoes", pb.SEARCH_MODE_KEYWORD), ("colour of the sky", pb.SEARCH_MODE_DENSE), ("green herb", pb.SEARCH_MODE_HYBRID)]

    def answers(stub):
        return [[(h.chunk_id, h.score) for h in search(stub, "m", q, mode=mode).hits] for q, mode in queries]

    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        stub.CreateCollection(pb.CreateCollectionRequest(name="m", config=pb.CollectionConfig(refresh_interval_ms=-1)))
        index(stub, "m", docs())
        before = answers(stub)
        refused = move()  # the server holds the collection's log
        assert refused.returncode == 1 and "stop the server first" in refused.stderr
    moved = move()
    assert moved.returncode == 0, moved.stderr
    assert "4 documents, 4 chunks" in moved.stdout and not (tmp_path / "m").exists()
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        got = stub.GetCollection(pb.GetCollectionRequest(name="m"))
        assert (got.config.backend, got.document_count, got.chunk_count) == ("qdrant", 4, 4)
        after = answers(stub)
        assert [[c for c, _ in hits] for hits in after] == [[c for c, _ in hits] for hits in before]
        assert [[round(s, 4) for _, s in hits] for hits in after] == [[round(s, 4) for _, s in hits] for hits in before]
