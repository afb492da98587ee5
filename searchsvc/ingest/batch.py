"""Ingest, service side: one batch of documents checked, chunked and embedded. What comes out (chunks with unit
vectors) is what a collection's storage writes; this part behaves the same whichever backend stores it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from searchsvc.errors import InvalidArgument
from searchsvc.ingest.chunking import Chunker
from searchsvc.retrieve.external import unit_vector
from searchsvc.types import MAX_DOCUMENT_ID_BYTES, RESERVED_METADATA, Chunk, Document


@dataclass
class DocumentError:
    index: int
    document_id: str
    field: str
    message: str
    code: str = "INVALID_ARGUMENT"


@dataclass
class IndexReport:
    indexed: int = 0
    replaced: int = 0
    chunks: int = 0
    errors: list[DocumentError] = field(default_factory=list)


@dataclass
class PreparedBatch:
    document_ids: list[str]  # the valid documents, in request order: each replaces whatever its id held
    chunks: list[Chunk]
    vectors: np.ndarray  # (len(chunks), dimension) float32 unit vectors, row i for chunks[i]
    errors: list[DocumentError]


@dataclass(frozen=True)
class BatchPreparer:
    """A collection's ingest rules: its chunker, its embedder (None: callers bring every vector), its dimension
    and the largest document it takes."""

    chunker: Chunker
    embed_passages: Callable[[Sequence[str]], np.ndarray] | None
    dimension: int
    max_document_bytes: int

    def prepare(self, docs: Sequence[Document]) -> PreparedBatch:
        """Invalid documents become errors (by field path) and the rest of the batch goes on. A document that
        brings its vector is one chunk with that vector; the others are chunked, and embedded in one call."""
        valid, given, errors = self._validate(docs)
        chunks = [c for d in valid if d.id not in given for c in self.chunker.chunk(d)]
        vectors = self.embed_passages([c.indexed_text for c in chunks]) if chunks else np.empty((0, self.dimension), np.float32)
        if given:
            whole = [Chunk(f"{d.id}#0", d.id, 0, d.text, d.title, dict(d.metadata), 0, len(d.text)) for d in valid if d.id in given]
            chunks += whole
            vectors = np.concatenate([vectors.reshape(-1, self.dimension), np.stack([given[c.document_id] for c in whole])])
        return PreparedBatch([d.id for d in valid], chunks, np.asarray(vectors, dtype=np.float32), errors)

    def _validate(self, docs: Sequence[Document]) -> tuple[list[Document], dict[str, np.ndarray], list[DocumentError]]:
        """The valid documents, the unit vectors of those that brought one (by document id), and the errors."""
        last_position = {d.id: i for i, d in enumerate(docs)}
        valid, given, errors = [], {}, []
        for i, doc in enumerate(docs):
            error, vector = None, None
            if not doc.id:
                error = (f"documents[{i}].id", "must not be empty")
            elif len(doc.id.encode()) > MAX_DOCUMENT_ID_BYTES:
                error = (f"documents[{i}].id", f"longer than {MAX_DOCUMENT_ID_BYTES} bytes")
            elif not doc.text.strip():
                error = (f"documents[{i}].text", "must not be empty")
            elif len(doc.text.encode()) + len(doc.title.encode()) > self.max_document_bytes:
                error = (f"documents[{i}].text", f"document larger than {self.max_document_bytes} bytes")
            elif reserved := sorted(set(doc.metadata) & set(RESERVED_METADATA)):
                error = (f"documents[{i}].metadata", f"reserved keys {reserved}")
            elif last_position[doc.id] != i:
                error = (f"documents[{i}].id", f"repeated later in the batch at documents[{last_position[doc.id]}]")
            elif doc.vector is not None and len(doc.vector):
                try:
                    vector = unit_vector(doc.vector, self.dimension, f"documents[{i}].vector")
                except InvalidArgument as exc:
                    error = (exc.field, exc.description)
            elif self.embed_passages is None:
                error = (f"documents[{i}].vector", f"required: this collection's vectors come from its callers ({self.dimension}-d)")
            if error:
                errors.append(DocumentError(i, doc.id, *error))
                continue
            valid.append(doc)
            if vector is not None:
                given[doc.id] = vector
        return valid, given, errors
