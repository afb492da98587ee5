"""searchsvc: hybrid (dense + BM25) search over gRPC."""

__version__ = "0.1.0"
