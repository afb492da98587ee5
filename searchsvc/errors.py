"""Domain errors. Stages raise these; only the gRPC servicer turns them into status codes."""

from __future__ import annotations


class SearchsvcError(Exception):
    """Base class; `message` is safe to show to callers."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(SearchsvcError):
    """A request field is invalid; `field` is its path, e.g. `documents[3].text`."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NotFound(SearchsvcError):
    pass


class AlreadyExists(SearchsvcError):
    pass


class ResourceExhausted(SearchsvcError):
    pass


class FailedPrecondition(SearchsvcError):
    pass


class DataLoss(SearchsvcError):
    """Stored data is corrupt (a snapshot member failing its checksum): unrecoverable from this copy."""


class Unavailable(SearchsvcError):
    """Transient: the caller should retry (e.g. a write that raced a collection's re-embed swap)."""


class Overloaded(ResourceExhausted):
    """Shed at admission: more calls of one kind in flight than the server takes; retry after `retry_after_ms`."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Abandoned(SearchsvcError):
    """A call's work stopped between stages: its deadline passed or its caller went away."""
