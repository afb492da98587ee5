"""The Qdrant stand-in's collection aliases (tests/qdrant_standin.py), driven only through the real remote
`QdrantClient`, so that the requests and answers have the shapes qdrant-client sends and parses.

What Qdrant does, and the stand-in copies (qdrant/qdrant: toc/collection_meta_ops.rs `update_aliases`,
tests/openapi/test_alias.py): an alias works wherever a collection name does; an alias named like a collection is a
409, one of a missing collection a 404, a collection named like an alias a 400; deleting a collection drops its
aliases; a batch of alias actions applies in order, and one that fails keeps the actions before it.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("qdrant_edge", reason="qdrant-edge-py (the dev extra) runs the Qdrant stand-in")

from qdrant_client import QdrantClient, models  # noqa: E402
from qdrant_client.http.exceptions import UnexpectedResponse  # noqa: E402
from qdrant_standin import StandInProcess  # noqa: E402

VECTORS = {"dense": models.VectorParams(size=4, distance=models.Distance.COSINE)}


@pytest.fixture
def standin(tmp_path):
    process = StandInProcess(tmp_path / "qdrant").start()  # one per test: aliases are server-wide state
    yield process
    process.stop()


@pytest.fixture
def client(standin):
    # No version check: qdrant-client runs it in a background thread, which can outlive a short test's stand-in
    # (a stray "Failed to obtain server version" warning).
    client = QdrantClient(url=standin.url, check_compatibility=False)
    yield client
    client.close()


def create_alias(collection: str, alias: str) -> models.CreateAliasOperation:
    return models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))


def delete_alias(alias: str) -> models.DeleteAliasOperation:
    return models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))


def rename_alias(old: str, new: str) -> models.RenameAliasOperation:
    return models.RenameAliasOperation(rename_alias=models.RenameAlias(old_alias_name=old, new_alias_name=new))


def aliases(client: QdrantClient, collection: str | None = None) -> list[tuple[str, str]]:
    found = client.get_aliases() if collection is None else client.get_collection_aliases(collection)
    return [(a.alias_name, a.collection_name) for a in found.aliases]


def collections(client: QdrantClient, *names: str) -> None:
    for name in names:
        client.create_collection(name, vectors_config=VECTORS)


def refused(client: QdrantClient, *actions) -> UnexpectedResponse:
    with pytest.raises(UnexpectedResponse) as exc:
        client.update_collection_aliases(change_aliases_operations=list(actions))
    return exc.value


def test_create_list_and_collection_aliases(client):
    collections(client, "blue", "green")
    assert aliases(client) == []

    assert client.update_collection_aliases(change_aliases_operations=[
        create_alias("blue", "prod"), create_alias("blue", "live"), create_alias("green", "next")]) is True

    assert aliases(client) == [("live", "blue"), ("prod", "blue"), ("next", "green")]
    assert aliases(client, "blue") == [("live", "blue"), ("prod", "blue")]
    assert aliases(client, "green") == [("next", "green")]
    assert aliases(client, "unknown") == []  # as in Qdrant: no check that the collection exists
    assert [c.name for c in client.get_collections().collections] == ["blue", "green"]  # aliases are not collections

    client.update_collection_aliases(change_aliases_operations=[rename_alias("live", "staging"), delete_alias("next")])
    assert aliases(client) == [("prod", "blue"), ("staging", "blue")]


def test_swap_in_one_call_repoints_the_alias(client):
    collections(client, "v1", "v2")
    client.upsert("v2", points=[models.PointStruct(id=1, vector={"dense": [1, 0, 0, 0]}, payload={"v": 2})])
    client.update_collection_aliases(change_aliases_operations=[create_alias("v1", "prod")])
    assert client.count("prod").count == 0

    client.update_collection_aliases(change_aliases_operations=[delete_alias("prod"), create_alias("v2", "prod")])

    assert aliases(client) == [("prod", "v2")]
    assert aliases(client, "v1") == []
    assert client.count("prod").count == 1
    # Qdrant re-points an existing alias on create_alias too, without an error
    client.update_collection_aliases(change_aliases_operations=[create_alias("v1", "prod")])
    assert aliases(client) == [("prod", "v1")]


def test_a_failing_action_keeps_the_ones_before_it(client, standin):
    collections(client, "blue", "green")
    client.update_collection_aliases(change_aliases_operations=[create_alias("blue", "prod")])

    missing = refused(client, delete_alias("prod"), create_alias("green", "next"), create_alias("gone", "x"))
    assert missing.status_code == 404
    assert "Collection `gone` doesn't exist" in missing.content.decode()
    assert dict(aliases(client)) == {"next": "green"}  # the two actions before the failing one stay, as in Qdrant

    named_like_a_collection = refused(client, create_alias("blue", "prod"), create_alias("blue", "green"))
    assert named_like_a_collection.status_code == 409
    assert "Collection `green` already exists" in named_like_a_collection.content.decode()

    no_such_alias = refused(client, rename_alias("nope", "other"), create_alias("green", "later"))
    assert no_such_alias.status_code == 404
    assert dict(aliases(client)) == {"next": "green", "prod": "blue"}  # nothing after a failure
    assert json.loads((standin.path / "aliases.json").read_text()) == {"next": "green", "prod": "blue"}
    assert client.count("prod").count == 0  # resolves


def test_deleting_a_missing_alias_is_no_error(client):
    # Qdrant's DeleteAlias: "Delete alias if exists"
    assert client.update_collection_aliases(change_aliases_operations=[delete_alias("never-made")]) is True


def test_alias_works_as_a_collection_name(client):
    collections(client, "docs")
    client.update_collection_aliases(change_aliases_operations=[create_alias("docs", "current")])

    client.upsert("current", points=[models.PointStruct(id=i, vector={"dense": [1, i, 0, 0]}, payload={"n": i})
                                     for i in range(1, 4)])
    assert client.count("docs").count == 3
    assert client.count("current").count == 3
    assert client.collection_exists("current")
    assert client.get_collection("current").config.params.vectors["dense"].size == 4
    hits = client.query_points("current", query=[1, 1, 0, 0], using="dense", limit=1).points
    assert [str(h.id) for h in hits] == ["1"]  # the stand-in answers ids as strings
    assert [r.payload for r in client.retrieve("current", ids=[2])] == [{"n": 2}]

    with pytest.raises(UnexpectedResponse) as exc:  # Qdrant: a collection may not take an alias's name (400)
        client.create_collection("current", vectors_config=VECTORS)
    assert exc.value.status_code == 400
    # an alias cannot name another alias: create_alias wants the collection's own name
    assert refused(client, create_alias("current", "other")).status_code == 404


def test_deleting_a_collection_drops_its_aliases(client):
    collections(client, "old", "kept")
    client.update_collection_aliases(change_aliases_operations=[
        create_alias("old", "a"), create_alias("old", "b"), create_alias("kept", "c")])

    assert client.delete_collection("a") is False  # an alias is not resolved for a delete, as in Qdrant
    assert client.count("a").count == 0

    assert client.delete_collection("old") is True
    assert aliases(client) == [("c", "kept")]
    assert not client.collection_exists("a")
    with pytest.raises(UnexpectedResponse) as exc:
        client.count("a")
    assert exc.value.status_code == 404
    # the names are free again: a new collection "old" has no aliases, and "a" may be a collection now
    collections(client, "old", "a")
    assert aliases(client, "old") == []


def test_aliases_survive_a_restart(standin, client):
    collections(client, "blue", "green")
    client.upsert("green", points=[models.PointStruct(id=7, vector={"dense": [0, 1, 0, 0]})])
    client.update_collection_aliases(change_aliases_operations=[create_alias("blue", "prod"), create_alias("green", "next")])

    standin.stop()
    standin.start()  # same path and port: the same client goes on
    assert aliases(client) == [("prod", "blue"), ("next", "green")]
    assert client.count("next").count == 1
    assert [c.name for c in client.get_collections().collections] == ["blue", "green"]  # aliases.json is no collection

    client.update_collection_aliases(change_aliases_operations=[delete_alias("prod")])
    standin.kill9()  # the change was on disk before the answer
    standin.start()
    assert aliases(client) == [("next", "green")]
