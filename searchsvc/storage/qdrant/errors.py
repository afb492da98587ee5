"""Qdrant's failures as the service's errors. Kept apart from collection.py so that the catalog can use it
without importing qdrant-client (~65 MB) in a server that stores nothing in Qdrant."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from searchsvc.errors import AlreadyExists, NotFound, Unavailable


@contextmanager
def qdrant_errors(what: str) -> Iterator[None]:
    """An unreachable cluster (or one past the call's deadline) is UNAVAILABLE, retriable; a collection that is
    gone (deleted through another server) NOT_FOUND; a name taken meanwhile (another server created it)
    ALREADY_EXISTS. Local mode reports the same as ValueError / RuntimeError."""
    try:
        yield
    except Exception as exc:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(exc, ResponseHandlingException):
            raise Unavailable(f"Qdrant did not answer while {what}: {exc.source or exc}; retry") from exc
        if isinstance(exc, UnexpectedResponse):
            if exc.status_code == 404:
                raise NotFound(f"not found in Qdrant while {what}: {exc.reason_phrase}") from exc
            if exc.status_code == 409:
                raise AlreadyExists(f"Qdrant refused {what}: it already exists") from exc
            raise Unavailable(f"Qdrant refused {what}: HTTP {exc.status_code} {exc.reason_phrase}; retry") from exc
        if isinstance(exc, ValueError) and "not found" in str(exc):  # local mode: a collection deleted meanwhile
            raise NotFound(f"not found in Qdrant while {what}: {exc}") from exc
        if isinstance(exc, RuntimeError) and "closed" in str(exc):  # local mode: its client was closed (shutdown)
            raise Unavailable(f"Qdrant is closed while {what}; retry") from exc
        raise
