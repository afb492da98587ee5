"""The set of collections: create, open at start, look up, reopen, delete. Embedded collections live under the
index dir; Qdrant ones in the configured Qdrant (their config in each Qdrant collection's metadata), found there
at start.

A collection that cannot be opened (a corrupt WAL, an unreadable snapshot) does not stop the server: it is held
as *failed* with the reason, which GetCollection, ListCollections and its health report, until it is repaired and
reopened or deleted."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import ssl
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from llama_index.core.base.embeddings.base import BaseEmbedding

from searchsvc.collections.aliases import AliasAction, Aliases
from searchsvc.config import Settings
from searchsvc.domain.types import CollectionConfig, validate_collection_name
from searchsvc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from searchsvc.ingest.batch import DocumentLimits
from searchsvc.platform.files import fsync_dir, remove_tree_atomic, write_text_atomic
from searchsvc.retrieve.analyzers import get_analyzer
from searchsvc.retrieve.external import EXTERNAL_MODEL, ExternalEmbedding
from searchsvc.retrieve.language import COLLECTION_DEFAULTS, validate_language
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.storage.embedded.collection import DOCSTORE_FILE, Collection, validate_config_values
from searchsvc.storage.embedded.dense import DenseIndex, DenseIndexSpec
from searchsvc.storage.embedded.snapshot import Manifest
from searchsvc.storage.embedded.snapshot import extract as extract_snapshot
from searchsvc.storage.embedded.sqlite_kv import SqliteKVStore
from searchsvc.storage.embedded.wal import WalCorrupt
from searchsvc.storage.qdrant.errors import qdrant_errors

if TYPE_CHECKING:
    from searchsvc.storage.qdrant.collection import QdrantCollection

log = logging.getLogger(__name__)
ALIASES_FILE = "aliases.json"
WRITER_ID_FILE = "server.id"


def _in_qdrant(collection) -> bool:
    return collection is not None and collection.config.backend == "qdrant"


class Catalog:
    def __init__(self, settings: Settings, models: ModelRegistry) -> None:
        self.settings = settings
        self.models = models
        self.root = Path(settings.index_dir)
        self._collections: dict[str, Collection] = {}
        self._failed: dict[str, str] = {}  # name -> why it could not be opened
        self._reembedding: set[str] = set()
        self._restoring: set[str] = set()
        self._lock = threading.Lock()
        s = settings
        self._limits = DocumentLimits(s.max_document_bytes, s.max_metadata_pairs, s.max_metadata_key_bytes,
                                      s.max_metadata_value_bytes, s.max_metadata_bytes)
        self._writer: str | None = None  # _writer_id
        self._qdrant_client = None  # created at the first need (open_all with a cluster configured, or a create)
        self._qdrant_lock = threading.RLock()  # creating the client; and every call, for local mode's
        # Around each call on the client: local mode's is not thread-safe; a cluster's client is.
        self._qdrant_calls = nullcontext() if settings.qdrant.url else self._qdrant_lock
        # Aliases of Qdrant-backed collections are Qdrant's own (shared by every server on the cluster).
        self.aliases = Aliases(self.root / ALIASES_FILE, self._qdrant_aliases, self._is_collection_here)

    def with_defaults(self, config: CollectionConfig) -> CollectionConfig:
        """Fill what the request left empty: the server's explicit defaults first, then the language's."""
        s = self.settings
        size = config.chunk_size or s.default_chunk_size
        overlap = config.chunk_overlap if config.chunk_size else s.default_chunk_overlap
        language = validate_language(config.language or s.default_language)
        by_language = COLLECTION_DEFAULTS[language]
        return CollectionConfig(
            language=language,
            embedding_model=config.embedding_model or s.default_embedding_model or by_language.embedding_model,
            analyzer=config.analyzer or s.default_analyzer or by_language.analyzer,
            chunk_size=size,
            chunk_overlap=overlap,
            reranker_model=config.reranker_model,
            refresh_interval_ms=config.refresh_interval_ms or s.default_refresh_interval_ms,
            dimension=config.dimension,
            dense_index=config.dense_index or CollectionConfig.dense_index,
            hnsw_m=config.hnsw_m or CollectionConfig.hnsw_m,
            hnsw_ef_construction=config.hnsw_ef_construction or CollectionConfig.hnsw_ef_construction,
            hnsw_ef_search=config.hnsw_ef_search or CollectionConfig.hnsw_ef_search,
            dense_quantization=config.dense_quantization or CollectionConfig.dense_quantization,
            hnsw_target_recall=config.hnsw_target_recall,
            backend=config.backend or s.default_backend,
            # Half the chunk size: chunks come near it, and about half of a chunk's tokens become index terms.
            # Too high costs less than too low (docs/decisions/0027-bm25-from-write-time-statistics.md).
            keyword_avg_terms=config.keyword_avg_terms or (max(1, size // 2) if (config.backend or s.default_backend) == "qdrant" else 0.0),
        )

    def _embedder(self, config: CollectionConfig) -> tuple[BaseEmbedding, int]:
        """The collection's embed model and vector length."""
        if config.embedding_model == EXTERNAL_MODEL:
            return ExternalEmbedding(dimension=config.dimension), config.dimension
        return self.models.embedder(config.embedding_model), self.models.dimension(config.embedding_model)

    def _open(self, path: Path) -> Collection:
        config = Collection.read_config(path)
        return Collection.open(
            path,
            *self._embedder(config),
            limits=self._limits,
            checkpoint_wal_bytes=self.settings.checkpoint_wal_bytes,
            min_free_disk_bytes=self.settings.min_free_disk_bytes,
        )

    # ------------------------------------------------------------------ Qdrant
    @property
    def _qdrant_path(self) -> Path:
        # Dot-prefixed: not a collection name, so no collection directory can be (or delete) it.
        return Path(self.settings.qdrant.path or self.root / ".qdrant")

    def _qdrant(self):
        """The one client of this server: a cluster (settings.qdrant.url) or local mode (one process per path)."""
        with self._qdrant_lock:
            if self._qdrant_client is None:
                from qdrant_client import QdrantClient

                q = self.settings.qdrant
                if q.url:
                    tls = {"verify": ssl.create_default_context(cafile=str(q.tls_ca_file))} if q.tls_ca_file else {}
                    self._qdrant_client = QdrantClient(url=q.url, api_key=q.api_key or None, timeout=max(1, round(q.timeout_s)), **tls)
                else:
                    try:
                        self._qdrant_client = QdrantClient(path=str(self._qdrant_path))
                    except RuntimeError as exc:  # another process holds local mode's directory
                        raise Unavailable(f"Qdrant local mode at {self._qdrant_path}: {exc}") from exc
            return self._qdrant_client

    def _qdrant_collection(self, name: str, config: CollectionConfig, *, create: bool = False) -> "QdrantCollection":
        from searchsvc.storage.qdrant.collection import QdrantCollection

        embedder, dimension = self._embedder(config)
        make = QdrantCollection.create if create else QdrantCollection
        q = self.settings.qdrant
        return make(self._qdrant(), name, config, embedder, dimension, get_analyzer(config.analyzer),
                    limits=self._limits, lock=self._qdrant_calls, ordering=q.write_ordering, writer=self._writer_id(),
                    **({"layout": q.layout()} if create else {}))

    def _writer_id(self) -> str:
        """This server's id among the writers of Qdrant collections (the keys of its statistics there), kept in
        <index_dir>/server.id so that a restart writes to the same keys. Read once."""
        with self._qdrant_lock:
            if self._writer is None:
                path = self.root / WRITER_ID_FILE
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(path, uuid.uuid4().hex[:12])
                self._writer = path.read_text().strip()
            return self._writer

    def _check_not_an_alias(self, name: str, embedded: bool) -> None:
        """ALREADY_EXISTS if `name` is an alias. A new embedded collection does not wait for an unreachable cluster:
        it is then checked against the file's aliases only (Qdrant refuses a name taken there for its own)."""
        try:
            target = self.aliases.target(name)
        except Unavailable as exc:
            if not embedded:
                raise
            log.warning("collection %s made without checking Qdrant's aliases for the name: %s", name, exc)
            target = self.aliases.target(name, local_only=True)
        if target:
            raise AlreadyExists(f"{name!r} is an alias (of collection {target!r})")

    def _is_collection_here(self, name: str) -> bool:
        """A name this server knows as a collection (open, failed, or an embedded one on disk): not an alias."""
        return name in self._collections or name in self._failed or (self.root / name / "collection.json").exists()

    def _qdrant_aliases(self):
        if not self._uses_qdrant:
            return None
        from searchsvc.storage.qdrant.aliases import QdrantAliases

        return QdrantAliases(self._qdrant, self._qdrant_calls)

    @property
    def _uses_qdrant(self) -> bool:
        return bool(self.settings.qdrant.url) or self._qdrant_path.exists()

    def _open_qdrant_collections(self) -> None:
        """Every searchsvc collection in Qdrant. An unreachable cluster does not stop the server: its collections
        are looked up again when first asked for (`get`)."""
        if not self._uses_qdrant:
            return  # nothing was ever stored in Qdrant from here
        try:
            with self._qdrant_calls, qdrant_errors("listing collections"):
                names = [c.name for c in self._qdrant().get_collections().collections]
        except Exception as exc:
            log.error("Qdrant collections not opened at start (looked up at first use): %s", exc)
            return
        for name in sorted(names):
            self._open_qdrant_or_fail(name)

    def _open_qdrant_or_fail(self, name: str) -> "QdrantCollection | None":
        """The searchsvc collection `name` in Qdrant (None: not there, or not one of ours)."""
        from searchsvc.storage.qdrant.collection import QdrantCollection

        try:
            with self._qdrant_calls, qdrant_errors(f"opening collection {name!r}"):
                client = self._qdrant()
                if not client.collection_exists(name):
                    return None
                config = QdrantCollection.stored_config(client, name)
            if config is None:
                return None  # a Qdrant collection that searchsvc did not create
            if (self.root / name / "collection.json").exists():
                raise FailedPrecondition(f"an embedded collection of the same name exists in {self.root}")
            collection = self._qdrant_collection(name, config)
            collection.check_dimension()
            if collection.finish_interrupted_write():
                log.warning("collection %s: this server's previous run died in the middle of a write; re-send what "
                            "was not acknowledged", name)
            self._collections[name] = collection
            self._failed.pop(name, None)
            return collection
        except Unavailable:
            raise
        except Exception as exc:
            log.error("Qdrant collection %s could not be opened: %s", name, exc)
            self._failed[name] = f"could not be opened: {exc}"
            return None

    def _open_or_fail(self, path: Path) -> Collection | None:
        """Open a collection; on failure remember why (logged once, with the cause) and return None."""
        try:
            collection = self._open(path)
        except Exception as exc:
            reason = f"could not be opened: {exc}"
            log.error("collection %s %s", path.name, reason, exc_info=not isinstance(exc, (OSError, WalCorrupt)))
            self._failed[path.name] = reason
            return None
        self._failed.pop(path.name, None)
        self._collections[path.name] = collection
        return collection

    def open_all(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self._recover_reembeds()
        for staging in self.root.glob(".restore-*"):  # a restore that a crash interrupted: never opened
            shutil.rmtree(staging, ignore_errors=True)
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and (path / "collection.json").exists():
                self._open_or_fail(path)
        self._open_qdrant_collections()
        log.info(
            "opened %d collection(s) from %s in %.2f s%s", len(self._collections), self.root, time.perf_counter() - started,
            f"; {len(self._failed)} failed: {', '.join(sorted(self._failed))}" if self._failed else "",
        )

    def create(self, name: str, config: CollectionConfig) -> Collection:
        validate_collection_name(name)
        config = self.with_defaults(config)
        validate_config_values(config)
        with self._lock:
            path = self.root / name
            if name in self._collections or path.exists() or name in self._restoring:
                raise AlreadyExists(f"collection {name!r} already exists")
            self._check_not_an_alias(name, embedded=config.backend != "qdrant")
            try:
                self._embedder(config)
            except Exception as exc:
                raise InvalidArgument("config.embedding_model", f"cannot load {config.embedding_model!r}: {exc}") from exc
            if config.reranker_model:
                try:
                    self.models.cross_encoder(config.reranker_model)
                except Exception as exc:
                    raise InvalidArgument("config.reranker_model", f"cannot load {config.reranker_model!r}: {exc}") from exc
            if config.backend != "qdrant" and self._uses_qdrant:
                try:
                    with self._qdrant_calls, qdrant_errors(f"creating collection {name!r}"):
                        if self._qdrant().collection_exists(name):  # not looked up yet: one name, one collection
                            raise AlreadyExists(f"collection {name!r} already exists in Qdrant")
                except Unavailable as exc:  # a local collection does not wait for the cluster; a clash shows at start
                    log.warning("collection %s created without checking Qdrant for the name: %s", name, exc)
            if config.backend == "qdrant":
                with self._qdrant_calls, qdrant_errors(f"creating collection {name!r}"):
                    if self._qdrant().collection_exists(name):
                        raise AlreadyExists(f"collection {name!r} already exists in Qdrant")
                collection = self._collections[name] = self._qdrant_collection(name, config, create=True)
                log.info("created collection %s in Qdrant", name)
                return collection
            try:
                Collection.write_config(path, config)
                collection = self._collections[name] = self._open(path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)  # a full disk must not leave a half-made name behind
                raise
            log.info("created collection %s", name)
            return collection

    def loaded(self, name: str) -> Collection | None:
        """The open collection `name` (or that alias `name` names), or None (then `get` says why, or finds it in
        Qdrant). Never blocks."""
        return self._collections.get(self.aliases.resolve_local(name))

    def get(self, name: str) -> Collection:
        """The collection `name`, or the one alias `name` names."""
        validate_collection_name(name, "collection")
        name = self.aliases.resolve(name)
        collection = self._collections.get(name)
        if collection is None and name not in self._failed and self._uses_qdrant:
            # Created through another server on the same cluster, or not reachable at start.
            with self._lock:
                collection = self._collections.get(name) or self._open_qdrant_or_fail(name)
        if collection is None:
            if name in self._failed:
                raise FailedPrecondition(f"collection {name!r} {self._failed[name]}")
            raise NotFound(f"collection {name!r} not found")
        return collection

    def list(self, *, refresh: bool = False) -> list[Collection]:
        """`refresh`: first match the Qdrant collections to the cluster's (created or deleted through another
        server on it); an unreachable cluster leaves them as they were."""
        if refresh and self._uses_qdrant:
            self._sync_qdrant()
        return [self._collections[n] for n in sorted(self._collections)]

    def _sync_qdrant(self) -> None:
        with self._lock:  # a collection created meanwhile is in the listing below, not dropped for missing from it
            try:
                with self._qdrant_calls, qdrant_errors("listing collections"):
                    names = {c.name for c in self._qdrant().get_collections().collections}
                for name, collection in list(self._collections.items()):
                    if _in_qdrant(collection) and name not in names:
                        del self._collections[name]  # deleted through another server
                for name in sorted(names - self._collections.keys() - self._failed.keys()):
                    self._open_qdrant_or_fail(name)
            except Unavailable as exc:
                log.warning("Qdrant collections not refreshed: %s", exc)

    def failed(self) -> dict[str, str]:
        """Collections that could not be opened, and why."""
        return dict(self._failed)

    def failure(self, name: str) -> str:
        """Why `name` could not be opened; "" if it is open. NOT_FOUND if it does not exist at all."""
        validate_collection_name(name, "name")
        name = self.aliases.resolve(name)
        if name in self._failed:
            return self._failed[name]
        self.get(name)
        return ""

    def reopen(self, name: str) -> Collection:
        """Close a collection (no checkpoint: its storage may be faulty) and open it again from disk: clears a
        read-only state after a storage fault, or retries one that failed to open (e.g. after `searchsvc repair`).
        FAILED_PRECONDITION if it still cannot be opened."""
        validate_collection_name(name, "name")
        name = self.aliases.resolve(name)
        with self._lock:
            collection = self._collections.pop(name, None)
            if collection is None and name not in self._failed:
                raise NotFound(f"collection {name!r} not found")
            if _in_qdrant(collection):  # holds nothing to reload
                self._collections[name] = collection
                return collection
            if collection is None and not (self.root / name).exists() and self._uses_qdrant:
                # One that failed to open from Qdrant (a changed Qdrant collection, refused credentials): look again.
                self._failed.pop(name, None)
                reopened = self._open_qdrant_or_fail(name)
                if reopened is None:
                    raise FailedPrecondition(f"collection {name!r} {self._failed[name]}") if name in self._failed else \
                        NotFound(f"collection {name!r} not found")
                log.info("reopened collection %s from Qdrant", name)
                return reopened
            if collection is not None:
                collection.close(checkpoint=False, reason="is being reopened")
            reopened = self._open_or_fail(self.root / name)
            if reopened is None:
                raise FailedPrecondition(f"collection {name!r} {self._failed[name]}")
            log.info("reopened collection %s", name)
            return reopened

    def delete(self, name: str) -> None:
        """FAILED_PRECONDITION for an alias's name, and for a collection an alias points to."""
        validate_collection_name(name)
        # An embedded collection's name is no alias, and its aliases are all in the file: no call to Qdrant.
        embedded = (name in self._collections and not _in_qdrant(self._collections[name])) or (self.root / name).exists()
        if target := self.aliases.target(name, local_only=embedded):
            raise FailedPrecondition(f"{name!r} is an alias of collection {target!r}: delete the alias (UpdateAliases), "
                                     "or the collection by its own name")
        with self._lock:
            if aliases := self.aliases.of(name, local_only=embedded):
                raise FailedPrecondition(f"collection {name!r} is named by alias(es) {', '.join(aliases)}: delete or "
                                         "re-point them first (UpdateAliases)")
            collection = self._collections.pop(name, None)
            if collection is None and self._failed.pop(name, None) is None:
                raise NotFound(f"collection {name!r} not found")
            in_qdrant_only = collection is None and not (self.root / name).exists() and self._uses_qdrant
            if _in_qdrant(collection) or in_qdrant_only:  # (one that failed to open from Qdrant: delete it there)
                with self._qdrant_calls, qdrant_errors(f"deleting collection {name!r}"):
                    self._qdrant().delete_collection(name)
                log.info("deleted collection %s from Qdrant", name)
            else:
                if collection is not None:
                    collection.close(checkpoint=False)
                remove_tree_atomic(self.root / name)
                log.info("deleted collection %s", name)
        self.release_unused_models()

    def release_unused_models(self) -> None:
        """Drop the models no open collection uses (a deleted or re-embedded collection's), after the registry's
        grace (a collection made again soon would reload them)."""
        self.models.release_unused(self.models_in_use)

    def models_in_use(self) -> set[str]:
        with self._lock:
            configs = [c.config for c in self._collections.values()]
        return {m for c in configs for m in (c.embedding_model, c.reranker_model) if m}

    def open_embedded(self, name: str) -> Collection:
        """Open one embedded collection of the index dir (for offline tools; raises what opening it raises)."""
        validate_collection_name(name)
        path = self.root / name
        if not (path / "collection.json").exists():
            raise NotFound(f"no collection {name!r} under {self.root}")
        collection = self._collections[name] = self._open(path)
        return collection

    # ------------------------------------------------------------------ aliases (aliases.py)
    def update_aliases(self, actions: list[AliasAction]) -> dict[str, tuple[str, str]]:
        """Apply alias actions atomically. Collections they name are looked up first (one only in Qdrant may
        need a call), then checked again under the lock that creates and deletes collections."""
        for action in actions:
            if action.collection and not self.aliases.target(action.collection):
                try:
                    self.get(action.collection)
                except (NotFound, FailedPrecondition, InvalidArgument):
                    pass  # reported by the update, with the action's field path
        with self._lock:
            return self.aliases.update(actions, lambda n: n in self._collections or n in self._failed,
                                       lambda n: _in_qdrant(self._collections.get(n)))

    # ------------------------------------------------------------------ snapshots (snapshots.py)
    def restore(self, path: Path, manifest: Manifest, name: str) -> Collection:
        """A new embedded collection `name` from the verified snapshot archive at `path`: extracted beside the
        collections as `.restore-<name>` (ignored, and removed at start), then renamed into place and opened."""
        validate_collection_name(name, "collection")
        with self._lock:
            if name in self._collections or name in self._failed or (self.root / name).exists() or name in self._restoring:
                raise AlreadyExists(f"collection {name!r} already exists")
            self._check_not_an_alias(name, embedded=True)  # a restored collection is embedded
            self._restoring.add(name)
        staging = self.root / f".restore-{name}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            extract_snapshot(path, manifest, staging)
            with self._lock:
                os.replace(staging, self.root / name)
                fsync_dir(self.root)
                try:
                    collection = self._collections[name] = self._open(self.root / name)
                except BaseException:
                    remove_tree_atomic(self.root / name)
                    raise
            log.info("restored collection %s from snapshot %s (seq %d, %d documents)", name, manifest.name,
                     manifest.sequence, manifest.document_count)
            return collection
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self._restoring.discard(name)

    # ------------------------------------------------------------------ embedded -> Qdrant
    def move_to_qdrant(self, name: str, target: str = "", *, keep: bool = False, batch: int = 1000) -> "QdrantCollection":
        """Copy the embedded collection `name` into a new Qdrant collection `target` (default: the same name):
        its config (backend "qdrant"), and every chunk with its stored vector (no re-embedding; an SQ8 collection's
        vectors are decoded from their 8-bit codes). Then, unless `keep`, delete the embedded one. For a stopped
        server's index dir (`searchsvc move-to-qdrant`): nothing writes to the source meanwhile."""
        source = self.get(name)
        if _in_qdrant(source):
            raise FailedPrecondition(f"collection {name!r} is already stored in Qdrant")
        target = target or name
        validate_collection_name(target, "target")
        if target == name and keep:
            raise InvalidArgument("target", "keeping the embedded collection needs another name for the Qdrant one")
        if target != name and (target in self._collections or (self.root / target / "collection.json").exists()):
            raise AlreadyExists(f"collection {target!r} already exists")
        with self._qdrant_calls, qdrant_errors(f"creating collection {target!r}"):
            if self._qdrant().collection_exists(target):
                raise AlreadyExists(f"collection {target!r} already exists in Qdrant")
        defaults = CollectionConfig("", "", 0, 0)
        config = dataclasses.replace(source.config, backend="qdrant", dense_index="auto", dense_quantization="none",
                                     hnsw_m=defaults.hnsw_m, hnsw_ef_construction=defaults.hnsw_ef_construction,
                                     hnsw_ef_search=defaults.hnsw_ef_search, hnsw_target_recall=0.0)
        moved = self._qdrant_collection(target, config, create=True)
        try:
            def copy(chunks: list) -> None:
                texts = source.dense.kvstore.document_texts([c.document_id for c in chunks if c.index == 0])
                moved.import_chunks(chunks, source.dense.store.vectors([c.id for c in chunks]), texts)

            pending: list = []
            for chunk in source.dense.stored_chunks():
                pending.append(chunk)
                if len(pending) == batch:
                    copy(pending)
                    pending = []
            if pending:
                copy(pending)
            if (moved.chunk_count, moved.document_count) != (source.chunk_count, source.document_count):
                raise FailedPrecondition(
                    f"copied {moved.chunk_count} chunks of {moved.document_count} documents, but {name!r} holds "
                    f"{source.chunk_count} of {source.document_count}; the embedded collection is kept")
        except BaseException:
            with self._qdrant_calls:  # a half copy must not be found (and served) later
                self._qdrant().delete_collection(target)
            raise
        log.info("copied collection %s into Qdrant as %s: %d chunks", name, target, moved.chunk_count)
        if not keep:
            with self._lock:
                self._collections.pop(name, None)
                source.close(checkpoint=False)
                remove_tree_atomic(self.root / name)
        self._collections[target] = moved
        return moved

    # ------------------------------------------------------------------ re-embed
    def reembed(self, name: str, embedding_model: str) -> Collection:
        """Re-embed every chunk of `name` with `embedding_model` into a new collection version that replaces the
        old one atomically. Searches keep using the old version throughout; writes keep going while the bulk of
        the chunks is embedded and wait only while the late ones are embedded and the new version is written.

        On disk: `.reembed-<name>/` is built beside the live directory and is complete once its CURRENT exists;
        the swap is two renames (live -> `.old-<name>`, staging -> live). `_recover_reembeds` finishes or rolls
        back a swap a crash interrupted, so a restart always finds exactly one complete version.
        """
        if not embedding_model:
            raise InvalidArgument("embedding_model", "must not be empty")
        coll = self.get(name)
        name = coll.name
        if _in_qdrant(coll):
            raise FailedPrecondition(f"collection {name!r} is stored in Qdrant: re-embedding it is not supported yet; "
                                     "create a new collection and index the documents again")
        coll.check_writable()
        coll.check_free_space()  # the new version is a full copy beside the old: refuse rather than fill the disk
        if embedding_model == coll.config.embedding_model:
            raise InvalidArgument("embedding_model", f"is already the model of collection {name!r}")
        if embedding_model == EXTERNAL_MODEL:
            raise InvalidArgument("embedding_model", "cannot re-embed into 'external': send the documents again with vectors")
        try:
            embedder, dimension = self.models.embedder(embedding_model), self.models.dimension(embedding_model)
        except Exception as exc:
            raise InvalidArgument("embedding_model", f"cannot load {embedding_model!r}: {exc}") from exc
        with self._lock:
            if name in self._reembedding:
                raise FailedPrecondition(f"collection {name!r} is already being re-embedded")
            self._reembedding.add(name)
        staging, old = self.root / f".reembed-{name}", self.root / f".old-{name}"
        kvstore = None
        try:
            started = time.perf_counter()
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            kvstore = SqliteKVStore(staging / DOCSTORE_FILE)
            dense = DenseIndex.create(embedder, dimension, DenseIndexSpec.of(coll.config), kvstore)
            _, chunks = coll.chunks()
            done = {}
            batch = 256  # bounded memory per step; the embedder batches inside
            ordered = list(chunks.values())
            for i in range(0, len(ordered), batch):
                part = ordered[i : i + batch]
                vectors = dense.embed_passages([c.indexed_text for c in part])
                done.update({c.id: (c.indexed_text, v) for c, v in zip(part, vectors)})
            config = dataclasses.replace(coll.config, embedding_model=embedding_model, dimension=0)
            # Lock order as in delete/close: the catalog's, then the collection's write lock.
            with self._lock, coll.write_reembedded(staging, config, dense, done):
                os.replace(coll.path, old)
                os.replace(staging, coll.path)
                fsync_dir(self.root)
                coll.retire("was replaced by a re-embed with a new model")
                self._collections[name] = self._open(coll.path)
            shutil.rmtree(old, ignore_errors=True)
            log.info("re-embedded collection %s with %s: %d chunks in %.1f s", name, embedding_model, len(done), time.perf_counter() - started)
            return self._collections[name]
        finally:
            if kvstore is not None:
                kvstore.close()  # already closed once the new version was written
            shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self._reembedding.discard(name)
            self.release_unused_models()  # the old model, or on failure the new one

    def _recover_reembeds(self) -> None:
        """Finish a re-embed swap a crash interrupted (staging complete, live moved away) or discard it."""
        for staging in sorted(self.root.glob(".reembed-*")):
            live = self.root / staging.name.removeprefix(".reembed-")
            if not live.exists() and (staging / "CURRENT").exists():
                os.replace(staging, live)
                log.warning("finished the interrupted re-embed of %s", live.name)
            else:
                shutil.rmtree(staging, ignore_errors=True)
        for old in sorted(self.root.glob(".old-*")):
            live = self.root / old.name.removeprefix(".old-")
            if live.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, live)
                log.warning("rolled back the interrupted re-embed of %s", live.name)
        fsync_dir(self.root)

    def close(self) -> None:
        with self._lock:
            try:
                for collection in self._collections.values():
                    collection.close()
            finally:
                if self._qdrant_client is not None:
                    with self._qdrant_lock:
                        self._qdrant_client.close()  # local mode: releases its directory for the next process
                        self._qdrant_client = None
