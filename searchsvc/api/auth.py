"""API keys with roles (issue 17): who may call which RPC, on which collections.

A key is presented in gRPC metadata, `authorization: Bearer <key>` or `x-api-key: <key>`, and stored only as
its SHA-256 (config `auth.keys`, or `auth.keys_file`). Roles nest: `read` (Search, Answer, Get/List), `write`
(plus BulkIndex and document deletes), `admin` (plus creating, deleting, re-embedding and reopening
collections, and per-request model overrides, which make the server load a model). A key may be limited to
collection names or prefixes (`"team-a-*"`); ListCollections then lists only those.

No key or an unknown key: UNAUTHENTICATED. A known key without the role or the collection: PERMISSION_DENIED.
Keys are never logged; only their configured names are.

Written by hand as a grpc.aio interceptor because grpc has no authorization layer of its own, and the collection
a call touches is inside the request message, which an interceptor sees only once it wraps the handler.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Iterable, Sequence

import grpc

from searchsvc.api.wire import Undecodable, handler_kind
from searchsvc.collections.snapshots import collection_of
from searchsvc.ops.log_throttle import LogThrottle
from searchsvc.search.multi import named_collections
from searchsvc.v1 import searchsvc_pb2 as pb

log = logging.getLogger(__name__)
_denials_logged = LogThrottle()

SERVICE = "/searchsvc.v1.SearchService/"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


class Role(IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3


def hash_key(key: str) -> str:
    """What the config stores for a key: hex SHA-256 (keys are random and long, so no salt or stretching is
    needed: nothing guessable to protect)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """A configured key: its name (for logs), its role and the collections it may touch (empty: all)."""

    name: str
    sha256: str
    role: Role
    collections: tuple[str, ...] = ()

    def may_touch(self, collection: str) -> bool:
        if not self.collections:
            return True
        return any(collection.startswith(p[:-1]) if p.endswith("*") else collection == p for p in self.collections)


@dataclass(frozen=True)
class Rule:
    """What an RPC needs: a role, the collections its request names, and a stronger role some requests need."""

    role: Role
    collections: Callable[[object], Sequence[str]] | None = None  # None: not about one collection
    admin_if: Callable[[object], bool] | None = None  # e.g. a per-request model override


def _search_overrides_model(r: pb.SearchRequest) -> bool:
    return bool(r.rerank.model)


def _searched(r: pb.SearchRequest) -> list[str]:
    """Every collection a search names: a key scoped to some must not reach others through `collections`."""
    return named_collections(r.collection, r.collections)


RULES: dict[str, Rule] = {
    "CreateCollection": Rule(Role.ADMIN, lambda r: [r.name]),
    "GetCollection": Rule(Role.READ, lambda r: [r.name]),
    "ListCollections": Rule(Role.READ),  # the response is filtered to the key's collections
    "DeleteCollection": Rule(Role.ADMIN, lambda r: [r.name]),
    "ReembedCollection": Rule(Role.ADMIN, lambda r: [r.name]),
    "ReopenCollection": Rule(Role.ADMIN, lambda r: [r.name]),
    "BulkIndex": Rule(Role.WRITE, lambda r: [r.collection]),
    "DeleteDocuments": Rule(Role.WRITE, lambda r: [r.collection]),
    "Search": Rule(Role.READ, lambda r: _searched(r), _search_overrides_model),
    "Answer": Rule(Role.READ, lambda r: _searched(r.search), lambda r: _search_overrides_model(r.search)),
    "StreamAnswer": Rule(Role.READ, lambda r: _searched(r.search), lambda r: _search_overrides_model(r.search)),
    "GetAnswerStats": Rule(Role.READ),
    "GetDocuments": Rule(Role.READ, lambda r: [r.collection]),
    "ListDocuments": Rule(Role.READ, lambda r: [r.collection]),
    "CountDocuments": Rule(Role.READ, lambda r: [r.collection]),
    # Every alias and collection an action names: a key scoped to some must not alias its way to others.
    "UpdateAliases": Rule(Role.ADMIN, lambda r: [n for a in r.actions for n in _alias_names(a)]),
    "ListAliases": Rule(Role.READ),  # the response is filtered to the key's aliases
    # Snapshots hold a collection's whole data: administrators only, checked against the collection a snapshot
    # name starts with (`<collection>@…`).
    "CreateSnapshot": Rule(Role.ADMIN, lambda r: [r.collection]),
    "ListSnapshots": Rule(Role.ADMIN),  # the response is filtered to the key's collections
    "DeleteSnapshot": Rule(Role.ADMIN, lambda r: [collection_of(r.name)]),
    "RestoreSnapshot": Rule(Role.ADMIN, lambda r: [collection_of(r.name), r.collection]),
    "DownloadSnapshot": Rule(Role.ADMIN, lambda r: [collection_of(r.name)]),
    "UploadSnapshot": Rule(Role.ADMIN, lambda r: [collection_of(r.name)] if r.WhichOneof("part") == "name" else []),
}

# Listings a key limited to some collections sees only part of: the repeated field, and the name it is checked by.
LISTINGS: dict[str, tuple[str, Callable[[object], str]]] = {
    "ListCollections": ("collections", lambda c: c.name),
    "ListAliases": ("aliases", lambda a: a.alias),
    "ListSnapshots": ("snapshots", lambda s: s.collection),
}


def _alias_names(action: pb.AliasAction) -> list[str]:
    kind = action.WhichOneof("action")
    if kind == "delete":
        return [action.delete]
    return [getattr(action, kind).alias, getattr(action, kind).collection] if kind else []


class KeyRing:
    def __init__(self, principals: Iterable[Principal]) -> None:
        self.principals = list(principals)
        self._digests = [bytes.fromhex(p.sha256) for p in self.principals]

    def __bool__(self) -> bool:
        return bool(self.principals)

    def match(self, key: str | None) -> Principal | None:
        """The key's principal. Compares the digest with every configured one in constant time (hmac.compare_digest),
        all of them every time, so the time taken says nothing about which key or how much of one matched."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for principal, stored in zip(self.principals, self._digests):
            if hmac.compare_digest(digest, stored):
                found = principal
        return found


def presented_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue
        if name == "authorization" and value[:7].lower() == "bearer ":
            return value[7:].strip()
        if name == "x-api-key":
            return value.strip()
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyRing, *, open_health: bool = True, open_reflection: bool = True) -> None:
        self.keys = keys
        self.open_health, self.open_reflection = open_health, open_reflection

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        method = details.method
        if handler is None or (self.open_health and method.startswith(HEALTH_PREFIX)) or (
                self.open_reflection and method.startswith(REFLECTION_PREFIX)):
            return handler
        principal = self.keys.match(presented_key(details.invocation_metadata))
        if principal is None:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED,
                             "an API key is required: metadata 'authorization: Bearer <key>' or 'x-api-key: <key>'")
        rule = RULES.get(method.removeprefix(SERVICE)) if method.startswith(SERVICE) else None
        if rule is None:  # health or reflection when not open, or anything new: administrators only
            rule = Rule(Role.ADMIN)
        if principal.role < rule.role:
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, _denied(principal, method, rule.role))
        listing = LISTINGS.get(method.removeprefix(SERVICE)) if principal.collections else None
        return _checking(handler, lambda request: _check_request(principal, method, rule, request),
                         (lambda item: principal.may_touch(listing[1](item)), listing[0]) if listing else None)


def _denied(principal: Principal, method: str, needed: Role, collection: str | None = None) -> str:
    if collection is not None:
        why = f"key {principal.name!r} may not touch collection {collection!r}"
    else:
        why = f"key {principal.name!r} has role {principal.role.name.lower()}; {method.rsplit('/', 1)[-1]} needs {needed.name.lower()}"
    if _denials_logged.allow((principal.name, method)):
        log.warning("permission denied: %s (repeats within %.0f s not logged)", why, _denials_logged.interval_s)
    return why


def _check_request(principal: Principal, method: str, rule: Rule, request) -> str | None:
    """Why this request is refused to this key, or None."""
    if isinstance(request, Undecodable):
        return None  # answered INVALID_ARGUMENT by the wire layer
    if rule.admin_if and rule.admin_if(request) and principal.role < Role.ADMIN:
        return _denied(principal, method, Role.ADMIN) + " (this request names a model to load)"
    for collection in rule.collections(request) if rule.collections else ():
        if not principal.may_touch(collection):
            return _denied(principal, method, rule.role, collection)
    return None


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request_or_iterator, context):
        await context.abort(code, message)

    async def refuse_stream(request_or_iterator, context):
        await context.abort(code, message)
        yield  # an async generator, as streaming behaviours are

    kind = handler_kind(handler)
    return handler._replace(**{kind: refuse_stream if handler.response_streaming else refuse})


def _checking(handler: grpc.RpcMethodHandler, refusal: Callable[[object], str | None],
              listing: tuple[Callable[[object], bool], str] | None) -> grpc.RpcMethodHandler:
    """The handler, with each request checked first (every message of a request stream); a listing's response
    is cut to what the key may see (`listing`: a test of one item, and the repeated field holding them)."""
    behaviour = getattr(handler, handler_kind(handler))

    async def check(request, context) -> None:
        why = refusal(request)
        if why:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)

    if handler.request_streaming:
        async def checked(requests, context):
            async for request in requests:
                await check(request, context)
                yield request

        if handler.response_streaming:
            async def stream_stream(requests, context):
                async for response in behaviour(checked(requests, context), context):
                    yield response
            return handler._replace(stream_stream=stream_stream)

        async def stream_unary(requests, context):
            return await behaviour(checked(requests, context), context)
        return handler._replace(stream_unary=stream_unary)

    if handler.response_streaming and inspect.isasyncgenfunction(behaviour):
        async def unary_stream(request, context):
            await check(request, context)
            async for response in behaviour(request, context):
                yield response
        return handler._replace(unary_stream=unary_stream)
    if handler.response_streaming:  # streams with context.write (health's Watch)
        async def unary_writing(request, context):
            await check(request, context)
            return await behaviour(request, context)
        return handler._replace(unary_stream=unary_writing)

    async def unary_unary(request, context):
        await check(request, context)
        response = await behaviour(request, context)
        if listing is not None:
            may_see, field = listing
            items = getattr(response, field)
            kept = [item for item in items if may_see(item)]
            del items[:]
            items.extend(kept)
        return response
    return handler._replace(unary_unary=unary_unary)
