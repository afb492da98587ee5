"""Requests that do not decode are the caller's error: INVALID_ARGUMENT, and one log line per method a minute.

grpc's aio server answers a request whose bytes are not the method's message with UNKNOWN (unary calls), or lets
the DecodeError surface inside the handler (request streams), each with a full traceback at ERROR: measured as
486 tracebacks in a few minutes of fuzzing (issue 17), a log-flooding vector. grpc has no hook for it, so every
service is registered through `register`: the generated `add_*Servicer_to_server` runs against a stand-in
server that takes its method handlers, and registers copies whose deserializer returns an `Undecodable`
marker instead of raising and whose behaviour answers that marker. Our servicer, health and reflection alike.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import AbstractAsyncContextManager
from typing import Any, Callable

import grpc

from searchsvc.ops.log_throttle import LogThrottle

log = logging.getLogger(__name__)


class Undecodable:
    """What a tolerant deserializer returns for bytes that are not the method's request message."""

    def __init__(self, method: str, error: Exception, logged: LogThrottle) -> None:
        self.method, self.error, self.logged = method, error, logged

    async def reject(self, context: grpc.aio.ServicerContext) -> None:
        if self.logged.allow(self.method):
            log.warning("undecodable request on %s from %s (repeats within %.0f s not logged): %s",
                        self.method, context.peer(), self.logged.interval_s, self.error)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"request: not a valid {self.method.rsplit('/', 1)[-1]} request message ({self.error})")


def register(add_servicer: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """`add_servicer(servicer, server)` (a generated add_*Servicer_to_server), with undecodable requests answered.
    Each registration logs through a throttle of its own, so one server's log state never silences another's."""
    registrar = _Registrar(server, LogThrottle())
    add_servicer(servicer, registrar)
    if not registrar.registered:
        raise RuntimeError(f"{add_servicer.__name__} registered no method handlers through add_registered_method_handlers")


class _Registrar:
    """The server, as a generated add_*Servicer_to_server sees it (it calls both methods with the same handlers)."""

    def __init__(self, server: grpc.aio.Server, logged: LogThrottle) -> None:
        self._server = server
        self._logged = logged
        self.registered = False

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers come to add_registered_method_handlers next; registered there, tolerant

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        tolerant = {name: _tolerant(f"/{service}/{name}", h, self._logged) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, tolerant),))
        self._server.add_registered_method_handlers(service, tolerant)
        self.registered = True


def _tolerant(method: str, handler: grpc.RpcMethodHandler, logged: LogThrottle) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer

    def deserialize(data: bytes):
        try:
            return decode(data)
        except Exception as exc:  # protobuf's DecodeError (and anything else a parser raises on bad bytes)
            return Undecodable(method, exc, logged)

    kind = handler_kind(handler)
    behaviour = getattr(handler, kind)
    wrapped = _stream_request(behaviour) if handler.request_streaming else _unary_request(behaviour)
    return handler._replace(request_deserializer=deserialize, **{kind: wrapped})


def handler_kind(handler: grpc.RpcMethodHandler) -> str:
    """The RpcMethodHandler field that holds its behaviour: unary_unary, unary_stream, stream_unary or stream_stream."""
    return ("stream" if handler.request_streaming else "unary") + "_" + ("stream" if handler.response_streaming else "unary")


def within_each_call(
    handler: grpc.RpcMethodHandler, scope: Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager]
) -> grpc.RpcMethodHandler:
    """The handler, with its behaviour run inside `scope(context)` (entered before the first request is read, left
    when the last response is sent): what the request-id, metrics and tracing interceptors add to every call."""
    kind = handler_kind(handler)
    behaviour = getattr(handler, kind)
    if inspect.isasyncgenfunction(behaviour):  # (a streaming behaviour may also write with context.write)
        async def streaming(request, context):
            async with scope(context):
                async for response in behaviour(request, context):
                    yield response
        return handler._replace(**{kind: streaming})

    async def unary(request, context):
        async with scope(context):
            return await behaviour(request, context)
    return handler._replace(**{kind: unary})


def _unary_request(behaviour):
    if inspect.isasyncgenfunction(behaviour):
        async def unary_stream(request, context):
            if isinstance(request, Undecodable):
                await request.reject(context)
            async for response in behaviour(request, context):
                yield response
        return unary_stream

    async def unary_unary(request, context):
        if isinstance(request, Undecodable):
            await request.reject(context)
        return await behaviour(request, context)
    return unary_unary


def _stream_request(behaviour):
    async def checked(requests, context):
        async for request in requests:
            if isinstance(request, Undecodable):
                await request.reject(context)
            yield request

    if inspect.isasyncgenfunction(behaviour):
        async def stream_stream(requests, context):
            async for response in behaviour(checked(requests, context), context):
                yield response
        return stream_stream

    async def stream_unary(requests, context):
        return await behaviour(checked(requests, context), context)
    return stream_unary
