"""OpenTelemetry traces (issue 17): a server span per RPC that continues the caller's W3C trace context
(`traceparent` in the call's metadata), with a child span per pipeline stage and per LLM call.

Export is OTLP, configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME...),
and on only when one of them names an exporter (config.otel_exporter_configured). Otherwise no provider is set,
the API's no-op tracer answers, and a span costs a function call. This module keeps its own provider (instead of
OpenTelemetry's process-wide one, which can be set once) so tests can give a server an in-memory exporter.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

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


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """One SERVER span per RPC, named `package.Service/Method` with OpenTelemetry's RPC attributes, child of the
    trace context the caller sent (if any); its status is the call's final gRPC code."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or _provider is None:
            return handler
        from searchsvc.api.wire import within_each_call

        service, _, method = details.method.lstrip("/").partition("/")
        carrier = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

        def span(context):
            started = tracer().start_span(f"{service}/{method}", context=propagate.extract(carrier),
                                          kind=SpanKind.SERVER, attributes=attributes)
            if not started.is_recording():  # not sampled: nothing to finish (its context still carries the trace id)
                return started

            def done(ctx) -> None:
                code = ctx.code() or (grpc.StatusCode.CANCELLED if ctx.cancelled() else grpc.StatusCode.OK)
                started.set_attribute("rpc.grpc.status_code", code.value[0])
                if code != grpc.StatusCode.OK:
                    started.set_status(Status(StatusCode.ERROR, code.name))
                started.end()

            context.add_done_callback(done)
            return started

        @asynccontextmanager
        async def in_span(context):
            token = otel_context.attach(trace.set_span_in_context(span(context)))
            try:
                yield
            finally:
                otel_context.detach(token)

        return within_each_call(handler, in_span)


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
