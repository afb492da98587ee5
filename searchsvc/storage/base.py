"""The interface between the service (chunking, embedding, analysis, fusion, rerank, cutoff, answers) and a
collection's storage (vectors, keyword postings, chunk texts, filters).

The service computes everything that must behave the same on every backend: query vectors (the collection's
embedder, or the caller's vector), keyword terms (the collection's analyzer: kiwi morphemes for Korean, the
english chain), fusion and what follows it. A backend answers the two legs and serves stored chunks:

- `dense_search`: top-k chunk ids by cosine to a unit vector;
- `keyword_search`: top-k chunk ids by BM25 (collection-wide IDF) over already-analyzed terms;
- both apply a metadata filter (searchsvc/domain/filters.py: typed conditions with must / should / must_not) inside
  the search, before top-k, so a selective filter costs no candidate slots; filters.matches defines what it
  selects, and every backend is tested against it;
- `similarities`: the stored vectors' cosine to a query vector, for chunks a leg found (the cutoff and relative
  score fusion need it for keyword-only hits);
- `vectors`: the stored unit vectors themselves (MMR compares hits with each other);
- `get_chunks`: the stored chunks themselves (text, title, document id, offsets, user metadata);
- `term_spans`: the collection's analyzer on a stored text, with each term's surface range (highlights);
- `get_documents`, `list_documents`, `count_documents`: whole documents (documents.py), read by id, listed in
  the backend's stable order from a position, counted; a filter selects a document when its metadata (every
  chunk's) matches.

Ids a leg returns may be deleted before `get_chunks`, `similarities` or `vectors` reads them: they skip them silently.

Writes arrive prepared (ingest/batch.py: checked, chunked, embedded): `upsert` replaces whole documents by their
chunks and vectors (and stores the texts their chunks do not reproduce), `delete_documents` removes documents. Both return only once the change is durable: an acked
write survives the process dying at any moment after.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from searchsvc.domain.documents import DocumentView, StoredDocument
from searchsvc.domain.filters import Filter
from searchsvc.domain.types import Chunk, CollectionConfig, ScoredId

MetadataFilter = Filter  # searchsvc/domain/filters.py


@runtime_checkable
class CollectionStorage(Protocol):
    name: str
    config: CollectionConfig

    @property
    def dimension(self) -> int: ...

    @property
    def chunk_count(self) -> int: ...

    @property
    def document_count(self) -> int: ...

    @property
    def read_only_reason(self) -> str:
        """Why writes are refused ("" when they are not): a storage fault until the collection is reopened."""
        ...

    @property
    def dense_index_in_use(self) -> str:
        """The dense index serving searches ("flat", "hnsw", "hnsw+sq8", or the backend's own)."""
        ...

    @property
    def dense_ef_search(self) -> int:
        """The ANN beam width searches use by default (configured or calibrated); 0 where none is this server's."""
        ...

    @property
    def dense_recall(self) -> float:
        """Recall@10 measured at dense_ef_search by the last calibration; 0 when not calibrated."""
        ...

    @property
    def dense_backlog(self) -> int:
        """Vectors acked but not in the ANN graph yet (searched exactly meanwhile); 0 where none is this server's."""
        ...

    @property
    def version(self) -> int:
        """Changes with every committed write (answers are cached per collection version)."""
        ...

    @property
    def writes_in_progress(self) -> int:
        """Writes begun and not finished, whose effects a reader may see in part (0 where a write becomes
        visible whole, as on the embedded backend). With `version`, a reader of many pages can tell that it read
        one state: no write in progress before, and the same version after."""
        ...

    def embed_query(self, query: str) -> np.ndarray:
        """The collection's embedder on a query: a unit vector of `dimension` floats."""
        ...

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """The collection's embedder on passages, one call for the batch: (len(texts), dimension) floats."""
        ...

    def analyze_query(self, query: str) -> list[str]:
        """The keyword terms of a query, by the collection's analyzer."""
        ...

    def term_spans(self, text: str) -> list[tuple[str, int, int]]:
        """The collection's analyzer on a stored text, each term with its surface range (highlights)."""
        ...

    def may_match(self, filter: MetadataFilter | None) -> bool:
        """False only when `filter` certainly matches no chunk (the pipeline then skips embedding)."""
        ...

    def dense_search(
        self, vector: np.ndarray, k: int, filter: MetadataFilter | None = None, *, ef_search: int | None = None,
        exact: bool = False,
    ) -> list[ScoredId]:
        """Top-k by cosine. `ef_search`: the ANN beam width for this search; `exact`: scan instead of ANN."""
        ...

    def keyword_search(self, terms: Sequence[str], k: int, filter: MetadataFilter | None = None) -> list[ScoredId]: ...

    def similarities(self, vector: np.ndarray, chunk_ids: Sequence[str]) -> dict[str, float]: ...

    def vectors(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    def get_chunks(self, chunk_ids: Sequence[str]) -> dict[str, Chunk]: ...

    def get_documents(self, document_ids: Sequence[str], view: DocumentView) -> dict[str, StoredDocument]:
        """The stored documents among `document_ids`."""
        ...

    def list_documents(self, filter: MetadataFilter | None, after: str, limit: int) -> tuple[list[str], str]:
        """Up to `limit` document ids past position `after` ("": from the start) in the backend's stable order,
        and the position of the last one examined ("": the end was reached). Fewer than `limit` ids with a
        position: the backend stopped early to bound the call's work; the caller continues from there."""
        ...

    def count_documents(self, filter: MetadataFilter | None) -> int: ...

    def upsert(self, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray,
               texts: dict[str, str] | None = None) -> int:
        """Each of `document_ids` becomes exactly its chunks in `chunks` (row i of `vectors` for chunks[i]), with
        its text in `texts` when its chunks do not reproduce it. Returns how many of those documents existed."""
        ...

    def refresh(self) -> None:
        """Make every acked write searchable by both legs now (Elasticsearch's refresh; BulkIndexRequest.refresh).
        A no-op where writes are searchable once acked."""
        ...

    def delete_documents(self, document_ids: Iterable[str]) -> tuple[int, int]:
        """Returns (deleted, not found)."""
        ...
