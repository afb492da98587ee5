"""The server's logs (issue 17): every line carries the request id and trace id of the call it belongs to, as text
or as one JSON object per line (`log_format`); searches slower than `slow_query_ms` get one line with their knobs
and stage timings (the query text only with `slow_query_log_text`; never document text).

The request id is the caller's `x-request-id` metadata, or a new one; it is sent back in the call's initial
metadata, and worker threads inherit it with the call's context (api/servicer.py: `SearchService._run` copies it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

from opentelemetry import trace

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
slow_log = logging.getLogger("searchsvc.slowlog")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(trace_id)s]: %(message)s"


class CallContext(logging.Filter):
    """Adds request_id and trace_id (both "-" outside a call) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else "-"
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "trace_id": getattr(record, "trace_id", "-"),
        }
        if fields := getattr(record, "fields", None):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    """The root handler for a server process (replacing any a library installed before us)."""
    handler = logging.StreamHandler()
    handler.addFilter(CallContext())
    if log_format == "json":
        formatter: logging.Formatter = JsonLines()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def log_slow_search(threshold_ms: float, with_text: bool, collection: str, params, timings_ms: dict[str, float], hits: int) -> None:
    total = timings_ms.get("total", 0.0)
    if not threshold_ms or total < threshold_ms:
        return
    fields = {
        "slow_search_ms": round(total, 1), "collection": collection, "mode": params.mode.name, "top_k": params.top_k,
        "filter_keys": sorted({c.key for c in params.filter.conditions()}) if params.filter else [], "rerank": params.rerank, "hits": hits,
        "stages_ms": {k: round(v, 1) for k, v in timings_ms.items() if k != "total"},
    }
    if with_text:
        fields["query"] = params.query
    stages = " ".join(f"{k} {v}" for k, v in fields["stages_ms"].items())
    slow_log.warning("slow search: %.0f ms on %s, mode %s, top_k %d, %d hits; stages (ms): %s",
                     total, collection, params.mode.name, params.top_k, hits, stages, extra={"fields": fields})
