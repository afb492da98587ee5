"""Ingest, service side: one batch of documents checked, chunked and embedded. What comes out (chunks with unit
vectors) is what a collection's storage writes; this part behaves the same whichever backend stores it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from searchsvc.domain.documents import texts_to_store
from searchsvc.domain.filters import Metadata, MetadataValue
from searchsvc.domain.types import MAX_DOCUMENT_ID_BYTES, RESERVED_METADATA, Chunk, Document
from searchsvc.errors import InvalidArgument
from searchsvc.ingest.chunking import Chunker
from searchsvc.retrieve.external import unit_vector


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
    texts: dict[str, str] = field(default_factory=dict)  # the texts their chunks do not reproduce (documents.py)


@dataclass(frozen=True)
class DocumentLimits:
    """What one document may carry (config.py: max_document_bytes, max_metadata_*). Metadata is copied into every
    chunk of its document, stored with it and returned with every hit, so it is bounded on its own: without
    limits, fuzzed 2 MB values made one top_k=1000 search build a 909 MB response (issue 17). The defaults
    hold any realistic tag set (Pinecone allows 40 KB per record, Elasticsearch's keyword fields index 256
    characters by default); a value must stay under tantivy's 65,530-byte term limit to be filterable."""

    document_bytes: int = 1_000_000
    metadata_pairs: int = 64
    metadata_key_bytes: int = 128
    metadata_value_bytes: int = 4096
    metadata_bytes: int = 16384  # keys and values of one document together

    def metadata_error(self, metadata: Metadata, at: str) -> tuple[str, str] | None:
        """(field path, why) of the first limit `metadata` breaks; None if it keeps them all."""
        if len(metadata) > self.metadata_pairs:
            return at, f"{len(metadata)} pairs; at most {self.metadata_pairs}"
        total = 0
        for key, value in metadata.items():
            key_bytes, value_bytes = len(key.encode()), _value_bytes(value)
            if not key:
                return at, "keys must not be empty"
            if key_bytes > self.metadata_key_bytes:
                return f"{at}[{key[:40]!r}]", f"key of {key_bytes} bytes; at most {self.metadata_key_bytes}"
            if isinstance(value, tuple) and not all(value):
                return f"{at}[{key!r}]", "list elements must not be empty"
            if value_bytes > self.metadata_value_bytes:
                return f"{at}[{key!r}]", f"value of {value_bytes} bytes; at most {self.metadata_value_bytes}"
            total += key_bytes + value_bytes
        if total > self.metadata_bytes:
            return at, f"{total} bytes of keys and values; at most {self.metadata_bytes}"
        return None


def _value_bytes(value: MetadataValue) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, tuple):  # a list: its strings and one separator each
        return sum(len(v.encode()) + 1 for v in value)
    return 8  # numbers, booleans, timestamps


@dataclass(frozen=True)
class BatchPreparer:
    """A collection's ingest rules: its chunker, its embedder (None: callers bring every vector), its dimension
    and what one document may carry."""

    chunker: Chunker
    embed_passages: Callable[[Sequence[str]], np.ndarray] | None
    dimension: int
    limits: DocumentLimits

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
        ids = [d.id for d in valid]
        texts = texts_to_store(ids, {d.id: d.text for d in valid}, chunks)
        return PreparedBatch(ids, chunks, np.asarray(vectors, dtype=np.float32), errors, texts)

    def _validate(self, docs: Sequence[Document]) -> tuple[list[Document], dict[str, np.ndarray], list[DocumentError]]:
        """The valid documents, the unit vectors of those that brought one (by document id), and the errors."""
        last_position = {d.id: i for i, d in enumerate(docs)}
        valid, given, errors = [], {}, []
        for i, doc in enumerate(docs):
            error, vector = doc.invalid, None
            if error:
                pass
            elif not doc.id:
                error = (f"documents[{i}].id", "must not be empty")
            elif len(doc.id.encode()) > MAX_DOCUMENT_ID_BYTES:
                error = (f"documents[{i}].id", f"longer than {MAX_DOCUMENT_ID_BYTES} bytes")
            elif doc.content is not None:  # a file no FileReader read (file_reader.py runs before ingest)
                error = (f"documents[{i}].content", "files are not read on this path; send text")
            elif not doc.text.strip():
                error = (f"documents[{i}].text", "must not be empty")
            elif doc.units is None and len(doc.text.encode()) + len(doc.title.encode()) > self.limits.document_bytes:
                error = (f"documents[{i}].text", f"document larger than {self.limits.document_bytes} bytes")
            elif reserved := sorted(set(doc.metadata) & set(RESERVED_METADATA)):
                error = (f"documents[{i}].metadata", f"reserved keys {reserved}")
            elif metadata_error := self.limits.metadata_error(doc.metadata, f"documents[{i}].metadata"):
                error = metadata_error
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
