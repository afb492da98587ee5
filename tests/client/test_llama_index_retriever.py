"""The LlamaIndex retriever (issue 18): SearchsvcRetriever over the real server, sync and async, with LlamaIndex
MetadataFilters translated into the service's filter, and a RetrieverQueryEngine answering through it with a
local LLM (Qwen2.5-Coder 0.5B on llama.cpp)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from conftest import MODELS_DIR, fresh_collection, index
from searchsvc.api.metadata_pb import value_to_pb
from searchsvc.client.llama_index import SearchsvcRetriever, filter_to_pb
from searchsvc.domain.filters import Timestamp
from searchsvc.v1 import searchsvc_pb2 as pb


def document(doc_id: str, text: str, year: int, tags: list[str]) -> pb.Document:
    d = pb.Document(id=doc_id, text=text, title=doc_id.title(), metadata={"source": "test"})
    d.typed_metadata["year"].int_value = year
    d.typed_metadata["tags"].string_list_value.values.extend(tags)
    d.typed_metadata["published"].CopyFrom(value_to_pb(Timestamp(int(dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc).timestamp()) * 10**6)))
    return d


DOCS = [
    document("mill", "The old mill grinds wheat into flour by the river every morning.", 1890, ["history", "food"]),
    document("dam", "The dam on the river stores water and makes electricity.", 1960, ["energy"]),
    document("turbine", "A wind turbine turns moving air into electricity.", 2010, ["energy", "wind"]),
]


@pytest.fixture(scope="module")
def collection(stub):
    with fresh_collection(stub) as name:
        index(stub, name, DOCS)
        yield name


def F(key, value, operator=FilterOperator.EQ):
    return MetadataFilter(key=key, value=value, operator=operator)


def test_hits_become_nodes_with_typed_metadata(server, collection):
    nodes = SearchsvcRetriever(server.target, collection, top_k=3).retrieve("how is electricity made?")
    assert [n.node.node_id for n in nodes][:2] in (["dam#0", "turbine#0"], ["turbine#0", "dam#0"])
    dam = next(n.node for n in nodes if n.node.node_id == "dam#0")
    assert dam.metadata["year"] == 1960 and dam.metadata["tags"] == ["energy"] and dam.metadata["source"] == "test"
    assert dam.metadata["published"] == dt.datetime(1960, 1, 1, tzinfo=dt.timezone.utc)
    assert dam.metadata["document_id"] == "dam" and dam.metadata["collection"] == collection
    assert dam.ref_doc_id == "dam" and "river" in dam.text
    assert all(n.score is not None for n in nodes)


@pytest.mark.parametrize("filters, expected", [
    (MetadataFilters(filters=[F("year", 1950, FilterOperator.GT)]), {"dam", "turbine"}),
    (MetadataFilters(filters=[F("published", "1950-01-01T00:00:00Z", FilterOperator.LT)]), {"mill"}),
    (MetadataFilters(filters=[F("tags", "energy", FilterOperator.CONTAINS), F("year", 2000, FilterOperator.LTE)]), {"dam"}),
    (MetadataFilters(filters=[F("tags", ["wind", "history"], FilterOperator.IN)]), {"mill", "turbine"}),
    (MetadataFilters(filters=[F("year", [1890], FilterOperator.NIN)]), {"dam", "turbine"}),
    (MetadataFilters(filters=[F("year", 1960), F("year", 2010)], condition=FilterCondition.OR), {"dam", "turbine"}),
    (MetadataFilters(filters=[F("source", "test"), MetadataFilters(filters=[F("tags", "wind")], condition=FilterCondition.NOT)]),
     {"mill", "dam"}),
    (MetadataFilters(filters=[F("source", "web", FilterOperator.NE)]), {"mill", "dam", "turbine"}),
    (MetadataFilters(filters=[F("title", "dam", FilterOperator.TEXT_MATCH)]), set()),  # title is not metadata
    (MetadataFilters(filters=[F("colour", None, FilterOperator.IS_EMPTY)]), {"mill", "dam", "turbine"}),
])
def test_llama_index_metadata_filters_apply_in_the_service(server, collection, filters, expected):
    retriever = SearchsvcRetriever(server.target, collection, top_k=10, filters=filters)
    assert {n.node.ref_doc_id for n in retriever.retrieve("river electricity wind wheat")} == expected


def test_unsupported_operators_are_refused():
    with pytest.raises(ValueError, match="any"):
        filter_to_pb(MetadataFilters(filters=[F("tags", ["a"], FilterOperator.ANY)]))


def test_async_retrieval(server, collection):
    retriever = SearchsvcRetriever(server.target, collection, top_k=2, mode="keyword")
    nodes = asyncio.run(retriever.aretrieve("wind turbine"))
    assert nodes[0].node.node_id == "turbine#0"


def test_a_retriever_query_engine_answers_with_a_local_llm(server, collection):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the local-llm extra) runs the local LLM")
    from llama_index.core.query_engine import RetrieverQueryEngine

    from searchsvc.answer.llm import build_llm
    from searchsvc.config import LLMSettings

    local = build_llm(LLMSettings(model="qwen2.5-coder-0.5b-instruct", threads=0, context_window=2048), MODELS_DIR)
    try:
        engine = RetrieverQueryEngine.from_args(SearchsvcRetriever(server.target, collection, top_k=2), llm=local.llm)
        response = engine.query("What does the old mill grind?")
    finally:
        local.close()
    assert response.source_nodes[0].node.ref_doc_id == "mill"
    assert "wheat" in str(response).lower() or "flour" in str(response).lower()
