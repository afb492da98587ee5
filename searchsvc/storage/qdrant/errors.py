"""Qdrant's failures as the service's errors. Kept apart from collection.py so that the catalog can use it
without importing qdrant-client (~65 MB) in a server that stores nothing in Qdrant."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Iterator

from searchsvc.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


def _message(exc) -> str:
    """Qdrant's own error text ({"status": {"error": ...}}), else the HTTP reason."""
    try:
        return str(json.loads(exc.content)["status"]["error"])[:500]
    except Exception:
        return exc.reason_phrase


@contextmanager
def qdrant_errors(what: str) -> Iterator[None]:
    """An unreachable cluster (or one past the call's deadline, or a 5xx) is UNAVAILABLE, retriable; a collection
    that is gone (deleted through another server) NOT_FOUND; a name taken meanwhile (another server created it)
    ALREADY_EXISTS; a request Qdrant refuses (400: a dimension that is not the Qdrant collection's) or
    credentials it refuses (401/403) FAILED_PRECONDITION; its rate limit (429) RESOURCE_EXHAUSTED. Local mode
    reports the same as ValueError / RuntimeError."""
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
            said = _message(exc)
            if exc.status_code in (400, 422):  # e.g. a vector of another dimension than the Qdrant collection's
                raise FailedPrecondition(f"Qdrant refused {what}: {said}") from exc
            if exc.status_code in (401, 403):  # this server's qdrant.api_key: no retry helps, an operator must act
                log.error("Qdrant refused searchsvc's credentials (qdrant.api_key): %s", said)
                raise FailedPrecondition(f"Qdrant refused this server's credentials while {what}") from exc
            if exc.status_code == 429:
                raise ResourceExhausted(f"Qdrant is rate limiting while {what}: {said}; retry later") from exc
            raise Unavailable(f"Qdrant failed while {what}: HTTP {exc.status_code} {said}; retry") from exc
        if isinstance(exc, ValueError) and "not found" in str(exc):  # local mode: a collection deleted meanwhile
            raise NotFound(f"not found in Qdrant while {what}: {exc}") from exc
        if isinstance(exc, RuntimeError) and "closed" in str(exc):  # local mode: its client was closed (shutdown)
            raise Unavailable(f"Qdrant is closed while {what}; retry") from exc
        raise
