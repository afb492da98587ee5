"""The server's gRPC interceptors for operations: per-RPC metrics, a trace span per RPC, request ids in the logs.
What they record lives in ops/ (metrics, tracing, logs), which knows nothing of gRPC."""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from searchsvc.api.wire import within_each_call
from searchsvc.ops import logs, metrics, tracing


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by its final status code (read from the context once the call is done)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]

        @asynccontextmanager
        async def counted(context):
            started = time.perf_counter()

            def done(ctx) -> None:
                code = ctx.code()
                if code is None:
                    code = grpc.StatusCode.CANCELLED if ctx.cancelled() else grpc.StatusCode.OK
                metrics.RPC_CALLS.labels(method, code.name).inc()
                metrics.RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

            context.add_done_callback(done)
            yield

        return within_each_call(handler, counted)


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """One SERVER span per RPC, named `package.Service/Method` with OpenTelemetry's RPC attributes, child of the
    trace context the caller sent (if any); its status is the call's final gRPC code."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not tracing.is_configured():
            return handler
        service, _, method = details.method.lstrip("/").partition("/")
        carrier = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

        def span(context):
            started = tracing.tracer().start_span(f"{service}/{method}", context=propagate.extract(carrier),
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


class RequestIds(grpc.aio.ServerInterceptor):
    """Each call's request id (the caller's `x-request-id`, else a new one) in the log context and sent back."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        given = next((v for k, v in details.invocation_metadata or () if k == "x-request-id" and isinstance(v, str)), "")

        @asynccontextmanager
        async def with_request_id(context):
            rid = given[:64] or uuid.uuid4().hex[:16]
            logs.request_id.set(rid)
            await context.send_initial_metadata((("x-request-id", rid),))
            yield

        return within_each_call(handler, with_request_id)
