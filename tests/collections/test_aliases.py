"""Aliases (issue 19): second names every collection RPC accepts, updated atomically, durable across kill -9,
and re-pointed under concurrent searches without a torn or failed one."""

from __future__ import annotations

import threading

import grpc
import pytest

from conftest import ServerProcess, fresh_collection, index
from searchsvc.v1 import searchsvc_pb2 as pb


def create(alias: str, collection: str) -> pb.AliasAction:
    return pb.AliasAction(create=pb.Alias(alias=alias, collection=collection))


def repoint(alias: str, collection: str) -> pb.AliasAction:
    return pb.AliasAction(repoint=pb.Alias(alias=alias, collection=collection))


def delete(alias: str) -> pb.AliasAction:
    return pb.AliasAction(delete=alias)


def aliases(stub) -> dict[str, str]:
    return {a.alias: a.collection for a in stub.ListAliases(pb.ListAliasesRequest()).aliases}


@pytest.fixture
def two(stub):
    with fresh_collection(stub) as v1, fresh_collection(stub) as v2:
        index(stub, v1, [pb.Document(id="one", text="the first version of the corpus")])
        index(stub, v2, [pb.Document(id="two", text="the second version of the corpus"),
                         pb.Document(id="three", text="another document of the second version")])
        yield v1, v2
        for alias, target in aliases(stub).items():
            if target in (v1, v2):
                stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[delete(alias)]))


def test_an_alias_works_wherever_a_collection_name_does(stub, two):
    v1, v2 = two
    stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[create("docs-alias", v1)]))
    assert aliases(stub)["docs-alias"] == v1
    # kept in this server's aliases file (a Qdrant-backed collection's would be "qdrant": test_qdrant_cluster.py)
    assert {a.alias: a.backend for a in stub.ListAliases(pb.ListAliasesRequest()).aliases}["docs-alias"] == "embedded"
    assert stub.GetCollection(pb.GetCollectionRequest(name="docs-alias")).name == v1
    hits = stub.Search(pb.SearchRequest(collection="docs-alias", query="corpus version")).hits
    assert [(h.document_id, h.collection) for h in hits] == [("one", v1)]
    index(stub, "docs-alias", [pb.Document(id="four", text="written through the alias")])
    assert stub.CountDocuments(pb.CountDocumentsRequest(collection=v1)).count == 2
    assert stub.GetDocuments(pb.GetDocumentsRequest(collection="docs-alias", ids=["four"])).documents[0].text == "written through the alias"
    # An alias and its collection in one search: searched once.
    both = stub.Search(pb.SearchRequest(collections=["docs-alias", v1], query="alias"))
    assert [h.document_id for h in both.hits].count("four") == 1
    # Re-pointed in one call: the next search sees the other collection.
    updated = stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[repoint("docs-alias", v2)]))
    assert {a.alias: a.collection for a in updated.aliases}["docs-alias"] == v2
    assert {h.document_id for h in stub.Search(pb.SearchRequest(collection="docs-alias", query="corpus version")).hits} == {"two", "three"}


def test_updates_are_all_or_nothing(stub, two):
    v1, v2 = two
    before = aliases(stub)
    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[create("a-ok", v1), create("a-bad", "no-such-collection")]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "actions[1].create.collection" in err.value.details()
    assert aliases(stub) == before  # the first action did not happen either


@pytest.mark.parametrize("actions, code, where", [
    (lambda v1, v2: [create("x-1", v1), create("x-1", v2)], grpc.StatusCode.ALREADY_EXISTS, "actions[1]"),
    (lambda v1, v2: [create(v2, v1)], grpc.StatusCode.ALREADY_EXISTS, "a collection is named"),
    (lambda v1, v2: [create("x-2", v1), create("x-3", "x-2")], grpc.StatusCode.FAILED_PRECONDITION, "is an alias"),
    (lambda v1, v2: [repoint("x-4", v1)], grpc.StatusCode.NOT_FOUND, "use create"),
    (lambda v1, v2: [delete("x-5")], grpc.StatusCode.NOT_FOUND, "no alias"),
    (lambda v1, v2: [create("bad/name", v1)], grpc.StatusCode.INVALID_ARGUMENT, "actions[0].create.alias"),
    (lambda v1, v2: [pb.AliasAction()], grpc.StatusCode.INVALID_ARGUMENT, "actions[0]"),
    (lambda v1, v2: [], grpc.StatusCode.INVALID_ARGUMENT, "actions"),
])
def test_bad_actions(stub, two, actions, code, where):
    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateAliases(pb.UpdateAliasesRequest(actions=actions(*two)))
    assert err.value.code() == code and where in err.value.details()


def test_names_are_shared_between_collections_and_aliases(stub, two):
    v1, _ = two
    stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[create("taken-alias", v1)]))
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="taken-alias"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:  # a collection an alias points to
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=v1))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "taken-alias" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # an alias is not deleted as a collection
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="taken-alias"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetCollection(pb.GetCollectionRequest(name=v1)).document_count == 1


def test_repointing_under_concurrent_searches(stub, two):
    """A thread searching through the alias while another re-points it back and forth sees only whole results
    from one collection or the other, never an error."""
    v1, v2 = two
    stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[create("swapped", v1)]))
    results: list[frozenset] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def searching():
        while not stop.is_set():
            try:
                hits = stub.Search(pb.SearchRequest(collection="swapped", query="version corpus document", top_k=10)).hits
                results.append(frozenset((h.collection, h.document_id) for h in hits))
            except Exception as exc:  # noqa: BLE001 - any failure fails the test below
                failures.append(exc)

    threads = [threading.Thread(target=searching) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(40):
        stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[repoint("swapped", v2 if i % 2 == 0 else v1)]))
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    whole = {frozenset({(v1, "one")}), frozenset({(v2, "two"), (v2, "three")})}
    assert set(results) <= whole and len(results) > 10
    assert set(results) == whole  # both were seen


def test_aliases_survive_kill_9(tmp_path):
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        for name in ("base-v1", "base-v2"):  # external vectors: no model to load at either start
            stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(embedding_model="external", dimension=2)))
        stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[create("base", "base-v1"), create("other", "base-v2")]))
        stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[repoint("base", "base-v2"), delete("other")]))
        server.kill9()
    with ServerProcess(tmp_path) as server:
        assert aliases(server.stub()) == {"base": "base-v2"}
        assert server.stub().GetCollection(pb.GetCollectionRequest(name="base")).name == "base-v2"
