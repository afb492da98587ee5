"""Server wiring: grpc.aio server, health (overall and per collection), reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from searchsvc.answer.cache import AnswerCache
from searchsvc.answer.engine import AnswerEngine, LLMProvider
from searchsvc.api import tls, wire
from searchsvc.api.auth import AuthInterceptor, KeyRing, Principal, Role
from searchsvc.api.interceptors import RequestIds, RpcMetrics, TracingInterceptor
from searchsvc.api.metrics_endpoint import serve_metrics
from searchsvc.api.servicer import SearchService, collection_health_name
from searchsvc.collections.catalog import Catalog
from searchsvc.config import Settings, apply_process_env, otel_exporter_configured, otel_sampler_configured
from searchsvc.domain.types import CollectionConfig, Fusion
from searchsvc.ingest.extract.base import ExtractionLimits
from searchsvc.ingest.file_reader import FileReader
from searchsvc.ops import tracing
from searchsvc.ops.metrics import REGISTRY
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.pipeline import SearchPipeline
from searchsvc.v1 import searchsvc_pb2, searchsvc_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = searchsvc_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name


# Allocations of container objects between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Run CPython's cycle collector less often, and never over what start-up loaded.

    A bulk load allocates many short-lived dicts and lists per document (protobuf conversion, WAL and docstore
    JSON), so at the default threshold the collector ran ~70 times a second, re-walking the ~570k objects that
    models and collections hold: 3.3 s of a 14 s load of 50k documents (gc.callbacks), on the thread that
    serializes every write. A young-generation threshold of 50k allocations alone took it to 0.7 s, and the
    load from 3,688 to 4,288 documents/s. Collecting once and then freezing what is left (gc.freeze: moved out
    of every generation) also keeps the older generations' collections from walking start-up's objects again.
    Cycles are still collected; the young generation holds at most 50k objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def thread_count(settings: Settings) -> int:
    """Threads for torch and ONNX Runtime: the setting, or every core."""
    return settings.torch_threads or os.cpu_count() or 1


def configure_threads(settings: Settings) -> int:
    """Import torch and set its thread count (for commands that run models at once; the server leaves torch to
    ModelRegistry, which imports it only for a collection that runs a model)."""
    import torch

    threads = thread_count(settings)
    torch.set_num_threads(threads)
    return threads


def build_answer_engine(settings: Settings, pipeline: SearchPipeline, executor: ThreadPoolExecutor) -> AnswerEngine:
    guard = None
    if settings.guard.enabled:
        from searchsvc.guard import Guardrails

        guard = Guardrails(settings.guard)
    cache = AnswerCache(settings.index_dir / "answer-cache.sqlite", settings.answer.cache_entries)
    return AnswerEngine(settings, pipeline, executor, guard, LLMProvider(settings), cache)


async def serve(
    settings: Settings,
    started: asyncio.Future | None = None,
    stop: asyncio.Event | None = None,
    components: dict | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or `stop` is set). `started` receives the bound port; `components` (for
    in-process use) receives the servicer."""
    apply_process_env()
    threads = thread_count(settings)
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(settings.search_workers, thread_name_prefix="searchsvc")
    models = ModelRegistry(
        settings.embed_batch_size, settings.rerank_max_length, settings.rerank_int8,
        models_dir=settings.models_dir, cache_dir=settings.derived_models_dir, e5_engine=settings.e5_engine,
        encoder_precision=settings.encoder_precision, sentence_engine=settings.sentence_engine, threads=threads,
        encoder_int8=settings.encoder_int8, rerank_engine=settings.rerank_engine,
        allowed=settings.model_allow_list, max_cross_encoders=settings.max_loaded_rerankers, build_in_child=True,
        unused_grace_s=settings.unused_model_grace_s,
    )
    catalog = Catalog(settings, models)
    # Opening a collection loads its embedder; nothing else loads a model. A server with no collection yet makes
    # the default model's files (its ONNX export) in a child process while it serves, so that the first
    # CreateCollection loads it in about a second, and an idle server holds no model (~150 MB instead of ~600).
    await loop.run_in_executor(executor, catalog.open_all)
    warm_up = None
    if not catalog.list() and not catalog.failed():
        default = catalog.with_defaults(CollectionConfig("", "", 0, 0))
        warm_up = loop.run_in_executor(executor, models.prepare, default.embedding_model)

    limits = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    if otel_exporter_configured():
        tracing.configure_otlp(settings.trace_sample_ratio, otel_sampler_configured())
        log.info("traces exported over OTLP (OTEL_* variables)")
    # Outermost first. Metrics only with their port: off, they cost nothing.
    metered = [RpcMetrics()] if settings.metrics_port is not None else []
    interceptors = [TracingInterceptor(), RequestIds(), *metered, *auth_interceptors(settings)]
    server = grpc.aio.server(options=limits, interceptors=interceptors)
    health = HealthServicer()
    wire.register(health_pb2_grpc.add_HealthServicer_to_server, health, server)
    pipeline = SearchPipeline(models, Fusion(settings.default_fusion))
    answers = await loop.run_in_executor(executor, build_answer_engine, settings, pipeline, executor)
    # Load (and on first start assemble) the LLM in the background: the first Answer waits for it, nothing else does.
    llm_ready = loop.run_in_executor(executor, answers.llms.get)
    files = build_file_reader(settings)  # its worker processes start with the first file sent
    service = SearchService(settings, catalog, pipeline, executor, health, answers, files)
    if components is not None:
        components["service"] = service
    wire.register(searchsvc_pb2_grpc.add_SearchServiceServicer_to_server, service, server)
    # What reflection.enable_server_reflection does, registered through wire like the others.
    wire.register(reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                  reflection.aio.ReflectionServicer([SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME]), server)
    address = f"{settings.host}:{settings.port}"
    if settings.tls.cert_file:
        port = server.add_secure_port(address, tls.server_credentials(settings.tls))
    else:
        port = server.add_insecure_port(address)
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server = serve_metrics(service, settings.metrics_host, settings.metrics_port, settings.metrics_max_collection_labels)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, metrics_server[0].server_port)
    tune_garbage_collector()  # after the collections and models are loaded: they are most of what the heap holds
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    for collection in catalog.list():
        await health.set(collection_health_name(collection.name), health_pb2.HealthCheckResponse.SERVING)
    for name in catalog.failed():  # could not be opened: GetCollection says why
        await health.set(collection_health_name(name), health_pb2.HealthCheckResponse.NOT_SERVING)
    log.info("torch threads %d, %d worker threads, index dir %s", threads, settings.search_workers, settings.index_dir)
    print(f"searchsvc listening on {settings.host}:{port}", flush=True)
    if started is not None:
        started.set_result(port)

    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (RuntimeError, ValueError):  # not the main thread (in-process use): rely on `stop`
            pass
    await stop.wait()
    log.info("shutting down: draining calls, then checkpointing collections")
    await health.enter_graceful_shutdown()
    await server.stop(grace=10)
    if metrics_server is not None:
        metrics_server[0].shutdown()
        REGISTRY.unregister(metrics_server[1])
    await loop.run_in_executor(executor, catalog.close)
    await llm_ready
    if warm_up is not None:
        await warm_up
    answers.close()
    files.close()
    executor.shutdown()


def build_file_reader(settings: Settings) -> FileReader:
    return FileReader(settings.files.workers, ExtractionLimits.from_settings(settings.files), settings.files.max_text_bytes)


def auth_interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """The API-key check when keys are configured. Without keys the server refuses a non-loopback address (anyone
    who reaches the port could delete collections) unless auth.allow_anonymous says the network is trusted."""
    a = settings.auth
    keys = KeyRing(Principal(k.name, k.sha256, Role[k.role.upper()], tuple(k.collections)) for k in a.all_keys())
    if keys:
        log.info("API keys required (%d configured); health %s, reflection %s", len(keys.principals),
                 "open" if a.open_health else "keyed", "open" if a.open_reflection else "keyed")
        return [AuthInterceptor(keys, open_health=a.open_health, open_reflection=a.open_reflection)]
    if not _is_loopback(settings.host) and not a.allow_anonymous:
        raise SystemExit(f"refusing to serve {settings.host} without API keys: configure auth.keys (searchsvc new-key), "
                         "or set auth.allow_anonymous on a trusted network")
    return []


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def private_server(settings: Settings) -> Settings:
    """The settings of a server that eval and bench start for themselves on loopback: no TLS, keys or metrics
    port from the operator's config (their own client talks to it in plaintext, without a key)."""
    from searchsvc.config import AuthSettings, TlsSettings

    return settings.model_copy(update={"host": "127.0.0.1", "tls": TlsSettings(), "auth": AuthSettings(), "metrics_port": None})


class BackgroundServer:
    """The real server on its own event loop thread, for eval, bench and tests in one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = None
        self.port = 0
        self.components: dict = {}

    def __enter__(self) -> "BackgroundServer":
        import threading

        started = self._loop.create_future()

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self.settings, started, self._stop, self.components)

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),), daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(_wait(started), self._loop).result(timeout=300)
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)


async def _wait(future: asyncio.Future):
    return await future
