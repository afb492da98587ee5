"""A LlamaIndex retriever over a running searchsvc (issue 18): `SearchsvcRetriever`, a `BaseRetriever` that
speaks gRPC, so a LlamaIndex application (a RetrieverQueryEngine, a chat engine, an agent tool) uses the
service's hybrid search, rerank, cutoff and filters without glue.

    retriever = SearchsvcRetriever("localhost:50051", "docs", top_k=5,
                                   filters=MetadataFilters(filters=[MetadataFilter(key="year", value=2020,
                                                                                   operator=FilterOperator.GTE)]))
    engine = RetrieverQueryEngine.from_args(retriever, llm=llm)

Hits become `NodeWithScore`s: the chunk's text, its id, a SOURCE relationship to its document, and metadata
(the document's, typed: timestamps as timezone-aware datetimes; plus document_id, title, collection and the
chunk's offsets). LlamaIndex `MetadataFilters` translate into the service's Filter (filters.py): AND -> must,
OR -> should, NOT -> must_not; EQ, NE, IN, NIN, GT, GTE, LT, LTE, CONTAINS, TEXT_MATCH, IS_EMPTY onto eq, ne,
any_of, none_of, range, contains, text_match, exists false. Two differ slightly from LlamaIndex's in-memory
store: CONTAINS is list membership (not a substring test), and IS_EMPTY does not count "" as empty. A range
filter whose value is a string takes it as an ISO 8601 time ("2024-01-01"). Other operators are refused.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Sequence

import grpc
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from searchsvc.api.metadata_pb import value_to_pb
from searchsvc.client.channel import open_channel
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

_MODES = {"hybrid": pb.SEARCH_MODE_HYBRID, "dense": pb.SEARCH_MODE_DENSE, "keyword": pb.SEARCH_MODE_KEYWORD}
_RANGES = {FilterOperator.GT: "gt", FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}
_CLAUSES = {FilterCondition.AND: "must", FilterCondition.OR: "should", FilterCondition.NOT: "must_not"}


class SearchsvcRetriever(BaseRetriever):
    def __init__(
        self,
        target: str,
        collection: str | Sequence[str],
        *,
        top_k: int = 10,
        mode: str = "hybrid",
        filters: MetadataFilters | None = None,
        rerank: bool = False,
        similarity_cutoff: float | None = None,
        timeout_s: float = 30.0,
        api_key: str = "",
        tls: bool = False,
        tls_ca_file: Path | None = None,
        **kwargs: Any,
    ) -> None:
        """`collection`: one name, or several (searched together, merged by rank). `api_key`, `tls`,
        `tls_ca_file`: as searchsvc.client.channel.open_channel."""
        super().__init__(**kwargs)
        names = [collection] if isinstance(collection, str) else list(collection)
        self._request = pb.SearchRequest(collection=names[0], collections=names[1:], top_k=top_k, mode=_MODES[mode],
                                         rerank=pb.RerankOptions(enabled=rerank))
        if similarity_cutoff is not None:
            self._request.similarity_cutoff = similarity_cutoff
        if filters is not None:
            self._request.where.CopyFrom(filter_to_pb(filters))
        self._target, self._timeout, self._tls, self._tls_ca_file = target, timeout_s, tls or bool(tls_ca_file), tls_ca_file
        self._metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self._stub = pb_grpc.SearchServiceStub(open_channel(target, api_key=api_key, tls=tls, tls_ca_file=tls_ca_file))
        self._async_stub = None

    def _search_request(self, query: QueryBundle) -> pb.SearchRequest:
        request = pb.SearchRequest()
        request.CopyFrom(self._request)
        request.query = query.query_str
        return request

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return nodes_from_pb(self._stub.Search(self._search_request(query_bundle), timeout=self._timeout))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._async_stub is None:  # an asyncio channel belongs to the loop that made it: made on first use
            if self._tls:
                from searchsvc.api.tls import channel_credentials

                channel = grpc.aio.secure_channel(self._target, channel_credentials(self._tls_ca_file, None, None))
            else:
                channel = grpc.aio.insecure_channel(self._target)
            self._async_stub = pb_grpc.SearchServiceStub(channel)
        response = await self._async_stub.Search(self._search_request(query_bundle), timeout=self._timeout,
                                                 metadata=self._metadata)
        return nodes_from_pb(response)


def nodes_from_pb(response: pb.SearchResponse) -> list[NodeWithScore]:
    return [NodeWithScore(node=_node(hit), score=hit.score) for hit in response.hits]


def _node(hit: pb.Hit) -> TextNode:
    metadata = {key: _python_value(value) for key, value in hit.typed_metadata.items()}
    metadata.update(document_id=hit.document_id, title=hit.title, collection=hit.collection,
                    **{k: int(hit.metadata[k]) for k in ("chunk_index", "start_char", "end_char") if k in hit.metadata})
    return TextNode(id_=hit.chunk_id, text=hit.text, metadata=metadata,
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.document_id)},
                    excluded_embed_metadata_keys=list(metadata), excluded_llm_metadata_keys=["chunk_index", "start_char", "end_char"])


def _python_value(v: pb.MetadataValue):
    kind = v.WhichOneof("kind")
    if kind == "timestamp_value":
        return v.timestamp_value.ToDatetime(tzinfo=dt.timezone.utc)
    if kind == "string_list_value":
        return list(v.string_list_value.values)
    return getattr(v, kind) if kind else None


def filter_to_pb(filters: MetadataFilters) -> pb.Filter:
    """LlamaIndex MetadataFilters as the service's Filter."""
    clauses = [_clause(f) for f in filters.filters]
    out = pb.Filter()
    getattr(out, _CLAUSES[filters.condition or FilterCondition.AND]).extend(clauses)
    return out


def _clause(f: MetadataFilter | MetadataFilters) -> pb.FilterClause:
    if isinstance(f, MetadataFilters):
        return pb.FilterClause(filter=filter_to_pb(f))
    op, clause = f.operator, pb.FilterClause(key=f.key)
    if op in (FilterOperator.EQ, FilterOperator.NE):
        getattr(clause, op.name.lower()).CopyFrom(_value(f.value))
    elif op in (FilterOperator.IN, FilterOperator.NIN):
        target = clause.any_of if op == FilterOperator.IN else clause.none_of
        target.values.extend(_value(v) for v in f.value)
    elif op in _RANGES:
        # MetadataFilter values are numbers, strings or lists: a range over a string is over the timestamp it
        # spells (ISO 8601, as Qdrant's and Elasticsearch's date ranges take them).
        bound = f.value
        if isinstance(bound, str):
            try:
                bound = dt.datetime.fromisoformat(bound)
            except ValueError:
                raise ValueError(f"a {op.value!r} filter on {f.key!r} needs a number or an ISO 8601 time, not {bound!r}") from None
        getattr(clause.range, _RANGES[op]).CopyFrom(_value(bound))
    elif op == FilterOperator.CONTAINS:
        clause.contains = str(f.value)
    elif op == FilterOperator.TEXT_MATCH:
        clause.text_match = str(f.value)
    elif op == FilterOperator.IS_EMPTY:
        clause.exists = False
    else:
        raise ValueError(f"searchsvc has no filter operator for {op.value!r} (key {f.key!r})")
    return clause


def _value(value) -> pb.MetadataValue:
    if isinstance(value, dt.datetime):
        out = pb.MetadataValue()
        out.timestamp_value.FromDatetime(value)  # a naive datetime is UTC
        return out
    if isinstance(value, list):
        value = tuple(value)
    return value_to_pb(value)
