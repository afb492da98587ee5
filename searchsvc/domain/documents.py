"""Documents as stored (issue 19): what GetDocuments / ListDocuments return, a document's text rebuilt from its
chunks, and list page tokens.

A document's text is stored only where its chunks do not reproduce it (`text_from_chunks` != the text): a
document of one whole chunk, the usual short document and every one with its own vector, costs nothing more. A
collection written before texts were stored rebuilds every text from the chunks; that is exact wherever the
chunks tile the text, and otherwise joins them with a space for each gap.

Page tokens follow AIP-158: opaque (base64 of JSON), bound to the request they continue (its collection and
filter), and positional: a token holds the last position listed (the backend's sort key), never an offset, so
pages stay right while documents are added and deleted between them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from searchsvc.domain.filters import Filter, Metadata
from searchsvc.domain.types import Chunk
from searchsvc.errors import InvalidArgument

MAX_GET_IDS = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


class DocumentView(enum.Enum):
    BASIC = "basic"  # id, title, metadata, chunk positions
    FULL = "full"  # and the text
    FULL_WITH_VECTORS = "full_with_vectors"  # and each chunk's stored vector


@dataclass
class StoredDocument:
    id: str
    title: str
    metadata: Metadata
    chunks: list[Chunk]  # in order
    text: str = ""  # FULL views
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # chunk id -> unit vector (FULL_WITH_VECTORS)


def text_from_chunks(chunks: Sequence[Chunk]) -> str:
    """The document text its chunks spell: each chunk's text at its offsets, every gap between them one space.
    Chunks without offsets (-1) are joined with a space."""
    ordered = sorted(chunks, key=lambda c: c.index)
    if any(c.start_char < 0 or c.end_char - c.start_char != len(c.text) for c in ordered):
        return " ".join(c.text for c in ordered)
    parts, at = [], 0
    for c in ordered:
        if c.start_char > at:
            if parts:  # a gap between chunks; leading whitespace before the first chunk is not rebuilt
                parts.append(" ")
            at = c.start_char
        parts.append(c.text[at - c.start_char :])  # overlapping chunks: only what is past the end so far
        at = max(at, c.end_char)
    return "".join(parts)


def document_from_chunks(document_id: str, chunks: Sequence[Chunk], stored_text: str | None) -> StoredDocument:
    """A document from its stored chunks (title and metadata are every chunk's) and its stored text, if any."""
    ordered = sorted(chunks, key=lambda c: c.index)
    first = ordered[0]
    text = stored_text if stored_text is not None else text_from_chunks(ordered)
    return StoredDocument(document_id, first.title, first.metadata, ordered, text)


def texts_to_store(document_ids: Sequence[str], texts: dict[str, str], chunks: Sequence[Chunk]) -> dict[str, str]:
    """Of a prepared batch's documents (id -> text), those whose chunks do not reproduce their text."""
    by_document: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_document.setdefault(c.document_id, []).append(c)
    return {d: texts[d] for d in document_ids if text_from_chunks(by_document.get(d, ())) != texts[d]}


# ------------------------------------------------------------------ page tokens
def _fingerprint(collection: str, filter: Filter | None) -> str:
    described = json.dumps([collection, _filter_key(filter)], sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def _filter_key(filter: Filter | None):
    return repr(filter) if filter else ""


def page_token(collection: str, filter: Filter | None, position: str) -> str:
    """The token of the page after `position` ("": there is none)."""
    if not position:
        return ""
    raw = json.dumps({"after": position, "request": _fingerprint(collection, filter)}).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def position_of(token: str, collection: str, filter: Filter | None) -> str:
    """The position a page token continues after ("" for no token). INVALID_ARGUMENT for a token that is not
    one, or that belongs to another collection or filter."""
    if not token:
        return ""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        position, request = decoded["after"], decoded["request"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
        raise InvalidArgument("page_token", "is not a token this service returned") from None
    if request != _fingerprint(collection, filter) or not isinstance(position, str):
        raise InvalidArgument("page_token", "was returned for another collection or filter: send the same ones")
    return position


def check_page_size(page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})")
    return page_size or DEFAULT_PAGE_SIZE


def check_ids(ids: Sequence[str]) -> list[str]:
    if not ids:
        raise InvalidArgument("ids", "must not be empty")
    if len(ids) > MAX_GET_IDS:
        raise InvalidArgument("ids", f"{len(ids)} ids; at most {MAX_GET_IDS} per request")
    for i, doc_id in enumerate(ids):
        if not doc_id:
            raise InvalidArgument(f"ids[{i}]", "must not be empty")
    return list(dict.fromkeys(ids))
