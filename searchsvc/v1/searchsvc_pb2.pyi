import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLLECTION_STATE_UNSPECIFIED: _ClassVar[CollectionState]
    COLLECTION_STATE_READY: _ClassVar[CollectionState]
    COLLECTION_STATE_READ_ONLY: _ClassVar[CollectionState]
    COLLECTION_STATE_FAILED: _ClassVar[CollectionState]
    COLLECTION_STATE_UNAVAILABLE: _ClassVar[CollectionState]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]
    FUSION_RELATIVE_SCORE: _ClassVar[Fusion]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_KEYWORD: _ClassVar[SearchMode]

class AnswerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANSWER_KIND_UNSPECIFIED: _ClassVar[AnswerKind]
    ANSWER_KIND_GENERATED: _ClassVar[AnswerKind]
    ANSWER_KIND_EXTRACTIVE: _ClassVar[AnswerKind]
    ANSWER_KIND_NO_CONTEXT: _ClassVar[AnswerKind]
    ANSWER_KIND_REFUSED: _ClassVar[AnswerKind]
    ANSWER_KIND_UNANSWERED: _ClassVar[AnswerKind]

class GuardrailStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARDRAIL_STATUS_UNSPECIFIED: _ClassVar[GuardrailStatus]
    GUARDRAIL_STATUS_ALLOWED: _ClassVar[GuardrailStatus]
    GUARDRAIL_STATUS_MODIFIED: _ClassVar[GuardrailStatus]
    GUARDRAIL_STATUS_BLOCKED: _ClassVar[GuardrailStatus]

class DocumentView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_VIEW_UNSPECIFIED: _ClassVar[DocumentView]
    DOCUMENT_VIEW_BASIC: _ClassVar[DocumentView]
    DOCUMENT_VIEW_FULL: _ClassVar[DocumentView]
    DOCUMENT_VIEW_FULL_WITH_VECTORS: _ClassVar[DocumentView]
COLLECTION_STATE_UNSPECIFIED: CollectionState
COLLECTION_STATE_READY: CollectionState
COLLECTION_STATE_READ_ONLY: CollectionState
COLLECTION_STATE_FAILED: CollectionState
COLLECTION_STATE_UNAVAILABLE: CollectionState
FUSION_UNSPECIFIED: Fusion
FUSION_RRF: Fusion
FUSION_RELATIVE_SCORE: Fusion
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_HYBRID: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_KEYWORD: SearchMode
ANSWER_KIND_UNSPECIFIED: AnswerKind
ANSWER_KIND_GENERATED: AnswerKind
ANSWER_KIND_EXTRACTIVE: AnswerKind
ANSWER_KIND_NO_CONTEXT: AnswerKind
ANSWER_KIND_REFUSED: AnswerKind
ANSWER_KIND_UNANSWERED: AnswerKind
GUARDRAIL_STATUS_UNSPECIFIED: GuardrailStatus
GUARDRAIL_STATUS_ALLOWED: GuardrailStatus
GUARDRAIL_STATUS_MODIFIED: GuardrailStatus
GUARDRAIL_STATUS_BLOCKED: GuardrailStatus
DOCUMENT_VIEW_UNSPECIFIED: DocumentView
DOCUMENT_VIEW_BASIC: DocumentView
DOCUMENT_VIEW_FULL: DocumentView
DOCUMENT_VIEW_FULL_WITH_VECTORS: DocumentView

class CollectionConfig(_message.Message):
    __slots__ = ("embedding_model", "analyzer", "chunk_size", "chunk_overlap", "reranker_model", "refresh_interval_ms", "language", "dimension", "dense_index", "backend", "keyword_avg_terms")
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    ANALYZER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    RERANKER_MODEL_FIELD_NUMBER: _ClassVar[int]
    REFRESH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    DENSE_INDEX_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_AVG_TERMS_FIELD_NUMBER: _ClassVar[int]
    embedding_model: str
    analyzer: str
    chunk_size: int
    chunk_overlap: int
    reranker_model: str
    refresh_interval_ms: int
    language: str
    dimension: int
    dense_index: DenseIndexConfig
    backend: str
    keyword_avg_terms: float
    def __init__(self, embedding_model: _Optional[str] = ..., analyzer: _Optional[str] = ..., chunk_size: _Optional[int] = ..., chunk_overlap: _Optional[int] = ..., reranker_model: _Optional[str] = ..., refresh_interval_ms: _Optional[int] = ..., language: _Optional[str] = ..., dimension: _Optional[int] = ..., dense_index: _Optional[_Union[DenseIndexConfig, _Mapping]] = ..., backend: _Optional[str] = ..., keyword_avg_terms: _Optional[float] = ...) -> None: ...

class DenseIndexConfig(_message.Message):
    __slots__ = ("kind", "m", "ef_construction", "ef_search", "quantization", "target_recall")
    KIND_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    m: int
    ef_construction: int
    ef_search: int
    quantization: str
    target_recall: float
    def __init__(self, kind: _Optional[str] = ..., m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ..., quantization: _Optional[str] = ..., target_recall: _Optional[float] = ...) -> None: ...

class ReembedCollectionRequest(_message.Message):
    __slots__ = ("name", "embedding_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    embedding_model: str
    def __init__(self, name: _Optional[str] = ..., embedding_model: _Optional[str] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "config", "document_count", "chunk_count", "dimension", "state", "state_reason", "dense_index_in_use", "version", "writes_in_progress", "dense_ef_search", "dense_recall", "dense_backlog")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    DENSE_INDEX_IN_USE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WRITES_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DENSE_EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    DENSE_RECALL_FIELD_NUMBER: _ClassVar[int]
    DENSE_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: CollectionConfig
    document_count: int
    chunk_count: int
    dimension: int
    state: CollectionState
    state_reason: str
    dense_index_in_use: str
    version: int
    writes_in_progress: int
    dense_ef_search: int
    dense_recall: float
    dense_backlog: int
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[CollectionConfig, _Mapping]] = ..., document_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., dimension: _Optional[int] = ..., state: _Optional[_Union[CollectionState, str]] = ..., state_reason: _Optional[str] = ..., dense_index_in_use: _Optional[str] = ..., version: _Optional[int] = ..., writes_in_progress: _Optional[int] = ..., dense_ef_search: _Optional[int] = ..., dense_recall: _Optional[float] = ..., dense_backlog: _Optional[int] = ...) -> None: ...

class ReopenCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("id", "text", "title", "metadata", "vector", "typed_metadata", "content", "content_type", "filename")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TypedMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TYPED_METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    title: str
    metadata: _containers.ScalarMap[str, str]
    vector: _containers.RepeatedScalarFieldContainer[float]
    typed_metadata: _containers.MessageMap[str, MetadataValue]
    content: bytes
    content_type: str
    filename: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., vector: _Optional[_Iterable[float]] = ..., typed_metadata: _Optional[_Mapping[str, MetadataValue]] = ..., content: _Optional[bytes] = ..., content_type: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class MetadataValue(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value", "timestamp_value", "string_list_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    timestamp_value: _timestamp_pb2.Timestamp
    string_list_value: StringList
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., string_list_value: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BulkIndexRequest(_message.Message):
    __slots__ = ("collection", "documents", "sequence", "refresh")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    sequence: int
    refresh: bool
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., sequence: _Optional[int] = ..., refresh: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("enabled", "candidates", "model")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    candidates: int
    model: str
    def __init__(self, enabled: _Optional[bool] = ..., candidates: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "filter", "mode", "explain", "dense_candidates", "keyword_candidates", "rrf_k", "dense_weight", "keyword_weight", "rerank", "similarity_cutoff", "fusion", "query_vector", "dense", "mmr", "where", "collections", "highlight")
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
    FUSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    MMR_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHT_FIELD_NUMBER: _ClassVar[int]
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
    fusion: Fusion
    query_vector: _containers.RepeatedScalarFieldContainer[float]
    dense: DenseSearchOptions
    mmr: MmrOptions
    where: Filter
    collections: _containers.RepeatedScalarFieldContainer[str]
    highlight: bool
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Mapping[str, str]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., explain: _Optional[bool] = ..., dense_candidates: _Optional[int] = ..., keyword_candidates: _Optional[int] = ..., rrf_k: _Optional[float] = ..., dense_weight: _Optional[float] = ..., keyword_weight: _Optional[float] = ..., rerank: _Optional[_Union[RerankOptions, _Mapping]] = ..., similarity_cutoff: _Optional[float] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., query_vector: _Optional[_Iterable[float]] = ..., dense: _Optional[_Union[DenseSearchOptions, _Mapping]] = ..., mmr: _Optional[_Union[MmrOptions, _Mapping]] = ..., where: _Optional[_Union[Filter, _Mapping]] = ..., collections: _Optional[_Iterable[str]] = ..., highlight: _Optional[bool] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("must", "should", "must_not")
    MUST_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FIELD_NUMBER: _ClassVar[int]
    MUST_NOT_FIELD_NUMBER: _ClassVar[int]
    must: _containers.RepeatedCompositeFieldContainer[FilterClause]
    should: _containers.RepeatedCompositeFieldContainer[FilterClause]
    must_not: _containers.RepeatedCompositeFieldContainer[FilterClause]
    def __init__(self, must: _Optional[_Iterable[_Union[FilterClause, _Mapping]]] = ..., should: _Optional[_Iterable[_Union[FilterClause, _Mapping]]] = ..., must_not: _Optional[_Iterable[_Union[FilterClause, _Mapping]]] = ...) -> None: ...

class FilterClause(_message.Message):
    __slots__ = ("key", "eq", "ne", "any_of", "none_of", "range", "exists", "text_match", "contains", "filter")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EQ_FIELD_NUMBER: _ClassVar[int]
    NE_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MATCH_FIELD_NUMBER: _ClassVar[int]
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    key: str
    eq: MetadataValue
    ne: MetadataValue
    any_of: ValueList
    none_of: ValueList
    range: Range
    exists: bool
    text_match: str
    contains: str
    filter: Filter
    def __init__(self, key: _Optional[str] = ..., eq: _Optional[_Union[MetadataValue, _Mapping]] = ..., ne: _Optional[_Union[MetadataValue, _Mapping]] = ..., any_of: _Optional[_Union[ValueList, _Mapping]] = ..., none_of: _Optional[_Union[ValueList, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., exists: _Optional[bool] = ..., text_match: _Optional[str] = ..., contains: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[MetadataValue]
    def __init__(self, values: _Optional[_Iterable[_Union[MetadataValue, _Mapping]]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: MetadataValue
    gte: MetadataValue
    lt: MetadataValue
    lte: MetadataValue
    def __init__(self, gt: _Optional[_Union[MetadataValue, _Mapping]] = ..., gte: _Optional[_Union[MetadataValue, _Mapping]] = ..., lt: _Optional[_Union[MetadataValue, _Mapping]] = ..., lte: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...

class MmrOptions(_message.Message):
    __slots__ = ("lambda_mult", "candidates")
    LAMBDA_MULT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    lambda_mult: float
    candidates: int
    def __init__(self, lambda_mult: _Optional[float] = ..., candidates: _Optional[int] = ...) -> None: ...

class DenseSearchOptions(_message.Message):
    __slots__ = ("ef_search", "exact")
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    ef_search: int
    exact: bool
    def __init__(self, ef_search: _Optional[int] = ..., exact: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("chunk_id", "document_id", "text", "title", "score", "metadata", "explanation", "typed_metadata", "collection", "highlight")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TypedMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    TYPED_METADATA_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHT_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    document_id: str
    text: str
    title: str
    score: float
    metadata: _containers.ScalarMap[str, str]
    explanation: Explanation
    typed_metadata: _containers.MessageMap[str, MetadataValue]
    collection: str
    highlight: Highlight
    def __init__(self, chunk_id: _Optional[str] = ..., document_id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., typed_metadata: _Optional[_Mapping[str, MetadataValue]] = ..., collection: _Optional[str] = ..., highlight: _Optional[_Union[Highlight, _Mapping]] = ...) -> None: ...

class Highlight(_message.Message):
    __slots__ = ("spans", "snippet", "snippet_span")
    SPANS_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_SPAN_FIELD_NUMBER: _ClassVar[int]
    spans: _containers.RepeatedCompositeFieldContainer[TextSpan]
    snippet: str
    snippet_span: TextSpan
    def __init__(self, spans: _Optional[_Iterable[_Union[TextSpan, _Mapping]]] = ..., snippet: _Optional[str] = ..., snippet_span: _Optional[_Union[TextSpan, _Mapping]] = ...) -> None: ...

class TextSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("hits", "timings", "rerank", "cutoff_dropped", "fusion", "query_language", "truncated_hits")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_DROPPED_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timings: Timings
    rerank: RerankStatus
    cutoff_dropped: int
    fusion: Fusion
    query_language: str
    truncated_hits: int
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., rerank: _Optional[_Union[RerankStatus, _Mapping]] = ..., cutoff_dropped: _Optional[int] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., query_language: _Optional[str] = ..., truncated_hits: _Optional[int] = ...) -> None: ...

class AnswerRequest(_message.Message):
    __slots__ = ("search", "max_tokens", "temperature", "extractive", "bypass_cache")
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    EXTRACTIVE_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    search: SearchRequest
    max_tokens: int
    temperature: float
    extractive: bool
    bypass_cache: bool
    def __init__(self, search: _Optional[_Union[SearchRequest, _Mapping]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., extractive: _Optional[bool] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("marker", "source", "chunk_id", "document_id", "quote", "quote_start", "quote_end", "inferred", "page", "filename")
    MARKER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    QUOTE_START_FIELD_NUMBER: _ClassVar[int]
    QUOTE_END_FIELD_NUMBER: _ClassVar[int]
    INFERRED_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    marker: str
    source: int
    chunk_id: str
    document_id: str
    quote: str
    quote_start: int
    quote_end: int
    inferred: bool
    page: int
    filename: str
    def __init__(self, marker: _Optional[str] = ..., source: _Optional[int] = ..., chunk_id: _Optional[str] = ..., document_id: _Optional[str] = ..., quote: _Optional[str] = ..., quote_start: _Optional[int] = ..., quote_end: _Optional[int] = ..., inferred: _Optional[bool] = ..., page: _Optional[int] = ..., filename: _Optional[str] = ...) -> None: ...

class RailHit(_message.Message):
    __slots__ = ("rail", "action", "reason")
    RAIL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rail: str
    action: str
    reason: str
    def __init__(self, rail: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GuardrailVerdict(_message.Message):
    __slots__ = ("status", "hits", "input_ms", "output_ms")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    INPUT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MS_FIELD_NUMBER: _ClassVar[int]
    status: GuardrailStatus
    hits: _containers.RepeatedCompositeFieldContainer[RailHit]
    input_ms: float
    output_ms: float
    def __init__(self, status: _Optional[_Union[GuardrailStatus, str]] = ..., hits: _Optional[_Iterable[_Union[RailHit, _Mapping]]] = ..., input_ms: _Optional[float] = ..., output_ms: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "cached", "prompt_tokens_reused", "cached_similarity")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_REUSED_FIELD_NUMBER: _ClassVar[int]
    CACHED_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached: bool
    prompt_tokens_reused: int
    cached_similarity: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., cached: _Optional[bool] = ..., prompt_tokens_reused: _Optional[int] = ..., cached_similarity: _Optional[float] = ...) -> None: ...

class AnswerTimings(_message.Message):
    __slots__ = ("retrieve_ms", "search", "guard_input_ms", "first_token_ms", "generate_ms", "guard_output_ms", "total_ms", "context_ms")
    RETRIEVE_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    GUARD_INPUT_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    GUARD_OUTPUT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_MS_FIELD_NUMBER: _ClassVar[int]
    retrieve_ms: float
    search: Timings
    guard_input_ms: float
    first_token_ms: float
    generate_ms: float
    guard_output_ms: float
    total_ms: float
    context_ms: float
    def __init__(self, retrieve_ms: _Optional[float] = ..., search: _Optional[_Union[Timings, _Mapping]] = ..., guard_input_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., generate_ms: _Optional[float] = ..., guard_output_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., context_ms: _Optional[float] = ...) -> None: ...

class Generator(_message.Message):
    __slots__ = ("backend", "model", "fallback_reason")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model: str
    fallback_reason: str
    def __init__(self, backend: _Optional[str] = ..., model: _Optional[str] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class AnswerResponse(_message.Message):
    __slots__ = ("answer", "kind", "citations", "context", "guardrails", "usage", "timings", "generator")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    answer: str
    kind: AnswerKind
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    context: _containers.RepeatedCompositeFieldContainer[Hit]
    guardrails: GuardrailVerdict
    usage: Usage
    timings: AnswerTimings
    generator: Generator
    def __init__(self, answer: _Optional[str] = ..., kind: _Optional[_Union[AnswerKind, str]] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., context: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., guardrails: _Optional[_Union[GuardrailVerdict, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[AnswerTimings, _Mapping]] = ..., generator: _Optional[_Union[Generator, _Mapping]] = ...) -> None: ...

class AnswerContext(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class AnswerDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class AnswerEvent(_message.Message):
    __slots__ = ("context", "delta", "done")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    context: AnswerContext
    delta: AnswerDelta
    done: AnswerResponse
    def __init__(self, context: _Optional[_Union[AnswerContext, _Mapping]] = ..., delta: _Optional[_Union[AnswerDelta, _Mapping]] = ..., done: _Optional[_Union[AnswerResponse, _Mapping]] = ...) -> None: ...

class GetAnswerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AnswerStats(_message.Message):
    __slots__ = ("answers_by_kind", "prompt_tokens", "completion_tokens", "cache_hits", "cache_misses", "semantic_cache_hits", "semantic_cache_misses")
    class AnswersByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ANSWERS_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    answers_by_kind: _containers.ScalarMap[str, int]
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    cache_misses: int
    semantic_cache_hits: int
    semantic_cache_misses: int
    def __init__(self, answers_by_kind: _Optional[_Mapping[str, int]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., semantic_cache_hits: _Optional[int] = ..., semantic_cache_misses: _Optional[int] = ...) -> None: ...

class StoredDocument(_message.Message):
    __slots__ = ("id", "text", "title", "metadata", "typed_metadata", "chunks")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TypedMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TYPED_METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    title: str
    metadata: _containers.ScalarMap[str, str]
    typed_metadata: _containers.MessageMap[str, MetadataValue]
    chunks: _containers.RepeatedCompositeFieldContainer[StoredChunk]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., typed_metadata: _Optional[_Mapping[str, MetadataValue]] = ..., chunks: _Optional[_Iterable[_Union[StoredChunk, _Mapping]]] = ...) -> None: ...

class StoredChunk(_message.Message):
    __slots__ = ("id", "index", "start_char", "end_char", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_CHAR_FIELD_NUMBER: _ClassVar[int]
    END_CHAR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    index: int
    start_char: int
    end_char: int
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., index: _Optional[int] = ..., start_char: _Optional[int] = ..., end_char: _Optional[int] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids", "view")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    view: DocumentView
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., view: _Optional[_Union[DocumentView, str]] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "not_found_ids")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[StoredDocument]
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, documents: _Optional[_Iterable[_Union[StoredDocument, _Mapping]]] = ..., not_found_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ("collection", "where", "filter", "page_size", "page_token", "view")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    collection: str
    where: Filter
    filter: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    view: DocumentView
    def __init__(self, collection: _Optional[str] = ..., where: _Optional[_Union[Filter, _Mapping]] = ..., filter: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., view: _Optional[_Union[DocumentView, str]] = ...) -> None: ...

class ListDocumentsResponse(_message.Message):
    __slots__ = ("documents", "next_page_token")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[StoredDocument]
    next_page_token: str
    def __init__(self, documents: _Optional[_Iterable[_Union[StoredDocument, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CountDocumentsRequest(_message.Message):
    __slots__ = ("collection", "where", "filter")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    where: Filter
    filter: _containers.ScalarMap[str, str]
    def __init__(self, collection: _Optional[str] = ..., where: _Optional[_Union[Filter, _Mapping]] = ..., filter: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CountDocumentsResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("alias", "collection", "backend")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    backend: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class AliasAction(_message.Message):
    __slots__ = ("create", "delete", "repoint")
    CREATE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    REPOINT_FIELD_NUMBER: _ClassVar[int]
    create: Alias
    delete: str
    repoint: Alias
    def __init__(self, create: _Optional[_Union[Alias, _Mapping]] = ..., delete: _Optional[str] = ..., repoint: _Optional[_Union[Alias, _Mapping]] = ...) -> None: ...

class UpdateAliasesRequest(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[AliasAction]
    def __init__(self, actions: _Optional[_Iterable[_Union[AliasAction, _Mapping]]] = ...) -> None: ...

class UpdateAliasesResponse(_message.Message):
    __slots__ = ("aliases",)
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ...) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ("aliases",)
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("name", "collection", "size_bytes", "create_time", "sequence", "format_version", "document_count", "chunk_count", "sha256", "config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    collection: str
    size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    sequence: int
    format_version: int
    document_count: int
    chunk_count: int
    sha256: str
    config: CollectionConfig
    def __init__(self, name: _Optional[str] = ..., collection: _Optional[str] = ..., size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., format_version: _Optional[int] = ..., document_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., sha256: _Optional[str] = ..., config: _Optional[_Union[CollectionConfig, _Mapping]] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RestoreSnapshotRequest(_message.Message):
    __slots__ = ("name", "collection")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    collection: str
    def __init__(self, name: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class DownloadSnapshotRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SnapshotData(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class UploadSnapshotRequest(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
