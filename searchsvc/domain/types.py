"""Domain types shared by the pipeline stages. Plain dataclasses: no gRPC, no storage."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from searchsvc.domain.filters import Filter, Metadata
from searchsvc.errors import InvalidArgument

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_DOCUMENT_ID_BYTES = 512


def validate_collection_name(name: str, field_name: str = "name") -> str:
    # The name becomes a directory under the index dir: this pattern admits no '/', '.', or '..'.
    if not COLLECTION_NAME.match(name or ""):
        raise InvalidArgument(field_name, "must be 1-64 characters of [A-Za-z0-9_-] starting with a letter or digit")
    return name


class SearchMode(enum.Enum):
    HYBRID = "hybrid"
    DENSE = "dense"
    KEYWORD = "keyword"


class Fusion(enum.Enum):
    RRF = "rrf"
    RELATIVE_SCORE = "relative_score"


def indexed_text(title: str, text: str) -> str:
    """What both legs and the reranker see: the title is part of the evidence."""
    return f"{title}\n{text}" if title else text


@dataclass(frozen=True)
class CollectionConfig:
    """Fixed at creation: changing any of these needs a re-index."""

    embedding_model: str
    analyzer: str
    chunk_size: int
    chunk_overlap: int
    reranker_model: str = ""
    # <0: the keyword leg refreshes before each ack; >0: at most this long after an ack.
    refresh_interval_ms: int = 1000
    # "en", "ko", "auto" (searchsvc/retrieve/language.py); empty in a request: the server's default_language.
    language: str = ""
    # The vectors' length when embedding_model is "external" (callers send vectors); else 0.
    dimension: int = 0
    # The dense leg's index: "flat" (exact scan), "hnsw" (FAISS HNSW graph), or "auto" (flat, turned into HNSW
    # once the collection holds AUTO_HNSW_MIN_CHUNKS). The hnsw_* values are HNSW's M, efConstruction and the
    # default efSearch (a search may override it). Collections written before these existed read the defaults.
    dense_index: str = "auto"
    hnsw_m: int = 32
    # 80, not FAISS's 40: on 300k clustered 384-d vectors (lab/bench/workload.py: ClusteredVectors) efConstruction 40 built a graph
    # with recall@10 0.90 at efSearch 128 (0.95 at 512); 80 gave 1.000, inserting at 3.9k instead of 6.9k/s.
    hnsw_ef_construction: int = 80
    # 256, not 128: at 1M clustered 384-d chunks (bench --scale) efSearch 128 gave recall@10 0.936, 256 gave 0.972
    # and 512 0.982, at DENSE p50 4.0 / 4.1 / 4.3 ms (at 100k-300k, 128 already gave ~1.0).
    hnsw_ef_search: int = 256
    # "none": the graph keeps float32 vectors; "sq8": FAISS's 8-bit scalar quantizer (a quarter of the memory),
    # trained on the collection's first AUTO_HNSW_MIN_CHUNKS vectors.
    dense_quantization: str = "none"
    # Where the collection is stored: "embedded" (FAISS + tantivy + SQLite under the index dir) or "qdrant".
    backend: str = "embedded"
    # Qdrant backend: BM25's average terms per chunk, fixed at creation (storage/qdrant/collection.py). 0 on the
    # embedded backend (tantivy uses the exact average), and on Qdrant collections made before it existed.
    keyword_avg_terms: float = 0.0
    # HNSW: the recall@10 that efSearch is calibrated to reach on the collection's own vectors
    # (storage/embedded/recall.py); 0: off, hnsw_ef_search as set.
    hnsw_target_recall: float = 0.0


BACKENDS = ("embedded", "qdrant")
MAX_KEYWORD_AVG_TERMS = 1_000_000
DENSE_INDEX_KINDS = ("auto", "flat", "hnsw")
DENSE_QUANTIZATIONS = ("none", "sq8")
# Below this many chunks "auto" keeps the exact scan: it costs ~3 ms at 20k 384-d chunks on 2 cores (14-16 ms at
# 100k) against ~0.2-0.4 ms for HNSW, and it is exact. Past it the scan grows linearly; HNSW barely grows.
AUTO_HNSW_MIN_CHUNKS = 20_000
MAX_EF_SEARCH = 4096


# Metadata keys the service adds to every chunk; user metadata may not use them.
RESERVED_METADATA = ("document_id", "title", "chunk_index", "start_char", "end_char")


@dataclass
class Document:
    id: str
    text: str
    title: str = ""
    metadata: Metadata = field(default_factory=dict)  # strings, numbers, booleans, timestamps, string lists
    vector: Sequence[float] | None = None  # the caller's embedding: one chunk, no model (retrieve/external.py)
    invalid: tuple[str, str] | None = None  # (field path, why): what the service could not map; refused in ingest
    # A file instead of text: read on the server (ingest/file_reader.py) into `text` and `units`.
    content: bytes | None = None
    content_type: str = ""
    filename: str = ""
    units: list[Unit] | None = None  # the parts no chunk spans (pages, slides, rows); their texts make `text`


@dataclass
class Unit:
    """A part of a document that no chunk spans: a page, a slide, a sheet's row. `location` becomes typed
    metadata of its chunks: {"page": 3}, {"slide": 2}, {"sheet": "Sales", "row": 14}."""

    text: str
    location: dict[str, int | str] = field(default_factory=dict)


UNIT_SEPARATOR = "\n\n"  # between the units of a document's text


def text_of_units(units: Sequence[Unit]) -> str:
    return UNIT_SEPARATOR.join(u.text for u in units)


@dataclass
class Chunk:
    """The unit of retrieval. `id` is deterministic: `<document_id>#<index>`, so re-sends replace."""

    id: str
    document_id: str
    index: int
    text: str
    title: str
    metadata: Metadata
    start_char: int
    end_char: int

    @property
    def indexed_text(self) -> str:
        return indexed_text(self.title, self.text)


@dataclass(frozen=True)
class ScoredId:
    """One candidate from one leg: 1-based rank and that leg's raw score."""

    chunk_id: str
    rank: int
    score: float


@dataclass
class SearchParams:
    query: str
    top_k: int = 10
    filter: Filter | None = None  # filters.py: the request's `filter` pairs and `where`, together
    mode: SearchMode = SearchMode.HYBRID
    explain: bool = False
    dense_candidates: int = 50
    keyword_candidates: int = 50
    rrf_k: float = 60.0
    # None: the defaults of the query's language (searchsvc/retrieve/language.py).
    fusion: Fusion | None = None
    dense_weight: float | None = None
    keyword_weight: float | None = None
    rerank: bool = False
    rerank_candidates: int = 50
    rerank_model: str = ""  # overrides the collection's reranker_model
    similarity_cutoff: float | None = None
    query_vector: Sequence[float] | None = None  # the caller's query embedding; checked against the collection
    ef_search: int | None = None  # HNSW beam width for this search; None: the collection's hnsw_ef_search
    exact: bool = False  # the dense leg scans every vector even on an HNSW collection
    mmr_lambda: float | None = None  # maximal marginal relevance (pipeline.py); None: off
    mmr_candidates: int = 0
    highlight: bool = False  # fill Hit.highlight (highlight.py)

    def validate(self, *, max_top_k: int, max_query_chars: int) -> None:
        """Raise InvalidArgument naming the first bad field."""
        validate_search_params(self, max_top_k=max_top_k, max_query_chars=max_query_chars)


@dataclass(frozen=True)
class Highlight:
    """Why a hit matched (search/highlight.py computes it)."""

    spans: list[tuple[int, int]]  # [start, end) character ranges in the text, merged when adjacent
    snippet_start: int
    snippet_end: int


@dataclass
class Hit:
    chunk_id: str
    document_id: str
    text: str
    title: str
    score: float
    metadata: dict[str, str]  # the string values, and the chunk's position (chunk_index, start_char, end_char)
    typed_metadata: Metadata = field(default_factory=dict)  # every value, typed
    collection: str = ""
    highlight: Highlight | None = None
    dense: ScoredId | None = None
    keyword: ScoredId | None = None
    fused_score: float | None = None
    rerank_score: float | None = None
    similarity: float | None = None


@dataclass
class RerankOutcome:
    applied: bool = False
    model: str = ""
    skipped_reason: str = ""


@dataclass
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float]
    rerank: RerankOutcome
    cutoff_dropped: int = 0
    fusion: Fusion | None = None  # as applied (hybrid mode only)
    query_language: str = ""
    # The unit vector the search embedded the query text as, None if no stage needed one or the caller gave its
    # own query_vector (maybe another model's): the answer engine's similar-question cache and sentence scorer
    # use it instead of embedding the question a second time.
    query_vector: Sequence[float] | None = None


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise InvalidArgument(field_name, message)


def validate_search_params(p: SearchParams, *, max_top_k: int, max_query_chars: int) -> None:
    vector_only = p.mode is SearchMode.DENSE and p.query_vector is not None
    _check(vector_only or bool(p.query.strip()), "query", "must not be empty (except in DENSE mode with a query_vector)")
    _check(len(p.query) <= max_query_chars, "query", f"longer than {max_query_chars} characters")
    _check(1 <= p.top_k <= max_top_k, "top_k", f"must be between 1 and {max_top_k}")
    _check(1 <= p.dense_candidates <= 1000, "dense_candidates", "must be between 1 and 1000")
    _check(1 <= p.keyword_candidates <= 1000, "keyword_candidates", "must be between 1 and 1000")
    _check(p.rrf_k >= 0, "rrf_k", "must be >= 0")
    _check(p.dense_weight is None or p.dense_weight >= 0, "dense_weight", "must be >= 0")
    _check(p.keyword_weight is None or p.keyword_weight >= 0, "keyword_weight", "must be >= 0")
    _check(1 <= p.rerank_candidates <= 200, "rerank.candidates", "must be between 1 and 200")
    _check(p.ef_search is None or 1 <= p.ef_search <= MAX_EF_SEARCH, "dense.ef_search", f"must be between 1 and {MAX_EF_SEARCH}")
    if p.mmr_lambda is not None:
        _check(0 <= p.mmr_lambda <= 1, "mmr.lambda_mult", "must be between 0 and 1")
        _check(p.top_k <= p.mmr_candidates <= 200, "mmr.candidates", f"must be between top_k ({p.top_k}) and 200")

