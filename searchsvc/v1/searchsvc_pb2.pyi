from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_KEYWORD: _ClassVar[SearchMode]
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_HYBRID: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_KEYWORD: SearchMode

class CollectionConfig(_message.Message):
    __slots__ = ("embedding_model", "analyzer", "chunk_size", "chunk_overlap", "reranker_model", "refresh_interval_ms")
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    ANALYZER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    RERANKER_MODEL_FIELD_NUMBER: _ClassVar[int]
    REFRESH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    embedding_model: str
    analyzer: str
    chunk_size: int
    chunk_overlap: int
    reranker_model: str
    refresh_interval_ms: int
    def __init__(self, embedding_model: _Optional[str] = ..., analyzer: _Optional[str] = ..., chunk_size: _Optional[int] = ..., chunk_overlap: _Optional[int] = ..., reranker_model: _Optional[str] = ..., refresh_interval_ms: _Optional[int] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "config", "document_count", "chunk_count", "dimension")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: CollectionConfig
    document_count: int
    chunk_count: int
    dimension: int
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[CollectionConfig, _Mapping]] = ..., document_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., dimension: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: CollectionConfig
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[CollectionConfig, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "title", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    title: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BulkIndexRequest(_message.Message):
    __slots__ = ("collection", "documents", "sequence")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    sequence: int
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

class DocumentError(_message.Message):
    __slots__ = ("index", "document_id", "code", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    document_id: str
    code: int
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., document_id: _Optional[str] = ..., code: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class BulkIndexResponse(_message.Message):
    __slots__ = ("sequence", "indexed_count", "replaced_count", "failed_count", "chunk_count", "errors")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEXED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REPLACED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    indexed_count: int
    replaced_count: int
    failed_count: int
    chunk_count: int
    errors: _containers.RepeatedCompositeFieldContainer[DocumentError]
    def __init__(self, sequence: _Optional[int] = ..., indexed_count: _Optional[int] = ..., replaced_count: _Optional[int] = ..., failed_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[DocumentError, _Mapping]]] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted_count", "not_found_count")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    not_found_count: int
    def __init__(self, deleted_count: _Optional[int] = ..., not_found_count: _Optional[int] = ...) -> None: ...

class RerankOptions(_message.Message):
    __slots__ = ("enabled", "candidates")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    candidates: int
    def __init__(self, enabled: _Optional[bool] = ..., candidates: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "filter", "mode", "explain", "dense_candidates", "keyword_candidates", "rrf_k", "dense_weight", "keyword_weight", "rerank", "similarity_cutoff")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    DENSE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    top_k: int
    filter: _containers.ScalarMap[str, str]
    mode: SearchMode
    explain: bool
    dense_candidates: int
    keyword_candidates: int
    rrf_k: float
    dense_weight: float
    keyword_weight: float
    rerank: RerankOptions
    similarity_cutoff: float
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Mapping[str, str]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., explain: _Optional[bool] = ..., dense_candidates: _Optional[int] = ..., keyword_candidates: _Optional[int] = ..., rrf_k: _Optional[float] = ..., dense_weight: _Optional[float] = ..., keyword_weight: _Optional[float] = ..., rerank: _Optional[_Union[RerankOptions, _Mapping]] = ..., similarity_cutoff: _Optional[float] = ...) -> None: ...

class LegScore(_message.Message):
    __slots__ = ("rank", "score")
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    score: float
    def __init__(self, rank: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("dense", "keyword", "fused_score", "rerank_score", "similarity")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    FUSED_SCORE_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    dense: LegScore
    keyword: LegScore
    fused_score: float
    rerank_score: float
    similarity: float
    def __init__(self, dense: _Optional[_Union[LegScore, _Mapping]] = ..., keyword: _Optional[_Union[LegScore, _Mapping]] = ..., fused_score: _Optional[float] = ..., rerank_score: _Optional[float] = ..., similarity: _Optional[float] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("chunk_id", "document_id", "text", "title", "score", "metadata", "explanation")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    document_id: str
    text: str
    title: str
    score: float
    metadata: _containers.ScalarMap[str, str]
    explanation: Explanation
    def __init__(self, chunk_id: _Optional[str] = ..., document_id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("embed_ms", "dense_ms", "keyword_ms", "fuse_ms", "rerank_ms", "cutoff_ms", "total_ms")
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    DENSE_MS_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_MS_FIELD_NUMBER: _ClassVar[int]
    FUSE_MS_FIELD_NUMBER: _ClassVar[int]
    RERANK_MS_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    embed_ms: float
    dense_ms: float
    keyword_ms: float
    fuse_ms: float
    rerank_ms: float
    cutoff_ms: float
    total_ms: float
    def __init__(self, embed_ms: _Optional[float] = ..., dense_ms: _Optional[float] = ..., keyword_ms: _Optional[float] = ..., fuse_ms: _Optional[float] = ..., rerank_ms: _Optional[float] = ..., cutoff_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class RerankStatus(_message.Message):
    __slots__ = ("applied", "model", "skipped_reason")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    model: str
    skipped_reason: str
    def __init__(self, applied: _Optional[bool] = ..., model: _Optional[str] = ..., skipped_reason: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "timings", "rerank", "cutoff_dropped")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_DROPPED_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timings: Timings
    rerank: RerankStatus
    cutoff_dropped: int
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., rerank: _Optional[_Union[RerankStatus, _Mapping]] = ..., cutoff_dropped: _Optional[int] = ...) -> None: ...
