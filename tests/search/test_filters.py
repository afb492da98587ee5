"""Typed metadata and the filter language (issue 18), through the API: every operator on both legs and in HYBRID,
checked against filters.matches (the definition) over the same documents; errors with field paths; a restart."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from conftest import ServerProcess, fresh_collection, index
from searchsvc.api.metadata_pb import value_to_pb
from searchsvc.domain import filters
from searchsvc.domain.filters import Condition, Filter, Timestamp
from searchsvc.retrieve.analyzers import get_analyzer
from searchsvc.v1 import searchsvc_pb2 as pb


def ts(day: str) -> Timestamp:
    return Timestamp(int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000))


# Every text holds "report", so a KEYWORD search for it can find every document; DENSE and HYBRID with a top_k
# above the corpus size return every document the filter allows.
DOCS = {
    "a": ({"category": "news", "year": 2021, "score": 0.5, "archived": False, "published": ts("2021-03-01"),
           "tags": ("red", "blue"), "headline": "Rising rivers flood the valley"}),
    "b": ({"category": "blog", "year": 2023, "score": 2.25, "archived": True, "published": ts("2023-07-15"),
           "tags": ("blue",), "headline": "A river cruise report"}),
    "c": ({"category": "news", "year": 2024, "score": -1.5, "published": ts("2024-01-01"), "tags": ()}),
    "d": ({"category": "paper", "year": 2019, "archived": False, "tags": ("green",), "headline": "Floods and rivers"}),
    "e": ({"year": 2024.5, "score": 10.0, "legacy": "x"}),  # a float year: ranges see it, eq on ints does not
    "f": ({}),
    "g": ({"category": "news", "year": "2021", "headline": "Markets"}),  # the string "2021" is not 2021
}


def document(doc_id: str, metadata: dict) -> pb.Document:
    d = pb.Document(id=doc_id, text=f"A report about {doc_id}: weather, markets and rivers.", title=f"Doc {doc_id}")
    for key, value in metadata.items():
        if isinstance(value, str) and key == "legacy":
            d.metadata[key] = value  # the original string map
        else:
            d.typed_metadata[key].CopyFrom(value_to_pb(value))
    return d


def where_pb(f: Filter) -> pb.Filter:
    out = pb.Filter()
    for name in ("must", "should", "must_not"):
        for clause in getattr(f, name):
            getattr(out, name).append(clause_pb(clause))
    return out


def clause_pb(c) -> pb.FilterClause:
    if isinstance(c, Filter):
        return pb.FilterClause(filter=where_pb(c))
    out = pb.FilterClause(key=c.key)
    if c.op in ("eq", "ne"):
        getattr(out, c.op).CopyFrom(value_to_pb(c.values[0]))
    elif c.op in ("any_of", "none_of"):
        getattr(out, c.op).values.extend(value_to_pb(v) for v in c.values)
    elif c.op == "range":
        for bound in ("gt", "gte", "lt", "lte"):
            if getattr(c, bound) is not None:
                getattr(out.range, bound).CopyFrom(value_to_pb(getattr(c, bound)))
    elif c.op == "exists":
        out.exists = c.exists
    else:
        out.text_match = c.text
    return out


C = Condition
FILTERS = {
    "eq string": Filter(must=(C("category", "eq", ("news",)),)),
    "eq integer (not the string, not the float)": Filter(must=(C("year", "eq", (2021,)),)),
    "eq string '2021' (not the integer)": Filter(must=(C("year", "eq", ("2021",)),)),
    "eq bool": Filter(must=(C("archived", "eq", (False,)),)),
    "eq on a list (contains)": Filter(must=(C("tags", "eq", ("blue",)),)),
    "ne (missing passes)": Filter(must=(C("category", "ne", ("news",)),)),
    "any_of": Filter(must=(C("category", "any_of", ("blog", "paper")),)),
    "none_of": Filter(must=(C("tags", "none_of", ("red", "green")),)),
    "range numbers gte/lt": Filter(must=(C("year", "range", gte=2021, lt=2024),)),
    "range floats and ints, gt": Filter(must=(C("year", "range", gt=2023.9),)),
    "range negative lower bound": Filter(must=(C("score", "range", gte=-2, lte=1),)),
    "range timestamps": Filter(must=(C("published", "range", gte=ts("2022-01-01"), lte=ts("2024-01-01")),)),
    "range timestamp exclusive": Filter(must=(C("published", "range", gt=ts("2023-07-15")),)),  # not b itself
    "exists": Filter(must=(C("archived", "exists", exists=True),)),
    "is_empty (an empty list counts)": Filter(must=(C("tags", "exists", exists=False),)),
    "text_match (stems)": Filter(must=(C("headline", "text_match", text="river"),)),
    "text_match two terms": Filter(must=(C("headline", "text_match", text="flooding rivers"),)),
    "should": Filter(should=(C("category", "eq", ("blog",)), C("score", "range", gt=5))),
    "must_not": Filter(must_not=(C("category", "eq", ("news",)),)),
    "nested and/or/not": Filter(
        must=(C("year", "range", gte=2019),),
        should=(Filter(must=(C("category", "eq", ("news",)),), must_not=(C("tags", "eq", ("red",)),)),
                C("archived", "eq", (True,))),
        must_not=(Filter(should=(C("score", "range", lt=-1),)),),
    ),
    "matches nothing": Filter(must=(C("category", "eq", ("nope",)),)),
    "matches everything": Filter(must_not=(C("category", "eq", ("nope",)),)),
    "legacy string key": Filter(must=(C("legacy", "eq", ("x",)),)),
}


@pytest.fixture(scope="module", params=["embedded", "qdrant"])
def typed_collection(stub, request):
    """The corpus on each backend (Qdrant: qdrant-client's local mode; tests/storage/test_qdrant_cluster.py runs the cases
    on Qdrant's engine)."""
    with fresh_collection(stub, request.param) as name:
        acks = index(stub, name, [document(i, m) for i, m in DOCS.items()], batch_size=3)
        assert sum(a.indexed_count for a in acks) == len(DOCS) and not any(a.errors for a in acks)
        yield name


def found(stub, collection: str, where: Filter, mode) -> set[str]:
    response = stub.Search(pb.SearchRequest(collection=collection, query="report", top_k=50, mode=mode,
                                            where=where_pb(where)), timeout=60)
    return {h.document_id for h in response.hits}


def expected(f: Filter, analyzer: str) -> set[str]:
    analyze = get_analyzer(analyzer).analyze
    return {i for i, m in DOCS.items() if filters.matches(f, m, analyze)}


@pytest.mark.parametrize("case", list(FILTERS))
def test_every_operator_on_both_legs_and_hybrid_as_defined(stub, typed_collection, case):
    analyzer = stub.GetCollection(pb.GetCollectionRequest(name=typed_collection)).config.analyzer
    want = expected(FILTERS[case], analyzer)
    for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_HYBRID):
        assert found(stub, typed_collection, FILTERS[case], mode) == want, (case, pb.SearchMode.Name(mode))


def test_the_cases_are_not_trivial():
    """Each case selects something other than all or nothing, except the two that say so."""
    for case, f in FILTERS.items():
        n = len(expected(f, "english"))
        if case == "matches nothing":
            assert n == 0
        elif case == "matches everything":
            assert n == len(DOCS)
        else:
            assert 0 < n < len(DOCS), case


def test_hits_carry_typed_metadata_and_strings_stay_in_metadata(stub, typed_collection):
    response = stub.Search(pb.SearchRequest(collection=typed_collection, query="report", top_k=50), timeout=60)
    a = next(h for h in response.hits if h.document_id == "a")
    assert a.typed_metadata["year"].int_value == 2021 and a.typed_metadata["score"].double_value == 0.5
    assert a.typed_metadata["published"].timestamp_value.ToDatetime() == dt.datetime(2021, 3, 1)
    assert list(a.typed_metadata["tags"].string_list_value.values) == ["red", "blue"]
    assert a.metadata["category"] == "news" and "year" not in a.metadata  # metadata: strings only, as before
    e = next(h for h in response.hits if h.document_id == "e")
    assert e.metadata["legacy"] == "x" and e.typed_metadata["legacy"].string_value == "x"


def test_the_filter_map_and_where_together_both_apply(stub, typed_collection):
    request = pb.SearchRequest(collection=typed_collection, query="report", top_k=50, filter={"category": "news"},
                               where=where_pb(FILTERS["range numbers gte/lt"]))
    assert {h.document_id for h in stub.Search(request).hits} == {"a"}


def bad_search(stub, collection: str, where: pb.Filter) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(pb.SearchRequest(collection=collection, query="report", where=where))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value


def test_type_errors_and_unknown_operators_name_the_field(stub, typed_collection):
    string_bound = pb.Filter(must=[pb.FilterClause(key="year", eq=pb.MetadataValue(int_value=1)),
                                   pb.FilterClause(key="year", range=pb.Range(gte=pb.MetadataValue(string_value="2020")))])
    assert "where.must[1].range.gte" in bad_search(stub, typed_collection, string_bound).details()
    mixed = pb.Filter(should=[pb.FilterClause(key="t", range=pb.Range(gte=pb.MetadataValue(int_value=1),
                                                                       lt=value_to_pb(ts("2024-01-01"))))])
    assert "where.should[0].range" in bad_search(stub, typed_collection, mixed).details()
    no_condition = pb.Filter(must_not=[pb.FilterClause(key="year")])
    assert "where.must_not[0]" in bad_search(stub, typed_collection, no_condition).details()
    double_eq = pb.Filter(must=[pb.FilterClause(filter=pb.Filter(must=[pb.FilterClause(key="score", eq=pb.MetadataValue(double_value=0.5))]))])
    assert "where.must[0].filter.must[0].eq" in bad_search(stub, typed_collection, double_eq).details()
    bad_key = pb.Filter(must=[pb.FilterClause(key="a.b", exists=True)])
    assert "where.must[0].key" in bad_search(stub, typed_collection, bad_key).details()
    empty_value = pb.Filter(must=[pb.FilterClause(key="year", any_of=pb.ValueList(values=[pb.MetadataValue()]))])
    assert "where.must[0].any_of.values[0]" in bad_search(stub, typed_collection, empty_value).details()
    deep = pb.Filter(must=[pb.FilterClause(key="x", exists=True)])
    for _ in range(filters.MAX_DEPTH):
        deep = pb.Filter(must=[pb.FilterClause(filter=deep)])
    assert "nest at most" in bad_search(stub, typed_collection, deep).details()


def test_bad_typed_metadata_refuses_that_document_only(stub):
    with fresh_collection(stub) as name:
        nan = pb.Document(id="nan", text="report")
        nan.typed_metadata["score"].double_value = float("nan")
        dotted = pb.Document(id="dotted", text="report")
        dotted.typed_metadata["a.b"].int_value = 1
        both = pb.Document(id="both", text="report", metadata={"k": "v"})
        both.typed_metadata["k"].int_value = 1
        huge = pb.Document(id="huge", text="report")
        huge.typed_metadata["n"].int_value = 2**60
        reserved = pb.Document(id="reserved", text="report")
        reserved.typed_metadata["chunk_index"].int_value = 3
        good = pb.Document(id="good", text="report")
        good.typed_metadata["n"].int_value = 7
        (ack,) = index(stub, name, [nan, dotted, both, huge, reserved, good], batch_size=6)
        assert ack.indexed_count == 1
        fields = {e.document_id: e.field for e in ack.errors}
        assert fields == {"nan": "documents[0].typed_metadata['score'].double_value",
                          "dotted": "documents[1].typed_metadata['a.b']",
                          "both": "documents[2].typed_metadata['k']",
                          "huge": "documents[3].typed_metadata['n'].int_value",
                          "reserved": "documents[4].typed_metadata['chunk_index']"}


def test_typed_filters_survive_a_restart_and_a_kill(tmp_path):
    cases = ["range timestamps", "nested and/or/not", "text_match (stems)", "exists", "eq on a list (contains)"]
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        stub.CreateCollection(pb.CreateCollectionRequest(name="c", config=pb.CollectionConfig(refresh_interval_ms=-1)))
        index(stub, "c", [document(i, m) for i, m in DOCS.items()])
        analyzer = stub.GetCollection(pb.GetCollectionRequest(name="c")).config.analyzer
        before = {case: found(stub, "c", FILTERS[case], pb.SEARCH_MODE_HYBRID) for case in cases}
        assert before == {case: expected(FILTERS[case], analyzer) for case in cases}
        server.kill9()  # acked writes are in the WAL only: the restart replays them
    with ServerProcess(tmp_path) as server:
        stub = server.stub()
        for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_DENSE):
            assert {case: found(stub, "c", FILTERS[case], mode) for case in cases} == before
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="c", ids=["b"]))
        server.stop()  # a clean stop checkpoints: the next start reads the snapshot, not the WAL
    with ServerProcess(tmp_path) as server:
        after = {case: found(server.stub(), "c", FILTERS[case], pb.SEARCH_MODE_HYBRID) for case in cases}
        assert after == {case: ids - {"b"} for case, ids in before.items()}


def random_filter(rng, depth: int = 0) -> Filter:
    def condition():
        key = rng.choice(["k", "n", "t", "b", "l"])
        op = rng.choice(["eq", "ne", "any_of", "none_of", "range", "exists"])
        if op == "range":
            if key == "t":
                return C(key, "range", **{rng.choice(["gt", "gte"]): ts(f"202{rng.randrange(5)}-01-01"),
                                          rng.choice(["lt", "lte"]): ts(f"202{rng.randrange(5, 9)}-01-01")})
            return C("n", "range", **{rng.choice(["gt", "gte", "lt", "lte"]): rng.choice([-2, 0, 1.5, 3])})
        if op == "exists":
            return C(key, "exists", exists=rng.random() < 0.5)
        pool = {"k": ["x", "y", "z"], "n": [0, 1, 2], "b": [True, False], "l": ["p", "q"], "t": ["x"]}[key]
        values = tuple(rng.sample(pool, rng.randint(1, min(2, len(pool))))) if op in ("any_of", "none_of") else (rng.choice(pool),)
        return C(key, op, values)

    def clauses(n):
        return tuple(random_filter(rng, depth + 1) if depth < 3 and rng.random() < 0.3 else condition() for _ in range(n))
    return Filter(must=clauses(rng.randint(0, 2)), should=clauses(rng.choice([0, 0, 2])), must_not=clauses(rng.randint(0, 1)))


def test_random_nested_filters_agree_with_the_definition_in_both_embedded_indexes(tmp_path):
    """200 random chunks and 300 random nested filters: the dense leg's id selection (MetadataIndex) and the
    keyword leg's tantivy query select exactly what filters.matches selects."""
    import random

    from searchsvc.retrieve.analyzers import get_analyzer
    from searchsvc.storage.embedded.metadata_index import MetadataIndex
    from searchsvc.storage.embedded.tantivy_keyword import KeywordChunk, TantivyKeywordIndex

    rng = random.Random(18)
    metadata = {}
    for i in range(200):
        m = {}
        if rng.random() < 0.7:
            m["k"] = rng.choice(["x", "y", "z"])
        if rng.random() < 0.7:
            m["n"] = rng.choice([-2, -1.5, 0, 1, 1.5, 2, 3, "1"])
        if rng.random() < 0.5:
            m["t"] = ts(f"202{rng.randrange(10)}-01-01")
        if rng.random() < 0.5:
            m["b"] = rng.random() < 0.5
        if rng.random() < 0.5:
            m["l"] = tuple(rng.sample(["p", "q", "r"], rng.randint(0, 2)))
        metadata[f"c{i}"] = m
    analyzer = get_analyzer("english")
    postings = MetadataIndex(analyzer.analyze)
    keyword = TantivyKeywordIndex(tmp_path / "kw", analyzer, refresh_interval_s=0)
    keyword.add([KeywordChunk(c, c, "common words", m) for c, m in metadata.items()])
    keyword.commit()
    for c, m in metadata.items():
        postings.add(int(c[1:]), m)  # the embedded backend's postings hold FAISS ids
    checked = 0
    for _ in range(300):
        f = random_filter(rng)
        want = {c for c, m in metadata.items() if filters.matches(f, m)}
        selection = postings.select(f)
        ids = {f"c{i}" for i in selection.ids.tolist()}
        assert (set(metadata) - ids if selection.complemented else ids) == want, f
        assert postings.any_selected(selection, len(metadata)) == bool(want), f
        assert {h.chunk_id for h in keyword.search_terms(["common"], 500, f)} == want, f
        checked += 0 < len(want) < len(metadata)
    assert checked > 100  # most filters select a proper subset
    keyword.close()


@pytest.mark.parametrize("exact", [False, True])
def test_the_dense_leg_on_an_hnsw_graph_with_a_deleted_chunk(stub, exact):
    """On an HNSW graph a filter reaches FAISS as allowed ids (an exact scan of them), or, for negations, as
    excluded ids combined with the graph's tombstones; `exact` scans with the same selection."""
    config = pb.CollectionConfig(refresh_interval_ms=-1, dense_index=pb.DenseIndexConfig(kind="hnsw"))
    name = f"hnsw-filters-{int(exact)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))
    try:
        index(stub, name, [document(i, m) for i, m in DOCS.items()])
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=["b"]))  # a tombstone in the graph
        assert stub.GetCollection(pb.GetCollectionRequest(name=name)).dense_index_in_use == "hnsw"
        for case, where in FILTERS.items():
            request = pb.SearchRequest(collection=name, query="report", top_k=50, mode=pb.SEARCH_MODE_DENSE,
                                       where=where_pb(where), dense=pb.DenseSearchOptions(exact=exact))
            assert {h.document_id for h in stub.Search(request).hits} == expected(where, "english") - {"b"}, case
    finally:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_a_cached_selection_never_answers_a_filter_that_only_compares_equal():
    """eq 1 and eq true are equal as Python values ((1,) == (True,)): the recent-selection cache must tell
    them apart, as the definition does."""
    from searchsvc.storage.embedded.metadata_index import MetadataIndex

    index = MetadataIndex(str.split)
    index.add(1, {"x": 1})
    index.add(2, {"x": True})
    for value, want in ((1, [1]), (True, [2]), (1, [1])):
        assert index.select(Filter(must=(C("x", "eq", (value,)),))).ids.tolist() == want


def test_text_match_without_terms_matches_nothing(stub, typed_collection):
    """A text of stopwords only has no terms to hold: no chunk, on every backend (as filters.matches says)."""
    where = Filter(must=(C("headline", "text_match", text="the of"),))
    assert expected(where, "english") == set()
    for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_DENSE):
        assert found(stub, typed_collection, where, mode) == set()
