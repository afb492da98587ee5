"""A Qdrant server for tests: the part of Qdrant's REST API that searchsvc uses, served over HTTP by Qdrant's own
Rust engine (qdrant-edge-py's `EdgeShard`, one shard per collection).

Why it exists: no Qdrant server binary can be installed on the CI machine (none on PyPI, apt or npm; no Docker),
and qdrant-client's local mode is a Python emulation that one process at a time can open. This process lets
tests run searchsvc against a Qdrant *URL*, as production does: several `searchsvc serve` processes sharing
one store, the remote client's REST serialization, and the real engine's scoring (sparse IDF, filters, deletes,
payload indexes, reopening from disk).

What it is not: a cluster. It has no sharding, replication, consensus or gRPC port (it records the layout a
collection was created with, as a one-node Qdrant reports it). It checks an API key (`--api-key`, the
`api-key` header) and serves https (`--tls-cert/--tls-key`) when asked, as Qdrant does. Only the
endpoints and request fields searchsvc sends are translated (anything else is a 400 that names it, so a new
call in searchsvc fails loudly here rather than passing by accident). Collection metadata, which EdgeShard does
not hold, lives in `<path>/<name>/collection.json` beside the shard, written atomically.

Served: collections (list, exists, create, get, update metadata, delete), payload indexes, points (upsert, retrieve,
delete, scroll, count, query) and collection aliases (`POST /collections/aliases` with create/delete/rename
actions, `GET /aliases`, `GET /collections/{name}/aliases`). An alias works wherever a collection name does, and
deleting a collection drops its aliases, as in Qdrant. The alias map lives in `<path>/aliases.json`, written
atomically. As in Qdrant, a batch of alias actions applies in order, under one lock (no reader sees half of it),
and an action that fails keeps the ones before it: searchsvc checks a batch before it sends it.

    python tests/qdrant_standin.py --path DIR [--port 0] [--api-key K] [--tls-cert C --tls-key K]
    # prints "listening on PORT" once serving
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import qdrant_edge as qe

VERSION = "1.20.0"  # what qdrant-client 1.20 expects of a server (its compatibility check)


class BadRequest(Exception):
    status = 400


class NotFound(Exception):
    status = 404


class Conflict(Exception):
    status = 409


# ---------------------------------------------------------------------- JSON -> qdrant_edge
def _filter(spec: dict | None) -> qe.Filter | None:
    if not spec:
        return None
    return qe.Filter(**{part: [_condition(c) for c in spec[part]] for part in ("must", "should", "must_not") if spec.get(part)})


def _condition(spec: dict):
    if "has_id" in spec:
        return qe.HasIdCondition(set(spec["has_id"]))
    if {"must", "should", "must_not"} & spec.keys():
        return _filter(spec)
    if "key" in spec and spec.get("match"):
        match = spec["match"]
        if "value" in match:
            return qe.FieldCondition(key=spec["key"], match=qe.MatchValue(match["value"]))
        if "any" in match:
            return qe.FieldCondition(key=spec["key"], match=qe.MatchAny(match["any"]))
    if "key" in spec and spec.get("range"):
        bounds = {k: float(v) for k, v in spec["range"].items() if k in ("gt", "gte", "lt", "lte") and v is not None}
        return qe.FieldCondition(key=spec["key"], range=qe.RangeFloat(**bounds))
    if "is_empty" in spec:
        return qe.IsEmptyCondition(spec["is_empty"]["key"])
    raise BadRequest(f"condition not supported by the stand-in: {spec}")


def _vector(spec):
    if isinstance(spec, dict) and "indices" in spec:
        return qe.SparseVector(spec["indices"], spec["values"])
    if isinstance(spec, list):
        return spec
    raise BadRequest(f"vector not supported by the stand-in: {str(spec)[:200]}")


def _with_payload(spec):
    if spec is None or isinstance(spec, (bool, list)):
        return spec
    if isinstance(spec, dict) and "include" in spec:
        return qe.PayloadSelector.Include(spec["include"])
    raise BadRequest(f"with_payload not supported by the stand-in: {spec}")


def _with_vector(spec):
    if spec is None or isinstance(spec, (bool, list)):
        return spec
    raise BadRequest(f"with_vector not supported by the stand-in: {spec}")


def _search_params(spec: dict | None) -> qe.SearchParams | None:
    if not spec:
        return None
    return qe.SearchParams(hnsw_ef=spec.get("hnsw_ef"), exact=bool(spec.get("exact")))


# ---------------------------------------------------------------------- qdrant_edge -> JSON
def _json_vector(vector):
    if vector is None:
        return None
    if isinstance(vector, dict):
        return {name: _json_vector(v) for name, v in vector.items()}
    if isinstance(vector, qe.SparseVector):
        return {"indices": list(vector.indices), "values": list(vector.values)}
    return list(vector)


def _record(r) -> dict:
    return {"id": str(r.id), "payload": r.payload, "vector": _json_vector(r.vector)}


def _scored(p) -> dict:
    return {**_record(p), "version": p.version, "score": p.score}


# ---------------------------------------------------------------------- collections
class Collection:
    """One EdgeShard and the collection description Qdrant would keep (create request, metadata)."""

    def __init__(self, path: Path, shard: qe.EdgeShard, description: dict) -> None:
        self.path, self.shard, self.description = path, shard, description

    @classmethod
    def create(cls, path: Path, request: dict) -> "Collection":
        vectors = {name: qe.EdgeVectorParams(size=v["size"], distance=_distance(v["distance"]))
                   for name, v in (request.get("vectors") or {}).items()}
        sparse = {name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if (v or {}).get("modifier") == "idf" else None)
                  for name, v in (request.get("sparse_vectors") or {}).items()}
        shard = qe.EdgeShard.create(str(path / "shard"), qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse))
        collection = cls(path, shard, {"create": request, "metadata": request.get("metadata") or {}})
        collection.save()
        return collection

    @classmethod
    def load(cls, path: Path) -> "Collection":
        return cls(path, qe.EdgeShard.load(str(path / "shard")), json.loads((path / "collection.json").read_text()))

    def save(self) -> None:
        tmp = self.path / "collection.json.tmp"
        with open(tmp, "w") as f:
            json.dump(self.description, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "collection.json")

    def info(self) -> dict:
        create = self.description["create"]
        return {
            "status": "green", "optimizer_status": "ok", "segments_count": self.shard.info().segments_count,
            "points_count": self.shard.count(qe.CountRequest(exact=True)), "indexed_vectors_count": 0,
            "payload_schema": {},
            "config": {
                "params": {"vectors": create.get("vectors"), "sparse_vectors": create.get("sparse_vectors"),
                           "shard_number": create.get("shard_number") or 1,
                           "replication_factor": create.get("replication_factor") or 1,
                           "write_consistency_factor": create.get("write_consistency_factor") or 1,
                           "on_disk_payload": True},
                "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
                "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                                     "default_segment_number": 0, "indexing_threshold": 20000,
                                     "flush_interval_sec": 5, "max_optimization_threads": 1},
                "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
                "quantization_config": None,
                "metadata": self.description["metadata"],
            },
        }


def _distance(name: str) -> qe.Distance:
    return {"Cosine": qe.Distance.Cosine, "Dot": qe.Distance.Dot, "Euclid": qe.Distance.Euclid}[name]


_SCHEMAS = {"keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer}


class Store:
    """Every collection under one directory; one lock around the engine (tests need correctness, not speed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        self.collections = {p.name: Collection.load(p) for p in sorted(root.iterdir())
                            if p.is_dir() and (p / "collection.json").exists()}  # not aliases.json(.tmp)
        self.aliases_path = root / "aliases.json"
        self.aliases: dict[str, str] = json.loads(self.aliases_path.read_text()) if self.aliases_path.exists() else {}

    def get(self, name: str) -> Collection:
        """A collection by its name or one of its aliases (Qdrant resolves an alias wherever it takes a collection)."""
        name = self.aliases.get(name, name)
        try:
            return self.collections[name]
        except KeyError:
            raise NotFound(f"Not found: Collection `{name}` doesn't exist!") from None

    def save_aliases(self, aliases: dict[str, str]) -> None:
        tmp = self.root / "aliases.json.tmp"
        with open(tmp, "w") as f:
            json.dump(aliases, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.aliases_path)
        self.aliases = aliases

    def close(self) -> None:
        with self.lock:
            for c in self.collections.values():
                c.shard.close()
            self.collections.clear()

    # One method per endpoint: (method, path pattern) -> handler(name, body) -> result.
    def list_collections(self, _name, _body):
        return {"collections": [{"name": n} for n in self.collections]}

    def exists(self, name, _body):
        return {"exists": self.aliases.get(name, name) in self.collections}

    def create_collection(self, name, body):
        if name in self.collections:
            raise Conflict(f"Wrong input: Collection `{name}` already exists!")
        if name in self.aliases:  # Qdrant answers this one with 400, not 409
            raise BadRequest(f"Wrong input: Can't create collection with name {name}. Alias with the same name already exists")
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)  # a half-made one from an earlier crash
        path.mkdir()
        self.collections[name] = Collection.create(path, body)
        return True

    def get_collection(self, name, _body):
        return self.get(name).info()

    def update_collection(self, name, body):
        unknown = set(body) - {"metadata"}
        if unknown:
            raise BadRequest(f"collection update fields not supported by the stand-in: {sorted(unknown)}")
        collection = self.get(name)
        collection.description["metadata"].update(body.get("metadata") or {})  # Qdrant merges metadata keys
        collection.save()
        return True

    def delete_collection(self, name, _body):
        # Qdrant drops the collection's aliases first, and does not resolve an alias here (deleting one: false)
        if name in self.aliases.values():
            self.save_aliases({a: c for a, c in self.aliases.items() if c != name})
        collection = self.collections.pop(name, None)
        if collection is None:
            return False
        collection.shard.close()
        shutil.rmtree(collection.path)
        return True

    def create_index(self, name, body):
        schema = body.get("field_schema")
        if schema not in _SCHEMAS:
            raise BadRequest(f"field_schema not supported by the stand-in: {schema}")
        self.get(name).shard.update(qe.UpdateOperation.create_field_index(body["field_name"], _SCHEMAS[schema]))
        return _updated()

    def upsert(self, name, body):
        if "points" not in body:
            raise BadRequest("upsert: only a list of points is supported by the stand-in")
        points = [qe.Point(p["id"], {n: _vector(v) for n, v in p["vector"].items()}, p.get("payload")) for p in body["points"]]
        self.get(name).shard.update(qe.UpdateOperation.upsert_points(points))
        return _updated()

    def delete_points(self, name, body):
        shard = self.get(name).shard
        if "points" in body:
            shard.update(qe.UpdateOperation.delete_points(body["points"]))
        elif "filter" in body:
            shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(body["filter"])))
        else:
            raise BadRequest("delete: points or filter")
        return _updated()

    def retrieve(self, name, body):
        found = self.get(name).shard.retrieve(body["ids"], _with_payload(body.get("with_payload")), _with_vector(body.get("with_vector")))
        return [_record(r) for r in found]

    def scroll(self, name, body):
        request = qe.ScrollRequest(offset=body.get("offset"), limit=body.get("limit"), filter=_filter(body.get("filter")),
                                   with_payload=_with_payload(body.get("with_payload")), with_vector=_with_vector(body.get("with_vector")))
        points, next_offset = self.get(name).shard.scroll(request)
        return {"points": [_record(r) for r in points], "next_page_offset": None if next_offset is None else str(next_offset)}

    def count(self, name, body):
        return {"count": self.get(name).shard.count(qe.CountRequest(exact=True, filter=_filter(body.get("filter"))))}

    def query(self, name, body):
        unknown = set(body) - {"query", "using", "filter", "limit", "params", "with_payload", "with_vector", "score_threshold"}
        if unknown:
            raise BadRequest(f"query fields not supported by the stand-in: {sorted(unknown)}")
        query = body["query"]
        nearest = query["nearest"] if isinstance(query, dict) and "nearest" in query else query
        request = qe.QueryRequest(
            limit=body.get("limit", 10), query=qe.Query.Nearest(_vector(nearest), using=body.get("using")),
            filter=_filter(body.get("filter")), params=_search_params(body.get("params")),
            with_payload=_with_payload(body.get("with_payload")), with_vector=_with_vector(body.get("with_vector")),
            score_threshold=body.get("score_threshold"))
        return {"points": [_scored(p) for p in self.get(name).shard.query(request)]}

    def update_aliases(self, _name, body):
        """Qdrant's checks and messages (storage/content_manager/toc/collection_meta_ops.rs: update_aliases): the
        actions in order; one that fails keeps those before it, as Qdrant does."""
        aliases = dict(self.aliases)
        try:
            self._apply_aliases(aliases, body["actions"])  # required, as in Qdrant (400 without)
        finally:
            if aliases != self.aliases:
                self.save_aliases(aliases)
        return True

    def _apply_aliases(self, aliases: dict[str, str], actions: list) -> None:
        for action in actions:
            [(kind, args)] = action.items() if isinstance(action, dict) and len(action) == 1 else [(None, None)]
            if kind == "create_alias":
                collection, alias = args["collection_name"], args["alias_name"]
                if collection not in self.collections:  # not resolved: an alias cannot name an alias
                    raise NotFound(f"Not found: Collection `{collection}` doesn't exist!")
                if alias in self.collections:
                    raise Conflict(f"Wrong input: Collection `{alias}` already exists!")
                aliases[alias] = collection  # an existing alias is re-pointed, as in Qdrant
            elif kind == "delete_alias":
                aliases.pop(args["alias_name"], None)  # a missing alias is no error in Qdrant
            elif kind == "rename_alias":
                old, new = args["old_alias_name"], args["new_alias_name"]
                if old not in aliases:
                    raise NotFound(f"Not found: Alias {old} does not exists!")
                aliases[new] = aliases.pop(old)
            else:
                raise BadRequest(f"alias action not supported by the stand-in: {str(action)[:200]}")

    def list_aliases(self, _name, _body):
        # by collection, as Qdrant lists them; an alias of no (longer) existing collection is not listed
        by_collection = sorted((c, a) for a, c in self.aliases.items() if c in self.collections)
        return {"aliases": [{"alias_name": a, "collection_name": c} for c, a in by_collection]}

    def collection_aliases(self, name, _body):
        # Qdrant neither resolves the name nor checks that the collection exists: an unknown one has no aliases
        return {"aliases": [{"alias_name": a, "collection_name": c} for a, c in sorted(self.aliases.items()) if c == name]}


def _updated() -> dict:
    return {"operation_id": 0, "status": "completed"}


_ROUTES = [  # first match wins: the alias routes before those that would read "aliases" as a collection name
    ("POST", r"/collections/aliases", Store.update_aliases),
    ("GET", r"/aliases", Store.list_aliases),
    ("GET", r"/collections/(?P<name>[^/]+)/aliases", Store.collection_aliases),
    ("GET", r"/collections", Store.list_collections),
    ("GET", r"/collections/(?P<name>[^/]+)/exists", Store.exists),
    ("PUT", r"/collections/(?P<name>[^/]+)", Store.create_collection),
    ("GET", r"/collections/(?P<name>[^/]+)", Store.get_collection),
    ("PATCH", r"/collections/(?P<name>[^/]+)", Store.update_collection),
    ("DELETE", r"/collections/(?P<name>[^/]+)", Store.delete_collection),
    ("PUT", r"/collections/(?P<name>[^/]+)/index", Store.create_index),
    ("PUT", r"/collections/(?P<name>[^/]+)/points", Store.upsert),
    ("POST", r"/collections/(?P<name>[^/]+)/points", Store.retrieve),
    ("POST", r"/collections/(?P<name>[^/]+)/points/delete", Store.delete_points),
    ("POST", r"/collections/(?P<name>[^/]+)/points/scroll", Store.scroll),
    ("POST", r"/collections/(?P<name>[^/]+)/points/count", Store.count),
    ("POST", r"/collections/(?P<name>[^/]+)/points/query", Store.query),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as qdrant-client's httpx pool expects
    store: Store
    api_key: str = ""

    def log_message(self, format, *args) -> None:
        pass

    def _handle(self) -> None:
        started = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        path = self.path.split("?", 1)[0]
        if self.api_key and self.headers.get("api-key") != self.api_key:
            return self._send(401, {"status": {"error": "Must provide an API key or an Authorization bearer token"}, "time": 0})
        if path == "/":
            return self._send(200, {"title": "qdrant stand-in (searchsvc tests, qdrant-edge engine)", "version": VERSION})
        for method, pattern, handler in _ROUTES:
            m = re.fullmatch(pattern, path)
            if method == self.command and m:
                try:
                    with self.store.lock:
                        result = handler(self.store, m.groupdict().get("name"), body)
                except (BadRequest, NotFound, Conflict) as exc:
                    return self._send(exc.status, {"status": {"error": str(exc)}, "time": time.perf_counter() - started})
                except Exception as exc:  # the engine's own refusals (wrong dimension, ...): Qdrant answers 400
                    return self._send(400, {"status": {"error": f"Wrong input: {exc}"}, "time": time.perf_counter() - started})
                return self._send(200, {"result": result, "status": "ok", "time": time.perf_counter() - started})
        self._send(404, {"status": {"error": f"the stand-in does not serve {self.command} {path}"}, "time": 0})

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(path: Path, port: int = 0, host: str = "127.0.0.1", *, api_key: str = "",
          tls: tuple[Path, Path] | None = None) -> tuple[ThreadingHTTPServer, Store]:
    store = Store(path)
    handler = type("BoundHandler", (Handler,), {"store": store, "api_key": api_key})
    ThreadingHTTPServer.allow_reuse_address = True  # a restart at once on the port of a killed one
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server, store


class StandInProcess:
    """The stand-in as a child process on a fixed port, so that it can be killed and restarted at the same URL."""

    def __init__(self, path: Path, *options: str, https: bool = False) -> None:
        self.path, self.options, self.https = path, options, https
        with socket.socket() as s:  # a free port, kept across restarts
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "StandInProcess":
        self.proc = subprocess.Popen([sys.executable, __file__, "--path", str(self.path), "--port", str(self.port), *self.options],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"the Qdrant stand-in did not start: {line!r}")
        return self

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, required=True, help="directory of the collections (created if missing)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port, printed once serving")
    parser.add_argument("--api-key", default="", help="refuse requests without this api-key header (401)")
    parser.add_argument("--tls-cert", type=Path, help="serve https with this certificate (PEM) ...")
    parser.add_argument("--tls-key", type=Path, help="... and this key")
    args = parser.parse_args()
    server, store = serve(args.path, args.port, api_key=args.api_key,
                          tls=(args.tls_cert, args.tls_key) if args.tls_cert else None)
    signal.signal(signal.SIGTERM, _interrupt)  # terminate closes the shards, as Ctrl-C does
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
