"""searchsvc against a Qdrant server by URL, as in production: the remote client, several `searchsvc serve`
processes on one store, and Qdrant's own engine doing the scoring (sparse IDF, filters, deletes, reopening).

Two servers:
- `stand-in` (always): tests/qdrant_standin.py, Qdrant's REST API served by Qdrant's Rust engine
  (qdrant-edge-py). No Qdrant server binary can be installed on the CI machine (none on PyPI, apt or npm; no
  Docker), and qdrant-client's local mode (tests/storage/test_qdrant_backend.py) is a Python emulation that only one
  process can open.
- `QDRANT_URL` (only when that is set, e.g. QDRANT_URL=http://127.0.0.1:6333, plus QDRANT_API_KEY if it needs
  one): a real Qdrant server or cluster. The tests that restart Qdrant itself run on the stand-in only.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from qdrant_standin import StandInProcess

from conftest import ServerProcess, ids, index, search
from searchsvc.v1 import searchsvc_pb2 as pb

pytest.importorskip("qdrant_edge", reason="qdrant-edge-py (the dev extra) runs the Qdrant stand-in")

URL = os.environ.get("QDRANT_URL", "")

DOCS = [  # (id, text, kind, vector): short texts, so tantivy's one-byte length norms are exact (same BM25 as Qdrant)
    ("tomato", "Tomatoes are red fruits that ripen in summer.", "food", [1, 0, 0, 0]),
    ("grass", "Grass is green and grows in fields.", "plant", [0, 1, 0, 0]),
    ("sky", "The clear sky is blue during the day.", "nature", [0, 0, 1, 0]),
    ("basil", "Basil is a green herb used with tomatoes.", "food", [0.6, 0.8, 0, 0]),
    ("fern", "Ferns are green plants of damp shade, fields and forests.", "plant", [0, 0.8, 0, 0.6]),
]
QUERIES = ["green", "red tomatoes", "green fields", "blue sky in summer", "herb"]


def documents(*names: str) -> list[pb.Document]:
    return [pb.Document(id=i, text=t, metadata={"kind": k}, vector=v) for i, t, k, v in DOCS if not names or i in names]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    process = StandInProcess(tmp_path_factory.mktemp("qdrant")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["stand-in", "QDRANT_URL"])
def qdrant_env(request, standin) -> dict[str, str]:
    """The server settings that point searchsvc at the Qdrant under test."""
    if request.param == "stand-in":
        return {"SEARCHSVC_QDRANT__URL": standin.url}
    if not URL:
        pytest.skip("QDRANT_URL is not set: no real Qdrant server to test against")
    return {"SEARCHSVC_QDRANT__URL": URL, "SEARCHSVC_QDRANT__API_KEY": os.environ.get("QDRANT_API_KEY", "")}


def create(stub, name: str, backend: str = "qdrant", keyword_avg_terms: float = 0) -> None:
    config = pb.CollectionConfig(backend=backend, embedding_model="external", dimension=4, refresh_interval_ms=-1,
                                 keyword_avg_terms=keyword_avg_terms)
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))


def names(stub) -> list[str]:
    return [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]


def keyword_scores(stub, name: str, query: str, **kw) -> list[tuple[str, float]]:
    found = search(stub, name, query, mode=pb.SEARCH_MODE_KEYWORD, explain=True, top_k=10, **kw)
    return [(h.document_id, round(h.explanation.keyword.score, 4)) for h in found.hits]


def test_index_search_filter_delete(tmp_path, qdrant_env):
    name = f"searchsvc-test-{uuid.uuid4().hex[:8]}"
    with ServerProcess(tmp_path, env=qdrant_env) as server:
        stub = server.stub()
        create(stub, name)
        try:
            index(stub, name, documents())
            assert sorted(ids(search(stub, name, "tomatoes", mode=pb.SEARCH_MODE_KEYWORD))) == ["basil", "tomato"]
            assert ids(search(stub, name, "", mode=pb.SEARCH_MODE_DENSE, query_vector=[0, 1, 0, 0], top_k=1)) == ["grass"]
            assert set(ids(search(stub, name, "green", query_vector=[0, 1, 0, 0], filter={"kind": "food"}))) == {"basil", "tomato"}
            stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=["tomato"]))
            assert ids(search(stub, name, "tomatoes", mode=pb.SEARCH_MODE_KEYWORD)) == ["basil"]
        finally:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))
    with ServerProcess(tmp_path, env=qdrant_env) as server:  # the config lived in Qdrant: nothing left behind
        assert name not in names(server.stub())


def test_two_servers_on_one_qdrant_serve_the_same_collections(tmp_path, qdrant_env):
    """The stateless search tier: nothing of a Qdrant collection lives on either server's disk."""
    name = f"shared-{uuid.uuid4().hex[:8]}"
    with ServerProcess(tmp_path / "a", env=qdrant_env) as a, ServerProcess(tmp_path / "b", env=qdrant_env) as b:
        sa, sb = a.stub(), b.stub()
        create(sa, name)
        index(sa, name, documents("tomato", "grass", "sky"))
        assert name in names(sb)  # created through a, listed by b
        assert ids(search(sb, name, "red tomatoes", mode=pb.SEARCH_MODE_KEYWORD)) == ["tomato"]  # indexed through a
        index(sb, name, documents("basil"))
        assert ids(search(sa, name, "herb", mode=pb.SEARCH_MODE_KEYWORD)) == ["basil"]  # and the other way round
        sb.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=["tomato"]))
        assert ids(search(sa, name, "tomatoes", mode=pb.SEARCH_MODE_KEYWORD)) == ["basil"]
        got = sa.GetCollection(pb.GetCollectionRequest(name=name))
        assert (got.document_count, got.chunk_count) == (3, 3)
        # Answers are cached per collection version; the version lives in Qdrant, so b's write reached a's cache key.
        sa.DeleteCollection(pb.DeleteCollectionRequest(name=name))
        assert name not in names(sb)
        with pytest.raises(grpc.RpcError) as err:
            search(sb, name, "green")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_engine_scores_as_the_embedded_backend_through_filters_and_deletes(tmp_path, qdrant_env):
    """Qdrant's IDF over our BM25 term-frequency values gives tantivy's BM25 scores (when the Qdrant collection's
    fixed average length is the documents' true one); dense cosines and filtered results agree; a deleted document
    is gone from every leg at once."""
    from searchsvc.retrieve.analyzers import get_analyzer

    name = f"engine-{uuid.uuid4().hex[:8]}"
    terms = [len(get_analyzer("multilingual").analyze(d.text)) for d in documents()]
    with ServerProcess(tmp_path, env=qdrant_env) as server:
        stub = server.stub()
        create(stub, name, keyword_avg_terms=sum(terms) / len(terms))
        create(stub, "embedded", backend="embedded")
        try:
            for collection in (name, "embedded"):
                index(stub, collection, documents(), batch_size=10)
            for query in QUERIES:
                assert keyword_scores(stub, name, query) == keyword_scores(stub, "embedded", query), query
                assert keyword_scores(stub, name, query, filter={"kind": "plant"}) == keyword_scores(stub, "embedded", query, filter={"kind": "plant"})
            for vector in ([0.1, 0.7, 0.2, 0.3], [0.9, 0.1, 0.3, 0.2]):  # no ties
                dense = [search(stub, c, "", mode=pb.SEARCH_MODE_DENSE, query_vector=vector, explain=True) for c in (name, "embedded")]
                assert [(h.document_id, round(h.score, 5)) for h in dense[0].hits] == [(h.document_id, round(h.score, 5)) for h in dense[1].hits]
            for collection in (name, "embedded"):
                stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=collection, ids=["grass"]))
            for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_HYBRID):
                query = dict(query="green grass fields", mode=mode, query_vector=[0.1, 0.7, 0.2, 0.3], top_k=10)
                found = ids(search(stub, name, **query))
                assert "grass" not in found and found == ids(search(stub, "embedded", **query)), mode
        finally:
            for collection in (name, "embedded"):
                stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection))


def test_acked_documents_survive_qdrant_being_killed(tmp_path, qdrant_env, standin):
    """Acked means Qdrant holds the write (wait=True): kill -9 the engine right after the acks, reopen it from its
    files, and every acked document is found, by the same searchsvc server (which said UNAVAILABLE meanwhile, and
    listed the collection as UNAVAILABLE beside the others)."""
    if qdrant_env["SEARCHSVC_QDRANT__URL"] != standin.url:
        pytest.skip("restarts Qdrant itself: stand-in only")
    name = f"durable-{uuid.uuid4().hex[:8]}"
    with ServerProcess(tmp_path, env={**qdrant_env, "SEARCHSVC_QDRANT__TIMEOUT_S": "3"}) as server:
        stub = server.stub()
        create(stub, name)
        index(stub, name, documents(), batch_size=1)
        before = keyword_scores(stub, name, "green fields")
        standin.kill9()
        try:
            with pytest.raises(grpc.RpcError) as err:
                search(stub, name, "green", mode=pb.SEARCH_MODE_KEYWORD)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            create(stub, "here", backend="embedded")  # listed as usual beside the one that cannot answer
            listed = {c.name: c for c in stub.ListCollections(pb.ListCollectionsRequest()).collections}
            assert listed["here"].state == pb.COLLECTION_STATE_READY
            assert listed[name].state == pb.COLLECTION_STATE_UNAVAILABLE and "retry" in listed[name].state_reason
        finally:
            standin.start()
        assert stub.GetCollection(pb.GetCollectionRequest(name=name)).document_count == len(DOCS)
        assert keyword_scores(stub, name, "green fields") == before
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def self_signed_certificate(tmp_path: Path) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: no certificate to test TLS with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_api_key_layout_and_refusals_reach_qdrant(tmp_path):
    """The connection settings are used as Qdrant expects: https verified against `tls_ca_file`, the `api-key`
    header, the shard/replica layout at creation, write ordering on writes. Refusals come back as precise errors:
    wrong key FAILED_PRECONDITION (an operator must fix it), an untrusted certificate UNAVAILABLE, a Qdrant
    collection whose vectors are not the config's dimension FAILED_PRECONDITION."""
    from searchsvc.collections.catalog import Catalog
    from searchsvc.config import QdrantSettings, load_settings
    from searchsvc.domain.types import CollectionConfig, Document
    from searchsvc.errors import FailedPrecondition, Unavailable
    from searchsvc.retrieve.models import ModelRegistry

    def catalog(side: str, **qdrant) -> Catalog:
        settings = load_settings(index_dir=tmp_path / side, qdrant=QdrantSettings(url=standin.url, timeout_s=5, **qdrant))
        opened = Catalog(settings, ModelRegistry())
        opened.open_all()
        return opened

    cert, key = self_signed_certificate(tmp_path)
    standin = StandInProcess(tmp_path / "q", "--api-key", "s3cret", "--tls-cert", str(cert), "--tls-key", str(key), https=True).start()
    try:
        good = catalog("a", api_key="s3cret", tls_ca_file=cert, shard_number=2, replication_factor=1,
                       write_consistency_factor=1, write_ordering="strong")
        config = CollectionConfig("external", "", 0, 0, dimension=4, backend="qdrant", language="en")
        created = good.create("secure", config)
        created.index_documents([Document("x", "hello there", vector=[1.0, 0.0, 0.0, 0.0])])
        assert [hit.chunk_id for hit in created.keyword_search(created.analyze_query("hello"), 5)] == ["x#0"]
        params = good._qdrant().get_collection("secure").config.params
        assert (params.shard_number, params.replication_factor, params.write_consistency_factor) == (2, 1, 1)

        with pytest.raises(FailedPrecondition, match="credentials"):
            catalog("b", api_key="guess", tls_ca_file=cert).get("secure")
        with pytest.raises(Unavailable, match="retry"):  # the system's CAs do not know this certificate
            catalog("c", api_key="s3cret").get("secure")

        # A Qdrant collection changed behind searchsvc's back: its vectors are 3-d, its stored config says 4.
        from qdrant_client import models

        client = good._qdrant()
        client.delete_collection("secure")
        client.create_collection("secure", vectors_config={"dense": models.VectorParams(size=3, distance=models.Distance.COSINE)},
                                 metadata={"searchsvc_config": dataclasses.asdict(created.config)})
        mismatched = catalog("d", api_key="s3cret", tls_ca_file=cert)
        with pytest.raises(FailedPrecondition, match="3-d"):
            mismatched.get("secure")
        # Put right in Qdrant, then ReopenCollection's path opens it without a restart.
        good.delete("secure")
        good.create("secure", config).index_documents([Document("y", "back again", vector=[0.0, 1.0, 0.0, 0.0])])
        assert mismatched.reopen("secure").document_count == 1
    finally:
        standin.stop()


def test_the_engine_filters_as_defined(tmp_path, qdrant_env):
    """Every filter case of test_filters.py on Qdrant's engine (typed payloads, ranges, is_empty, nesting),
    against filters.matches over the same documents."""
    from test_filters import DOCS as TYPED_DOCS
    from test_filters import FILTERS, document, expected, found

    name = f"filters-{uuid.uuid4().hex[:8]}"
    with ServerProcess(tmp_path, env=qdrant_env) as server:
        stub = server.stub()
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(backend="qdrant")))
        try:
            index(stub, name, [document(i, m) for i, m in TYPED_DOCS.items()], batch_size=10)
            analyzer = stub.GetCollection(pb.GetCollectionRequest(name=name)).config.analyzer
            for case, where in FILTERS.items():
                for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_DENSE):
                    assert found(stub, name, where, mode) == expected(where, analyzer), (case, mode)
        finally:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def aliases_of(stub) -> dict[str, tuple[str, str]]:
    return {a.alias: (a.collection, a.backend) for a in stub.ListAliases(pb.ListAliasesRequest()).aliases}


def alias_action(kind: str, alias: str, collection: str = "") -> pb.AliasAction:
    if kind == "delete":
        return pb.AliasAction(delete=alias)
    return pb.AliasAction(**{kind: pb.Alias(alias=alias, collection=collection)})


def test_aliases_of_qdrant_collections_are_the_clusters(tmp_path, qdrant_env):
    """An alias made through one server resolves through another at once, and a re-point under a stream of
    searches through the other server never leaves a search without a collection."""
    import threading

    v1, v2, alias = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("v1", "v2", "docs"))
    with ServerProcess(tmp_path / "a", env=qdrant_env) as a, ServerProcess(tmp_path / "b", env=qdrant_env) as b:
        sa, sb = a.stub(), b.stub()
        for name, docs in ((v1, documents("tomato")), (v2, documents("grass", "fern"))):
            create(sa, name)
            index(sa, name, docs)
        try:
            sa.UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("create", alias, v1)]))
            assert aliases_of(sb)[alias] == (v1, "qdrant")
            assert ids(search(sb, alias, "tomatoes", mode=pb.SEARCH_MODE_KEYWORD)) == ["tomato"]
            # an embedded collection's alias stays in its server's file
            create(sa, "local-" + v1, backend="embedded")
            sa.UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("create", "local-" + alias, "local-" + v1)]))
            assert aliases_of(sa)["local-" + alias] == ("local-" + v1, "embedded")
            assert "local-" + alias not in aliases_of(sb)
            with pytest.raises(grpc.RpcError) as err:  # one request, one side
                sa.UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("delete", "local-" + alias),
                                                                  alias_action("repoint", alias, v2)]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "actions[1]" in err.value.details()
            assert aliases_of(sa)[alias] == (v1, "qdrant")  # nothing applied
            with pytest.raises(grpc.RpcError) as err:  # the alias's name is taken on the cluster
                sb.CreateCollection(pb.CreateCollectionRequest(name=alias, config=pb.CollectionConfig(
                    backend="qdrant", embedding_model="external", dimension=4)))
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            with pytest.raises(grpc.RpcError) as err:  # and its collection cannot go while it is named
                sb.DeleteCollection(pb.DeleteCollectionRequest(name=v1))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            failures, seen, stop = [], set(), threading.Event()

            def searches() -> None:
                while not stop.is_set():
                    try:
                        seen.update(ids(search(sb, alias, "green tomatoes", mode=pb.SEARCH_MODE_KEYWORD)))
                    except grpc.RpcError as exc:
                        failures.append(exc.code())

            reader = threading.Thread(target=searches)
            reader.start()
            try:
                for target in (v2, v1, v2):
                    sa.UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("repoint", alias, target)]))
            finally:
                stop.set()
                reader.join()
            assert failures == [] and seen  # every search found a collection, before, during and after
            assert set(ids(search(sb, alias, "green", mode=pb.SEARCH_MODE_KEYWORD))) == {"grass", "fern"}
            sb.UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("delete", alias)]))
            with pytest.raises(grpc.RpcError) as err:
                search(sa, alias, "green")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            sa.UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("delete", "local-" + alias)]))
            for name in (v1, v2, "local-" + v1):
                sa.DeleteCollection(pb.DeleteCollectionRequest(name=name))


@dataclasses.dataclass
class Load:
    """Documents for three writers: each loads its third, then re-sends some of its own and deletes others."""

    loads: list[list[pb.Document]]
    replaced: list[pb.Document]
    deleted: list[str]
    queries: list[str]

    @classmethod
    def make(cls, seed: int = 40, n: int = 240) -> "Load":
        import random

        rng = random.Random(seed)
        words = [f"w{i}" for i in range(60)]

        def doc(i: int, version: int = 0) -> pb.Document:  # 3-40 words, Zipf-like: lengths and df vary
            text = " ".join(rng.choices(words, weights=[1 / (k + 1) for k in range(len(words))], k=rng.randint(3, 40)))
            return pb.Document(id=f"d{i}", text=f"{text} v{version}", vector=[rng.random() + 0.01 for _ in range(4)])

        return cls([[doc(i) for i in range(w, n, 3)] for w in range(3)], [doc(i, version=1) for i in range(0, n, 7)],
                   [f"d{i}" for i in range(1, n, 11)], [" ".join(rng.sample(words[:30], rng.randint(1, 4))) for _ in range(24)])

    def everything(self, stub, name: str) -> None:
        """One writer, in order."""
        index(stub, name, [d for load in self.loads for d in load], batch_size=7)
        index(stub, name, self.replaced, batch_size=7)
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=self.deleted))

    def writer(self, stub, name: str, w: int, batch_size: int = 3) -> None:
        """Writer `w`'s part; the replacements and deletes of its own documents only."""
        index(stub, name, self.loads[w], batch_size=batch_size)
        index(stub, name, [d for d in self.replaced if int(d.id[1:]) % 3 == w], batch_size=2)
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=[d for d in self.deleted if int(d[1:]) % 3 == w]))


def tear_down(servers: list, collections: list[str], aliases: list[str] = ()) -> None:
    """Drop what a test made on the shared Qdrant (best effort: the test may have failed half way), then stop."""
    stub = servers[0].stub()
    calls = [pb.UpdateAliasesRequest(actions=[alias_action("delete", a)]) for a in aliases]
    for request in calls + [pb.DeleteCollectionRequest(name=n) for n in collections]:
        try:
            (stub.UpdateAliases if isinstance(request, pb.UpdateAliasesRequest) else stub.DeleteCollection)(request)
        except grpc.RpcError:
            pass
    for s in servers:
        s.__exit__(None, None, None)


def same_results(stub, a: str, b: str, queries: list[str]) -> None:
    """KEYWORD and HYBRID ids and scores equal on `a` and `b`, for every query."""
    for query in queries:
        assert keyword_scores(stub, a, query) == keyword_scores(stub, b, query), query
        # every candidate of both legs: which of several equal scores make a cut is Qdrant's choice
        hybrid = [[(h.document_id, round(h.score, 9)) for h in search(stub, c, query, query_vector=[0.3, 0.5, 0.1, 0.7],
                                                                      top_k=10, keyword_candidates=1000, dense_candidates=1000).hits]
                  for c in (a, b)]
        assert hybrid[0] == hybrid[1] and hybrid[0], query


def test_concurrent_writers_score_exactly_as_one_writer(tmp_path, qdrant_env):
    """Three servers load one collection at once (a third each, interleaved batches, with replacements and deletes);
    one server loads the same documents alone into another. Every statistic equals a recount of the points, and
    KEYWORD and HYBRID give the same ids and scores on both collections."""
    import threading

    from qdrant_client import QdrantClient

    load = Load.make()
    deleted = load.deleted
    single, shared = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("single", "shared"))
    servers = [ServerProcess(tmp_path / n, env=qdrant_env) for n in "abc"]
    for s in servers:
        s.__enter__()
    try:
        stubs = [s.stub() for s in servers]
        create(stubs[0], single)
        create(stubs[0], shared)
        load.everything(stubs[0], single)
        threads = [threading.Thread(target=load.writer, args=(stubs[w], shared, w)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        client = QdrantClient(url=qdrant_env["SEARCHSVC_QDRANT__URL"], api_key=qdrant_env.get("SEARCHSVC_QDRANT__API_KEY") or None,
                              check_compatibility=False)
        for name in (single, shared):
            assert_statistics_recount(client, name)
        assert client.count(shared).count == client.count(single).count == 240 - len(deleted)
        writers = {key.partition("@")[2] for key in client.get_collection(shared).config.metadata if "@" in key}
        assert len(writers) == 3  # each server kept its own keys

        same_results(stubs[1], shared, single, load.queries)
    finally:
        tear_down(servers, [single, shared])


def test_three_servers_with_searches_an_alias_swap_and_a_kill(tmp_path, qdrant_env):
    """The stateless tier under load: three servers write one collection while all three search it through an
    alias; the alias is swapped to a copy and back mid-load; one server is killed (-9) mid-load, restarted on
    the same index dir, and sends its part again. No search fails, and in the end every server sees the same
    documents, scored as one server loading them alone scores them, with statistics equal to a recount."""
    import threading

    from qdrant_client import QdrantClient

    load = Load.make(seed=41)
    single, shared, alias = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("single", "shared", "live"))
    servers = [ServerProcess(tmp_path / n, env=qdrant_env) for n in "abc"]
    for s in servers:
        s.__enter__()
    stop, failures, searched = threading.Event(), [], [0, 0, 0]
    try:
        stubs = [s.stub() for s in servers]
        create(stubs[0], single)
        create(stubs[0], shared)
        load.everything(stubs[0], single)
        stubs[0].UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("create", alias, shared)]))

        def searcher(i: int) -> None:
            while not stop.is_set():
                try:
                    search(servers[i].stub(), alias, load.queries[searched[i] % len(load.queries)], mode=pb.SEARCH_MODE_KEYWORD)
                    searched[i] += 1
                except grpc.RpcError as exc:
                    failures.append((i, exc.code(), exc.details()))

        readers = [threading.Thread(target=searcher, args=(i,)) for i in (0, 1)]  # c is killed: a and b search
        writers = [threading.Thread(target=load.writer, args=(stubs[w], shared, w)) for w in (0, 1)]
        for t in readers + writers:
            t.start()
        # c sends a few batches and is killed -9 in the middle of its stream
        c_stream = threading.Thread(target=lambda: _ignore_rpc_errors(index, stubs[2], shared, load.loads[2], batch_size=2))
        c_stream.start()
        for target in (single, shared):  # the alias swapped under load
            stubs[1].UpdateAliases(pb.UpdateAliasesRequest(actions=[alias_action("repoint", alias, target)]))
        servers[2].kill9()
        c_stream.join()
        servers[2].start()
        load.writer(servers[2].stub(), shared, 2)  # everything again: re-sent documents replace
        for t in writers:
            t.join()
        stop.set()
        for t in readers:
            t.join()
        assert failures == [] and min(searched[:2]) > 0
        # one more write from the restarted server, now that no other writes: a repair of its statistics that
        # had to wait (the kill may have landed between a batch's points and its statistics) happens before it
        index(servers[2].stub(), shared, [d for d in load.replaced if int(d.id[1:]) % 3 == 2][:1])
        client = QdrantClient(url=qdrant_env["SEARCHSVC_QDRANT__URL"], api_key=qdrant_env.get("SEARCHSVC_QDRANT__API_KEY") or None,
                              check_compatibility=False)
        assert_statistics_recount(client, shared)

        count = servers[2].stub().CountDocuments(pb.CountDocumentsRequest(collection=alias)).count
        assert count == servers[0].stub().CountDocuments(pb.CountDocumentsRequest(collection=single)).count
        for s in servers:  # every server, the same collection, the same scores
            same_results(s.stub(), alias, single, load.queries[:8])
        same_results(servers[2].stub(), shared, single, load.queries)
    finally:
        stop.set()
        tear_down(servers, [single, shared], [alias])


def _ignore_rpc_errors(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError:
        pass  # the server was killed under the stream


def test_a_qdrant_collection_backs_up_as_one_state_and_restores(tmp_path, qdrant_env, capsys):
    """CreateSnapshot names the backup for a Qdrant collection; `searchsvc export` refuses a copy that a write under
    way could tear (a server's odd write counter), waits it out, and its copy restores into a collection that scores
    as the original.

    Qdrant's own snapshot API is not the path: its archives restore only into Qdrant, and the stand-in's engine
    (qdrant-edge's EdgeShard) cannot make one (it has `unpack_snapshot` and `update_from_snapshot`, for a
    server's snapshots, and no way to create a snapshot), so the stand-in could not serve it faithfully."""
    from qdrant_client import QdrantClient

    from searchsvc.cli.main import main

    load = Load.make(seed=42)
    name, restored = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("orig", "restored"))
    client = QdrantClient(url=qdrant_env["SEARCHSVC_QDRANT__URL"], api_key=qdrant_env.get("SEARCHSVC_QDRANT__API_KEY") or None,
                          check_compatibility=False)
    servers = [ServerProcess(tmp_path / "a", env=qdrant_env)]
    servers[0].__enter__()
    try:
        stub, target = servers[0].stub(), ["--target", servers[0].target]
        create(stub, name)
        # no deletes or replacements: Qdrant counts deleted points in IDF until its optimizer drops them, and a
        # restored copy has none, so the scores would differ by that (docs/scaling.md, consistency on Qdrant)
        index(stub, name, [d for part in load.loads for d in part], batch_size=7)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=name))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and f"searchsvc export {name}" in err.value.details()

        got = stub.GetCollection(pb.GetCollectionRequest(name=name))
        assert got.writes_in_progress == 0 and got.version > 0
        client.update_collection(name, metadata={"version@gone": 7})  # a server that died in a write
        assert stub.GetCollection(pb.GetCollectionRequest(name=name)).writes_in_progress == 1
        out = tmp_path / "backup.jsonl"
        assert main(["export", name, str(out), "--retries", "0", *target]) == 1
        assert "written to during each of 1 attempts" in capsys.readouterr().err and not out.exists()
        client.update_collection(name, metadata={"version@gone": 8})  # it came back and finished
        assert main(["export", name, str(out), "--vectors", *target]) == 0
        assert f"at version {got.version + 8}" in capsys.readouterr().out  # the other writer's counter counts too

        create(stub, restored)
        assert main(["import", restored, str(out), *target]) == 0
        assert stub.CountDocuments(pb.CountDocumentsRequest(collection=restored)).count == 240
        same_results(stub, restored, name, load.queries)
    finally:
        tear_down(servers, [name, restored])


def test_a_server_that_died_in_a_write_clears_its_mark_when_it_restarts(tmp_path, qdrant_env):
    from qdrant_client import QdrantClient

    name = f"mark-{uuid.uuid4().hex[:8]}"
    client = QdrantClient(url=qdrant_env["SEARCHSVC_QDRANT__URL"], api_key=qdrant_env.get("SEARCHSVC_QDRANT__API_KEY") or None,
                          check_compatibility=False)
    server = ServerProcess(tmp_path, env=qdrant_env)
    with server:
        create(server.stub(), name)
        index(server.stub(), name, documents())
        writer = (tmp_path / "server.id").read_text().strip()
        metadata = client.get_collection(name).config.metadata
        version, terms = metadata[f"version@{writer}"], metadata[f"terms@{writer}"]
        assert version % 2 == 0  # every finished write leaves it even
    # as if killed between a batch's points and its statistics: marked under way, its terms not counted
    client.update_collection(name, metadata={f"version@{writer}": version + 1, f"terms@{writer}": terms - 9})
    with server:
        stub = server.stub()
        try:
            assert stub.GetCollection(pb.GetCollectionRequest(name=name)).writes_in_progress == 0
            assert "died in the middle of a write" in "\n".join(server.output)
            assert_statistics_recount(client, name)
        finally:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def assert_statistics_recount(client, name: str) -> None:
    """The summed per-server statistics equal the points counted one by one."""
    from searchsvc.storage.qdrant.collection import Statistics

    stats = Statistics.of(client.get_collection(name).config.metadata)
    points, _ = client.scroll(name, limit=10_000, with_payload=["n_terms"], with_vectors=False)
    assert (stats.terms, stats.chunks) == (sum(p.payload["n_terms"] for p in points), len(points)), name


def test_a_write_through_one_server_expires_answers_cached_by_another(tmp_path, qdrant_env):
    """The answer cache is per server, but its key holds the collection's write counter, which lives in Qdrant."""
    name = f"answers-{uuid.uuid4().hex[:8]}"
    with ServerProcess(tmp_path / "a", env=qdrant_env) as a, ServerProcess(tmp_path / "b", env=qdrant_env) as b:
        sa, sb = a.stub(), b.stub()
        sa.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(backend="qdrant")))
        try:
            index(sa, name, [pb.Document(id=i, text=t) for i, t, *_ in DOCS])

            def ask() -> pb.AnswerResponse:
                return sa.Answer(pb.AnswerRequest(search=pb.SearchRequest(collection=name, query="What colour is grass?"),
                                                  extractive=True), timeout=120)

            assert not ask().usage.cached and ask().usage.cached
            index(sb, name, [pb.Document(id="moss", text="Moss is green and soft, and grows on stones.")])
            fresh = ask()
            assert not fresh.usage.cached  # b's write reached a's cache key at once
        finally:
            sa.DeleteCollection(pb.DeleteCollectionRequest(name=name))
