"""gRPC servicer: maps proto <-> domain and domain errors -> status codes. No search logic lives here."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import hashlib
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from searchsvc import errors
from searchsvc.answer.engine import AnswerEngine
from searchsvc.answer.types import AnswerKind, AnswerResult, ContextEvent, DeltaEvent, GenerationParams
from searchsvc.api import data_pb, metadata_pb
from searchsvc.api.admission import Gate
from searchsvc.collections.catalog import Catalog
from searchsvc.collections.snapshots import SnapshotStore, validate_snapshot_name
from searchsvc.config import Settings
from searchsvc.domain import documents, filters
from searchsvc.domain.types import CollectionConfig, Document, Fusion, SearchMode, SearchParams, SearchResult
from searchsvc.ingest.batch import IndexReport
from searchsvc.ingest.file_reader import FileReader
from searchsvc.ops import logs, metrics, tracing
from searchsvc.ops.log_throttle import LogThrottle
from searchsvc.platform.files import is_disk_full
from searchsvc.search import multi
from searchsvc.search.deadline import AbandonedWork, Deadline
from searchsvc.search.pipeline import SearchPipeline
from searchsvc.storage import CollectionStorage
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_CODES = {
    errors.InvalidArgument: code_pb2.INVALID_ARGUMENT,
    errors.NotFound: code_pb2.NOT_FOUND,
    errors.AlreadyExists: code_pb2.ALREADY_EXISTS,
    errors.ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    errors.Unavailable: code_pb2.UNAVAILABLE,
    errors.DataLoss: code_pb2.DATA_LOSS,
    errors.Overloaded: code_pb2.RESOURCE_EXHAUSTED,
    errors.Abandoned: code_pb2.DEADLINE_EXCEEDED,
}
_FUSIONS = {pb.FUSION_RRF: Fusion.RRF, pb.FUSION_RELATIVE_SCORE: Fusion.RELATIVE_SCORE}
_FUSION_TO_PB = {v: k for k, v in _FUSIONS.items()}
_MODES = {
    pb.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID,
    pb.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
    pb.SEARCH_MODE_DENSE: SearchMode.DENSE,
    pb.SEARCH_MODE_KEYWORD: SearchMode.KEYWORD,
}


def _status_for(exc: errors.SearchsvcError) -> grpc.Status:
    status = status_pb2.Status(code=_CODES[type(exc)], message=exc.message)
    if isinstance(exc, errors.InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)]
            )
        )
        status.details.append(detail)
    converted = rpc_status.to_status(status)
    if isinstance(exc, errors.Overloaded):  # gRPC's retry policy reads this: when to try again
        return _Status(converted.code, converted.details,
                       (*converted.trailing_metadata, ("grpc-retry-pushback-ms", str(exc.retry_after_ms))))
    return converted


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


def _log_environmental(method_name: str, exc: OSError, logged: LogThrottle) -> None:
    """One line per (method, error) a minute: a full disk fails every request, and must not flood the log."""
    if logged.allow((method_name, exc.errno)):
        log.warning("%s failed on a storage error (repeats within %.0f s not logged): %s", method_name, logged.interval_s, exc)


def _environmental_error(exc: OSError) -> errors.SearchsvcError:
    if is_disk_full(exc):
        return errors.ResourceExhausted(f"disk full: {exc.strerror}; free space and retry")
    return errors.Unavailable(f"storage error: {exc.strerror}; retry later")


async def _abort_for(exc: Exception, context, method_name: str, logged: LogThrottle) -> None:
    if isinstance(exc, OSError):  # the environment's fault (disk full, I/O error), not a bug: no traceback
        _log_environmental(method_name, exc, logged)
        exc = _environmental_error(exc)
    if isinstance(exc, errors.SearchsvcError):
        await context.abort_with_status(_status_for(exc))
    # Anything else is our bug: log it in full, tell the caller no more than that it happened.
    log.exception("%s failed", method_name)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method_name}")


def _maps_errors(method):
    """Turn domain errors into their status (with BadRequest details for INVALID_ARGUMENT)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await _abort_for(exc, context, method.__name__, self.storage_errors_logged)

        return stream_wrapper

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort_for(exc, context, method.__name__, self.storage_errors_logged)

    return wrapper


class SearchService(pb_grpc.SearchServiceServicer):
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        pipeline: SearchPipeline,
        executor: ThreadPoolExecutor,
        health=None,
        answers: AnswerEngine | None = None,
        files: FileReader | None = None,
    ):
        self.settings = settings
        self.files = files  # reads Document.content (None: files are refused, by their field)
        self.files_executor = ThreadPoolExecutor(2, thread_name_prefix="searchsvc-files")  # waits on the reader's workers
        self.answers = answers
        self.catalog = catalog
        self.pipeline = pipeline
        self.executor = executor
        # All ingest embedding runs on one thread: concurrent streams would otherwise run several encoder
        # batches at once, each with a full set of torch threads, oversubscribing the cores; and one thread
        # keeps one OpenMP team warm. Searches keep their own pool, so they never queue behind a batch.
        self.ingest_executor = ThreadPoolExecutor(1, thread_name_prefix="searchsvc-ingest")
        self.admin_executor = ThreadPoolExecutor(1, thread_name_prefix="searchsvc-admin")  # re-embeds, snapshots
        self.snapshots = SnapshotStore(settings.snapshots_dir, catalog.root, settings.min_free_disk_bytes)
        self.snapshots.clean()  # what a crash left of a snapshot being written or uploaded
        self.health = health
        self.metered = settings.metrics_port is not None  # Prometheus metrics are served
        self.abandoned = AbandonedWork()  # calls abandoned before each stage (their deadline passed, or cancelled)
        self.storage_errors_logged = LogThrottle()  # one line per (method, errno) a minute
        s = settings
        self.search_gate = Gate("search", s.max_inflight_searches, retry_after_ms=100)
        self.answer_gate = Gate("answer", s.max_inflight_answers, retry_after_ms=5000)
        self.ingest_gate = Gate("ingest", s.max_inflight_ingest, retry_after_ms=1000)

    async def _run(self, fn, *args, executor: ThreadPoolExecutor | None = None):
        """`fn(*args)` on a worker thread, in this call's context (its trace span: stage spans become its children)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor or self.executor, functools.partial(contextvars.copy_context().run, fn, *args))

    # ----------------------------------------------------------- collections
    @_maps_errors
    async def CreateCollection(self, request: pb.CreateCollectionRequest, context) -> pb.Collection:
        c = request.config
        config = CollectionConfig(
            c.embedding_model, c.analyzer, c.chunk_size, c.chunk_overlap, c.reranker_model, c.refresh_interval_ms, c.language,
            c.dimension, c.dense_index.kind, c.dense_index.m, c.dense_index.ef_construction, c.dense_index.ef_search,
            c.dense_index.quantization, c.backend, c.keyword_avg_terms, c.dense_index.target_recall,
        )
        collection = await self._run(self.catalog.create, request.name, config)
        if self.health:
            await self.health.set(collection_health_name(collection.name), health_pb2.HealthCheckResponse.SERVING)
        return await self._run(collection_to_pb, collection)  # counts may be calls to Qdrant

    @_maps_errors
    async def GetCollection(self, request: pb.GetCollectionRequest, context) -> pb.Collection:
        if reason := self.catalog.failure(request.name):
            return failed_collection_to_pb(request.name, reason)
        return await self._run(lambda: collection_to_pb(self.catalog.get(request.name)))

    @_maps_errors
    async def ListCollections(self, request, context) -> pb.ListCollectionsResponse:
        listed = await self._run(lambda: [pb_ for c in self.catalog.list(refresh=True) if (pb_ := listed_collection_to_pb(c))])
        listed += [failed_collection_to_pb(name, reason) for name, reason in self.catalog.failed().items()]
        return pb.ListCollectionsResponse(collections=sorted(listed, key=lambda c: c.name))

    @_maps_errors
    async def ReopenCollection(self, request: pb.ReopenCollectionRequest, context) -> pb.Collection:
        name = await self._run(self.catalog.aliases.resolve, request.name)  # a Qdrant alias: a call to the cluster
        try:
            collection = await self._run(self.catalog.reopen, name, executor=self.admin_executor)
        finally:
            await self._set_health(name)
        return await self._run(collection_to_pb, collection)  # counts may be calls to Qdrant

    async def _set_health(self, name: str) -> None:
        """A collection's health service: SERVING only while it is open and writable."""
        if not self.health:
            return
        collection = next((c for c in self.catalog.list() if c.name == name), None)
        ok = collection is not None and not collection.read_only_reason
        await self.health.set(
            collection_health_name(name), health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    @_maps_errors
    async def DeleteCollection(self, request: pb.DeleteCollectionRequest, context) -> pb.DeleteCollectionResponse:
        await self._run(self.catalog.delete, request.name)
        if self.answers is not None and self.answers.cache is not None:
            self.answers.cache.drop_collection(request.name)
        if self.health:
            await self.health.set(collection_health_name(request.name), health_pb2.HealthCheckResponse.NOT_SERVING)
        return pb.DeleteCollectionResponse()

    @_maps_errors
    async def ReembedCollection(self, request: pb.ReembedCollectionRequest, context) -> pb.Collection:
        # On its own thread: neither the search pool's threads nor the ingest thread (writes go on meanwhile).
        collection = await self._run(self.catalog.reembed, request.name, request.embedding_model, executor=self.admin_executor)
        if self.answers is not None and self.answers.cache is not None:
            self.answers.cache.drop_collection(collection.name)
        return await self._run(collection_to_pb, collection)  # counts may be calls to Qdrant

    # ----------------------------------------------------------- documents
    @_maps_errors
    async def BulkIndex(self, request_iterator, context):
        # One batch in flight per stream: the next request is read only after this ack, so HTTP/2 flow control
        # holds back a client that sends faster than we embed (server memory stays ~ one batch per stream).
        ordinal = 0
        deadline = Deadline(context, self.abandoned)
        with self.ingest_gate.admit():  # a stream holds one batch (up to max_message_bytes) while it is embedded
            async for request in request_iterator:
                ordinal += 1
                collection = await self._collection(request.collection)
                if len(request.documents) > self.settings.max_batch_documents:
                    raise errors.InvalidArgument(
                        "documents", f"{len(request.documents)} documents; at most {self.settings.max_batch_documents} per request"
                    )
                docs = [document_from_pb(d, f"documents[{i}]") for i, d in enumerate(request.documents)]
                if self.files is not None and any(d.content is not None for d in docs):
                    await self._run(self.files.read, docs, executor=self.files_executor)
                deadline.check("ingest")  # a batch nobody waits for any more is not embedded
                report = await self._write(collection, collection.index_documents, docs)
                if request.refresh:
                    await self._write(collection, collection.refresh)
                if self.metered:
                    metrics.observe_ingest(report)
                yield ack_to_pb(request.sequence or ordinal, report)

    @_maps_errors
    async def DeleteDocuments(self, request: pb.DeleteDocumentsRequest, context) -> pb.DeleteDocumentsResponse:
        collection = await self._collection(request.collection)
        deleted, missing = await self._write(collection, collection.delete_documents, list(request.ids))
        return pb.DeleteDocumentsResponse(deleted_count=deleted, not_found_count=missing)

    async def _collection(self, name: str):
        """The collection `name`. One not open yet may be looked up in Qdrant (a network call): off the loop."""
        loaded = self.catalog.loaded(name)
        return loaded if loaded is not None else await self._run(self.catalog.get, name)

    async def _write(self, collection: CollectionStorage, fn, *args):
        """Run a write on the ingest thread; a storage fault that made the collection read-only turns its health
        NOT_SERVING at once."""
        try:
            return await self._run(fn, *args, executor=self.ingest_executor)
        finally:
            if collection.read_only_reason:
                await self._set_health(collection.name)

    async def _searched(self, r: pb.SearchRequest, path: str = ""):
        """The collection a search names, or a CollectionGroup when it names several. `path`: where the
        SearchRequest sits in the request ("search." in an AnswerRequest), for the field an error names."""
        try:
            names = multi.collection_names(r.collection, r.collections)
        except errors.InvalidArgument as exc:
            raise errors.InvalidArgument(f"{path}{exc.field}", exc.description) from None
        members = {}
        for n in names:  # two names may be one collection (an alias and its target): searched once
            collection = await self._collection(n)
            members.setdefault(collection.name, collection)
        found = tuple(members.values())
        return found[0] if len(found) == 1 else multi.CollectionGroup(found)

    # ----------------------------------------------------------- reading documents
    @_maps_errors
    async def GetDocuments(self, request: pb.GetDocumentsRequest, context) -> pb.GetDocumentsResponse:
        collection = await self._collection(request.collection)
        ids = documents.check_ids(request.ids)
        view = data_pb.view_from_pb(request.view, documents.DocumentView.FULL)
        found = await self._run(collection.get_documents, ids, view)
        return data_pb.get_documents_response(ids, found, view, self.settings.max_response_bytes)

    @_maps_errors
    async def ListDocuments(self, request: pb.ListDocumentsRequest, context) -> pb.ListDocumentsResponse:
        collection = await self._collection(request.collection)
        where = request_filter(request)
        size = documents.check_page_size(request.page_size)
        after = documents.position_of(request.page_token, collection.name, where)
        view = data_pb.view_from_pb(request.view, documents.DocumentView.BASIC)

        def page() -> pb.ListDocumentsResponse:
            ids, position = collection.list_documents(where, after, size)
            response = pb.ListDocumentsResponse()
            handled = data_pb.documents_to_pb(ids, collection.get_documents(ids, view), view,
                                              self.settings.max_response_bytes, response)
            if handled == 0 and ids:
                raise errors.ResourceExhausted("one document exceeds the response size limit: list with view BASIC, "
                                               "then GetDocuments one id at a time")
            if handled < len(ids):  # the page ends where the size limit cut it: continue from there
                _, position = collection.list_documents(where, after, handled)
            response.next_page_token = documents.page_token(collection.name, where, position)
            return response

        return await self._run(page)

    @_maps_errors
    async def CountDocuments(self, request: pb.CountDocumentsRequest, context) -> pb.CountDocumentsResponse:
        collection = await self._collection(request.collection)
        where = request_filter(request)
        return pb.CountDocumentsResponse(count=await self._run(collection.count_documents, where))

    # ----------------------------------------------------------- aliases
    @_maps_errors
    async def UpdateAliases(self, request: pb.UpdateAliasesRequest, context) -> pb.UpdateAliasesResponse:
        actions = data_pb.alias_actions_from_pb(request.actions)
        aliases = await self._run(self.catalog.update_aliases, actions, executor=self.admin_executor)
        return pb.UpdateAliasesResponse(aliases=data_pb.aliases_to_pb(aliases))

    @_maps_errors
    async def ListAliases(self, request: pb.ListAliasesRequest, context) -> pb.ListAliasesResponse:
        aliases = await self._run(self.catalog.aliases.listing)  # Qdrant's: a call to the cluster
        if request.collection:
            aliases = {a: cb for a, cb in aliases.items() if cb[0] == request.collection}
        return pb.ListAliasesResponse(aliases=data_pb.aliases_to_pb(aliases))

    # ----------------------------------------------------------- snapshots
    @_maps_errors
    async def CreateSnapshot(self, request: pb.CreateSnapshotRequest, context) -> pb.Snapshot:
        collection = await self._collection(request.collection)
        info = await self._run(self.snapshots.create, collection, executor=self.admin_executor)
        return data_pb.snapshot_to_pb(info)

    @_maps_errors
    async def ListSnapshots(self, request: pb.ListSnapshotsRequest, context) -> pb.ListSnapshotsResponse:
        collection = await self._run(self.catalog.aliases.resolve, request.collection) if request.collection else ""
        found = await self._run(self.snapshots.list, collection)
        return pb.ListSnapshotsResponse(snapshots=[data_pb.snapshot_to_pb(s) for s in found])

    @_maps_errors
    async def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest, context) -> pb.DeleteSnapshotResponse:
        await self._run(self.snapshots.delete, request.name)
        return pb.DeleteSnapshotResponse()

    @_maps_errors
    async def RestoreSnapshot(self, request: pb.RestoreSnapshotRequest, context) -> pb.Collection:
        validate_snapshot_name(request.name)

        def restore():
            manifest = self.snapshots.verify(request.name)  # every checksum, before anything is written
            return self.catalog.restore(self.snapshots.path(request.name), manifest, request.collection)

        collection = await self._run(restore, executor=self.admin_executor)
        await self._set_health(collection.name)
        return await self._run(collection_to_pb, collection)

    @_maps_errors
    async def DownloadSnapshot(self, request: pb.DownloadSnapshotRequest, context):
        blocks = self.snapshots.read(request.name)
        try:
            while block := await self._run(next, blocks, b""):
                yield pb.SnapshotData(data=block)
        finally:
            blocks.close()

    @_maps_errors
    async def UploadSnapshot(self, request_iterator, context) -> pb.Snapshot:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "name":
            raise errors.InvalidArgument("name", "the first message must name the snapshot")
        name = validate_snapshot_name(first.name)
        tmp = self.snapshots.upload_path(name)
        try:
            digest = hashlib.sha256()  # the archive's checksum, taken as it arrives (no second pass over it)
            with open(tmp, "wb") as out:  # one message at a time: gRPC flow control holds a fast sender back
                async for request in request_iterator:
                    if request.WhichOneof("part") != "data":
                        raise errors.InvalidArgument("data", "only the first message names the snapshot; the others carry data")
                    digest.update(request.data)
                    await self._run(out.write, request.data)
            info = await self._run(self.snapshots.accept, name, tmp, digest.hexdigest(), executor=self.admin_executor)
        finally:
            tmp.unlink(missing_ok=True)
        return data_pb.snapshot_to_pb(info)

    # ----------------------------------------------------------- search
    @_maps_errors
    async def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        with self.search_gate.admit():
            collection = await self._searched(request)
            params = search_params_from_pb(request, self.settings)
            result = await self._run(self.pipeline.search, collection, params, Deadline(context, self.abandoned))
            if self.metered:
                metrics.observe_search(result.timings_ms)
            tracing.set_attributes(collection=collection.name, mode=params.mode.name, top_k=params.top_k,
                                   hits=len(result.hits), rerank=result.rerank.applied)
            logs.log_slow_search(self.settings.slow_query_ms, self.settings.slow_query_log_text, collection.name, params,
                                 result.timings_ms, len(result.hits))
            return search_result_to_pb(result, params.explain, self.settings.max_response_bytes)

    # ----------------------------------------------------------- answers
    async def _answer_args(self, request: pb.AnswerRequest):
        collection = await self._searched(request.search, "search.")
        return collection, answer_search_params_from_pb(request, self.settings), generation_params_from_pb(request, self.settings)

    @_maps_errors
    async def Answer(self, request: pb.AnswerRequest, context) -> pb.AnswerResponse:
        with self.answer_gate.admit():
            result = await self.answers.answer(*await self._answer_args(request))
            if self.metered:
                metrics.observe_answer(result)
            return answer_result_to_pb(result, request.search.explain)

    @_maps_errors
    async def StreamAnswer(self, request: pb.AnswerRequest, context):
        explain = request.search.explain
        with self.answer_gate.admit():
            async for event in self._answer_events(request, explain):
                yield event

    async def _answer_events(self, request: pb.AnswerRequest, explain: bool):
        stream = self.answers.stream(*await self._answer_args(request))
        try:
            async for event in stream:
                if isinstance(event, ContextEvent):
                    yield pb.AnswerEvent(context=pb.AnswerContext(hits=[hit_to_pb(h, explain) for h in event.hits]))
                elif isinstance(event, DeltaEvent):
                    yield pb.AnswerEvent(delta=pb.AnswerDelta(text=event.text))
                else:
                    if self.metered:
                        metrics.observe_answer(event.result)
                    yield pb.AnswerEvent(done=answer_result_to_pb(event.result, explain))
        finally:
            await stream.aclose()  # a cancelled call stops generation now, not at the next token it would send

    @_maps_errors
    async def GetAnswerStats(self, request, context) -> pb.AnswerStats:
        s = self.answers.stats
        return pb.AnswerStats(
            answers_by_kind=dict(s.answers_by_kind),
            prompt_tokens=s.prompt_tokens,
            completion_tokens=s.completion_tokens,
            cache_hits=s.cache_hits,
            cache_misses=s.cache_misses,
            semantic_cache_hits=s.semantic_cache_hits,
            semantic_cache_misses=s.semantic_cache_misses,
        )


# --------------------------------------------------------------- mapping helpers
def collection_health_name(name: str) -> str:
    """Per-collection readiness is served under this health service name."""
    return f"searchsvc.v1.Collection/{name}"


def collection_to_pb(c: CollectionStorage) -> pb.Collection:
    return pb.Collection(
        name=c.name,
        config=data_pb.config_to_pb(c.config),
        document_count=c.document_count,
        chunk_count=c.chunk_count,
        dimension=c.dimension,
        state=pb.COLLECTION_STATE_READ_ONLY if c.read_only_reason else pb.COLLECTION_STATE_READY,
        state_reason=c.read_only_reason,
        dense_index_in_use=c.dense_index_in_use,
        version=c.version,
        writes_in_progress=c.writes_in_progress,
        dense_ef_search=c.dense_ef_search,
        dense_recall=c.dense_recall,
        dense_backlog=c.dense_backlog,
    )


def listed_collection_to_pb(c: CollectionStorage) -> pb.Collection | None:
    """One collection of a listing: one whose storage does not answer is listed as UNAVAILABLE (the others are
    still listed), one deleted meanwhile (through another server on the cluster) is left out."""
    try:
        return collection_to_pb(c)
    except errors.Unavailable as exc:
        listed = pb.Collection(name=c.name, state=pb.COLLECTION_STATE_UNAVAILABLE, state_reason=str(exc))
        listed.config.backend = c.config.backend
        return listed
    except errors.NotFound:
        return None


def failed_collection_to_pb(name: str, reason: str) -> pb.Collection:
    return pb.Collection(name=name, state=pb.COLLECTION_STATE_FAILED, state_reason=reason)


def ack_to_pb(sequence: int, report: IndexReport) -> pb.BulkIndexResponse:
    return pb.BulkIndexResponse(
        sequence=sequence,
        indexed_count=report.indexed,
        replaced_count=report.replaced,
        failed_count=len(report.errors),
        chunk_count=report.chunks,
        errors=[
            pb.DocumentError(index=e.index, document_id=e.document_id, code=code_pb2.Code.Value(e.code), field=e.field, message=e.message)
            for e in report.errors
        ],
    )


def document_from_pb(d: pb.Document, path: str) -> Document:
    file = dict(content=d.content if d.content else None, content_type=d.content_type, filename=d.filename)
    try:
        return Document(d.id, d.text, d.title, metadata_pb.document_metadata(d, path), d.vector or None, **file)
    except errors.InvalidArgument as exc:  # that document is refused with its field path; the batch goes on
        return Document(d.id, d.text, d.title, dict(d.metadata), invalid=(exc.field, exc.description), **file)


def request_filter(r: pb.SearchRequest) -> filters.Filter | None:
    """`filter` (exact string pairs, any key) and `where` (the language), both required when both are set."""
    if any(not key for key in r.filter):
        raise errors.InvalidArgument("filter", "keys must not be empty")
    where = filters.check(metadata_pb.filter_from_pb(r.where), "where") if r.HasField("where") else None
    return filters.both(filters.from_pairs(dict(r.filter)), where)


def search_params_from_pb(r: pb.SearchRequest, s: Settings) -> SearchParams:
    if r.mode not in _MODES:
        raise errors.InvalidArgument("mode", f"unknown search mode {r.mode}")
    if r.fusion and r.fusion not in _FUSIONS:
        raise errors.InvalidArgument("fusion", f"unknown fusion {r.fusion}")
    top_k = r.top_k or 10
    params = SearchParams(
        query=r.query,
        top_k=top_k,
        filter=request_filter(r),
        mode=_MODES[r.mode],
        explain=r.explain,
        dense_candidates=r.dense_candidates or max(s.default_candidates, top_k),
        keyword_candidates=r.keyword_candidates or max(s.default_candidates, top_k),
        rrf_k=r.rrf_k if r.HasField("rrf_k") else s.default_rrf_k,
        fusion=_FUSIONS[r.fusion] if r.fusion else None,
        dense_weight=r.dense_weight if r.HasField("dense_weight") else None,
        keyword_weight=r.keyword_weight if r.HasField("keyword_weight") else None,
        rerank=r.rerank.enabled,
        rerank_candidates=r.rerank.candidates or s.default_rerank_candidates,
        rerank_model=r.rerank.model,
        similarity_cutoff=r.similarity_cutoff if r.HasField("similarity_cutoff") else None,
        query_vector=r.query_vector or None,
        ef_search=r.dense.ef_search or None,
        exact=r.dense.exact,
        mmr_lambda=r.mmr.lambda_mult if r.HasField("mmr") else None,
        mmr_candidates=(r.mmr.candidates or min(4 * top_k, 200)) if r.HasField("mmr") else 0,
        highlight=r.highlight,
    )
    params.validate(max_top_k=s.max_top_k, max_query_chars=s.max_query_chars)
    return params


def search_result_to_pb(result: SearchResult, explain: bool, max_bytes: int) -> pb.SearchResponse:
    """The response, built hit by hit until the next hit would take it past `max_bytes` (the rest are counted in
    truncated_hits, not built)."""
    response = pb.SearchResponse(
        timings=search_timings_to_pb(result.timings_ms),
        rerank=pb.RerankStatus(
            applied=result.rerank.applied, model=result.rerank.model, skipped_reason=result.rerank.skipped_reason
        ),
        cutoff_dropped=result.cutoff_dropped,
        fusion=_FUSION_TO_PB.get(result.fusion, pb.FUSION_UNSPECIFIED),
        query_language=result.query_language,
    )
    size = response.ByteSize()
    for i, h in enumerate(result.hits):
        hit = hit_to_pb(h, explain)
        size += hit.ByteSize() + 5  # the field's tag and length prefix
        if size > max_bytes:
            response.truncated_hits = len(result.hits) - i
            break
        response.hits.append(hit)
    return response


def search_timings_to_pb(t: dict[str, float]) -> pb.Timings:
    return pb.Timings(
        embed_ms=t.get("embed", 0.0),
        dense_ms=t.get("dense", 0.0),
        keyword_ms=t.get("keyword", 0.0),
        fuse_ms=t.get("fuse", 0.0),
        rerank_ms=t.get("rerank", 0.0),
        cutoff_ms=t.get("cutoff", 0.0),
        total_ms=t.get("total", 0.0),
    )


def hit_to_pb(h, explain: bool) -> pb.Hit:
    hit = pb.Hit(chunk_id=h.chunk_id, document_id=h.document_id, text=h.text, title=h.title, score=h.score, metadata=h.metadata)
    metadata_pb.metadata_to_pb(h.typed_metadata, hit)
    hit.collection = h.collection
    if h.highlight is not None:
        hit.highlight.spans.extend(pb.TextSpan(start=s, end=e) for s, e in h.highlight.spans)
        hit.highlight.snippet = h.text[h.highlight.snippet_start : h.highlight.snippet_end]
        hit.highlight.snippet_span.start, hit.highlight.snippet_span.end = h.highlight.snippet_start, h.highlight.snippet_end
    if explain:
        e = hit.explanation
        if h.dense:
            e.dense.rank, e.dense.score = h.dense.rank, h.dense.score
        if h.keyword:
            e.keyword.rank, e.keyword.score = h.keyword.rank, h.keyword.score
        if h.fused_score is not None:
            e.fused_score = h.fused_score
        if h.rerank_score is not None:
            e.rerank_score = h.rerank_score
        if h.similarity is not None:
            e.similarity = h.similarity
    return hit


_KINDS = {
    AnswerKind.GENERATED: pb.ANSWER_KIND_GENERATED,
    AnswerKind.EXTRACTIVE: pb.ANSWER_KIND_EXTRACTIVE,
    AnswerKind.NO_CONTEXT: pb.ANSWER_KIND_NO_CONTEXT,
    AnswerKind.REFUSED: pb.ANSWER_KIND_REFUSED,
    AnswerKind.UNANSWERED: pb.ANSWER_KIND_UNANSWERED,
}
_GUARD_STATUS = {
    "": pb.GUARDRAIL_STATUS_UNSPECIFIED,
    "ALLOWED": pb.GUARDRAIL_STATUS_ALLOWED,
    "MODIFIED": pb.GUARDRAIL_STATUS_MODIFIED,
    "BLOCKED": pb.GUARDRAIL_STATUS_BLOCKED,
}
DEFAULT_ANSWER_TOP_K = 5


def answer_search_params_from_pb(r: pb.AnswerRequest, s: Settings) -> SearchParams:
    search = pb.SearchRequest()
    search.CopyFrom(r.search)
    search.top_k = search.top_k or DEFAULT_ANSWER_TOP_K
    try:
        return search_params_from_pb(search, s)
    except errors.InvalidArgument as exc:  # name the field as the caller wrote it
        raise errors.InvalidArgument(f"search.{exc.field}", exc.description) from None


def generation_params_from_pb(r: pb.AnswerRequest, s: Settings) -> GenerationParams:
    a = s.answer
    if not 0 <= r.max_tokens <= a.max_tokens_limit:
        raise errors.InvalidArgument("max_tokens", f"must be 1-{a.max_tokens_limit} (0: default {a.default_max_tokens})")
    if r.HasField("temperature") and not 0.0 <= r.temperature <= 2.0:
        raise errors.InvalidArgument("temperature", "must be between 0 and 2")
    return GenerationParams(
        max_tokens=r.max_tokens or a.default_max_tokens,
        temperature=r.temperature if r.HasField("temperature") else a.default_temperature,
        extractive=r.extractive,
        bypass_cache=r.bypass_cache,
    )


def answer_result_to_pb(r: AnswerResult, explain: bool) -> pb.AnswerResponse:
    t = r.timings_ms
    return pb.AnswerResponse(
        answer=r.answer,
        kind=_KINDS[r.kind],
        citations=[
            pb.Citation(
                marker=c.marker, source=c.source, chunk_id=c.chunk_id, document_id=c.document_id,
                quote=c.quote, quote_start=c.quote_start, quote_end=c.quote_end, inferred=c.inferred,
                page=c.page, filename=c.filename,
            )
            for c in r.citations
        ],
        context=[hit_to_pb(h, explain) for h in r.context],
        guardrails=pb.GuardrailVerdict(
            status=_GUARD_STATUS[r.guard.status],
            hits=[pb.RailHit(rail=h.rail, action=h.action, reason=h.reason) for h in r.guard.hits],
            input_ms=r.guard.input_ms,
            output_ms=r.guard.output_ms,
        ),
        usage=pb.Usage(
            prompt_tokens=r.usage.prompt_tokens,
            completion_tokens=r.usage.completion_tokens,
            total_tokens=r.usage.total_tokens,
            cached=r.usage.cached,
            prompt_tokens_reused=r.usage.prompt_tokens_reused,
            cached_similarity=r.usage.cached_similarity,
        ),
        timings=pb.AnswerTimings(
            retrieve_ms=t.get("retrieve", 0.0),
            search=search_timings_to_pb(r.search_timings_ms),
            guard_input_ms=t.get("guard_input", 0.0),
            first_token_ms=t.get("first_token", 0.0),
            generate_ms=t.get("generate", 0.0),
            guard_output_ms=t.get("guard_output", 0.0),
            total_ms=t.get("total", 0.0),
            context_ms=t.get("context", 0.0),
        ),
        generator=pb.Generator(backend=r.generator.backend, model=r.generator.model, fallback_reason=r.generator.fallback_reason),
    )
