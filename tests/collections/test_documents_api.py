"""Reading documents back (issue 19): GetDocuments, ListDocuments, CountDocuments on both backends, with filters;
texts exactly as sent; list pages that stay right while documents come and go between them."""

from __future__ import annotations

import random

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from conftest import fresh_collection, index
from searchsvc.domain.documents import text_from_chunks
from searchsvc.domain.types import Chunk
from searchsvc.v1 import searchsvc_pb2 as pb

LONG = ("Retrieval systems split long documents into chunks.  Each chunk is embedded on its own.\n\n"
        "  A second paragraph, indented, follows a blank line. ") * 40 + "\n"


def typed(doc: pb.Document, **values) -> pb.Document:
    for key, value in values.items():
        if isinstance(value, bool):
            doc.typed_metadata[key].bool_value = value
        elif isinstance(value, int):
            doc.typed_metadata[key].int_value = value
        elif isinstance(value, Timestamp):
            doc.typed_metadata[key].timestamp_value.CopyFrom(value)
        else:
            doc.typed_metadata[key].string_list_value.values.extend(value)
    return doc


def docs() -> list[pb.Document]:
    when = Timestamp(seconds=1_700_000_000)
    return [
        typed(pb.Document(id=f"d{i:02d}", text=f"Document number {i} about {'cats' if i % 2 else 'dogs'}.", title=f"T{i}",
                          metadata={"kind": "odd" if i % 2 else "even"}), year=2000 + i, tags=[f"t{i % 3}"], when=when)
        for i in range(12)
    ] + [pb.Document(id="long", text=LONG, title="Long", metadata={"kind": "long"})]


@pytest.fixture(scope="module", params=["embedded", "qdrant"])
def stored(request, stub):
    with fresh_collection(stub, backend="" if request.param == "embedded" else "qdrant") as name:
        index(stub, name, docs(), batch_size=5)
        yield name


def test_get_returns_each_document_as_sent(stub, stored):
    sent = {d.id: d for d in docs()}
    got = stub.GetDocuments(pb.GetDocumentsRequest(collection=stored, ids=["long", "d03", "nope", "d00"]))
    assert [d.id for d in got.documents] == ["long", "d03", "d00"]  # the order asked, the missing left out
    assert list(got.not_found_ids) == ["nope"]
    for d in got.documents:
        assert (d.text, d.title, dict(d.metadata)) == (sent[d.id].text, sent[d.id].title, dict(sent[d.id].metadata))
        assert dict(d.typed_metadata) == dict(sent[d.id].typed_metadata)
    long = got.documents[0]
    assert len(long.chunks) > 1 and [c.index for c in long.chunks] == list(range(len(long.chunks)))
    assert all(c.id == f"long#{c.index}" for c in long.chunks)
    hits = stub.Search(pb.SearchRequest(collection=stored, query="chunks embedded paragraph", top_k=50, mode=pb.SEARCH_MODE_KEYWORD)).hits
    texts = {h.chunk_id: h.text for h in hits}
    assert {c.id for c in long.chunks} <= set(texts)
    for c in long.chunks:  # offsets into the text as sent
        assert LONG[c.start_char : c.end_char] == texts[c.id]


def test_views(stub, stored):
    basic = stub.GetDocuments(pb.GetDocumentsRequest(collection=stored, ids=["d01"], view=pb.DOCUMENT_VIEW_BASIC)).documents[0]
    assert basic.text == "" and basic.title == "T1" and basic.chunks[0].id == "d01#0" and not basic.chunks[0].vector
    full = stub.GetDocuments(pb.GetDocumentsRequest(collection=stored, ids=["d01"], view=pb.DOCUMENT_VIEW_FULL_WITH_VECTORS)).documents[0]
    vector = list(full.chunks[0].vector)
    assert len(vector) == stub.GetCollection(pb.GetCollectionRequest(name=stored)).dimension
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)


def _where(**clauses) -> pb.Filter:
    return pb.Filter(must=[pb.FilterClause(key=k, **v) for k, v in clauses.items()])


@pytest.mark.parametrize("request_fields, expected", [
    ({}, 13),
    ({"filter": {"kind": "odd"}}, 6),
    ({"where": _where(year={"range": pb.Range(gte=pb.MetadataValue(int_value=2005))})}, 7),
    ({"where": pb.Filter(must_not=[pb.FilterClause(key="kind", eq=pb.MetadataValue(string_value="odd"))])}, 7),
    ({"where": _where(tags={"contains": "t1"}), "filter": {"kind": "odd"}}, 2),  # d01, d07
    ({"filter": {"kind": "none"}}, 0),
])
def test_count_and_list_with_filters(stub, stored, request_fields, expected):
    assert stub.CountDocuments(pb.CountDocumentsRequest(collection=stored, **request_fields)).count == expected
    listed, token = [], ""
    while True:
        page = stub.ListDocuments(pb.ListDocumentsRequest(collection=stored, page_size=4, page_token=token, **request_fields))
        listed += [d.id for d in page.documents]
        assert len(page.documents) <= 4 and all(d.text == "" for d in page.documents)  # BASIC by default
        token = page.next_page_token
        if not token:
            break
    all_docs = {d.id: d for d in docs()}
    assert len(listed) == len(set(listed)) == expected
    if request_fields.get("filter") == {"kind": "odd"} and "where" not in request_fields:
        assert {all_docs[i].metadata["kind"] for i in listed} == {"odd"}


def test_pages_stay_right_while_documents_come_and_go(stub):
    """Keyset pages: a document present from the first page to the last is listed once; ones added or deleted
    meanwhile may or may not be; nothing is listed twice."""
    for backend in ("", "qdrant"):
        with fresh_collection(stub, backend=backend) as name:
            index(stub, name, [pb.Document(id=f"k{i:03d}", text=f"text {i}") for i in range(60)], batch_size=30)
            rng = random.Random(7)
            stable = {f"k{i:03d}" for i in range(60)}
            listed, token, added = [], "", 0
            while True:
                page = stub.ListDocuments(pb.ListDocumentsRequest(collection=name, page_size=7, page_token=token))
                listed += [d.id for d in page.documents]
                token = page.next_page_token
                if not token:
                    break
                gone = rng.sample(sorted(stable), 2)  # deleted between pages: no longer "present throughout"
                stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=gone))
                stable -= set(gone)
                index(stub, name, [pb.Document(id=f"n{added}", text="new"), pb.Document(id=f"a{added}", text="new")])
                added += 1
            assert len(listed) == len(set(listed))
            assert stable <= set(listed)
            assert set(listed) <= {f"k{i:03d}" for i in range(60)} | {f"{p}{i}" for p in "na" for i in range(added)}


@pytest.mark.parametrize("request_, field", [
    (pb.GetDocumentsRequest(ids=[]), "ids"),
    (pb.GetDocumentsRequest(ids=["x"] * 1001), "ids"),
    (pb.GetDocumentsRequest(ids=["a", ""]), "ids[1]"),
    (pb.GetDocumentsRequest(ids=["a"], view=9), "view"),
    (pb.ListDocumentsRequest(page_size=1001), "page_size"),
    (pb.ListDocumentsRequest(page_token="not a token"), "page_token"),
])
def test_bad_requests_name_the_field(stub, collection, request_, field):
    request_.collection = collection
    call = stub.GetDocuments if isinstance(request_, pb.GetDocumentsRequest) else stub.ListDocuments
    with pytest.raises(grpc.RpcError) as err:
        call(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")


def test_a_page_token_belongs_to_its_filter(stub, stored):
    page = stub.ListDocuments(pb.ListDocumentsRequest(collection=stored, page_size=2, filter={"kind": "odd"}))
    with pytest.raises(grpc.RpcError) as err:
        stub.ListDocuments(pb.ListDocumentsRequest(collection=stored, page_size=2, page_token=page.next_page_token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "another collection or filter" in err.value.details()


def test_missing_collection(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.CountDocuments(pb.CountDocumentsRequest(collection="no-such-collection"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_text_rebuilt_from_chunks():
    """Documents written before texts were stored: the chunks at their offsets, a space for each gap."""
    text = "alpha beta.  gamma delta."
    chunks = [Chunk("d#0", "d", 0, "alpha beta.", "", {}, 0, 11), Chunk("d#1", "d", 1, "gamma delta.", "", {}, 13, 25)]
    assert text_from_chunks(chunks) == "alpha beta. gamma delta."
    overlapping = [Chunk("d#0", "d", 0, "alpha beta.", "", {}, 0, 11), Chunk("d#1", "d", 1, "beta.  gamma", "", {}, 6, 18)]
    assert text_from_chunks(overlapping) == text[:18]
