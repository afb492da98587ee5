"""OpenTelemetry traces (issue 17): a server span per RPC that continues the caller's W3C trace context
(`traceparent` in the call's metadata), with a child span per pipeline stage and per LLM call.

Export is OTLP, configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME...),
and on only when one of them names an exporter (config.otel_exporter_configured). Otherwise no provider is set,
the API's no-op tracer answers, and a span costs a function call. This module keeps its own provider (instead of
OpenTelemetry's process-wide one, which can be set once) so tests can give a server an in-memory exporter.
"""

from __future__ import annotations

from opentelemetry import trace

_provider: trace.TracerProvider | None = None
_NOOP = trace.NoOpTracer()


def use_provider(provider: trace.TracerProvider | None) -> None:
    global _provider
    _provider = provider


def tracer() -> trace.Tracer:
    return _provider.get_tracer("searchsvc") if _provider is not None else _NOOP


def default_sampler(ratio: float):
    """Every trace a caller sampled (its traceparent's flag) is continued; of the traces that start here, `ratio`.
    The Python SDK spends ~0.1-0.3 ms per traced search (bench --observability), 2-6% of a 5 ms search: sampling
    keeps tracing under 1%."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return ParentBased(TraceIdRatioBased(ratio))


def configure_otlp(sample_ratio: float, sampler_from_env: bool, service_name: str = "searchsvc") -> None:
    """An OTLP exporter per the OTEL_* variables, batching spans off the request path; OTEL_TRACES_SAMPLER, when
    set, chooses the sampler, else `default_sampler(sample_ratio)`."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}),  # OTEL_SERVICE_NAME wins
                              sampler=None if sampler_from_env else default_sampler(sample_ratio))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)


def is_configured() -> bool:
    """Whether spans are recorded at all (a provider was set: OTLP export or a test's in-memory one)."""
    return _provider is not None


def set_attributes(**attributes) -> None:
    """On the current span (the RPC's, in the servicer): the request's useful knobs and what it returned."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({f"searchsvc.{k}": v for k, v in attributes.items() if v is not None})


def record_stages(prefix: str, intervals: list[tuple[str, int, int]]) -> None:
    """Child spans of the current span for stages timed already ((name, start ns, end ns)). Made after the fact,
    in one go, so an untraced call pays one check and a traced one no context switching per stage."""
    if not trace.get_current_span().is_recording():
        return
    t = tracer()
    for name, start, end in intervals:
        t.start_span(f"{prefix}.{name}", start_time=start).end(end_time=end)


def span(name: str, **attributes):
    """A child span of the current one (a stage, an LLM call)."""
    return tracer().start_as_current_span(name, attributes={f"searchsvc.{k}": v for k, v in attributes.items()})
