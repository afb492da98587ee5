"""The set of collections under the index dir: create, open at start, look up, delete."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from searchsvc.collection import Collection, validate_config_values
from searchsvc.config import Settings
from searchsvc.errors import AlreadyExists, InvalidArgument, NotFound
from searchsvc.models import ModelRegistry
from searchsvc.store.files import remove_tree_atomic
from searchsvc.types import CollectionConfig, validate_collection_name

log = logging.getLogger(__name__)


class Catalog:
    def __init__(self, settings: Settings, models: ModelRegistry) -> None:
        self.settings = settings
        self.models = models
        self.root = Path(settings.index_dir)
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def with_defaults(self, config: CollectionConfig) -> CollectionConfig:
        s = self.settings
        size = config.chunk_size or s.default_chunk_size
        overlap = config.chunk_overlap if config.chunk_size else s.default_chunk_overlap
        return CollectionConfig(
            embedding_model=config.embedding_model or self.models.default_embedding_model,
            analyzer=config.analyzer or s.default_analyzer,
            chunk_size=size,
            chunk_overlap=overlap,
            reranker_model=config.reranker_model,
            refresh_interval_ms=config.refresh_interval_ms or s.default_refresh_interval_ms,
        )

    def _open(self, path: Path) -> Collection:
        config = Collection.read_config(path)
        return Collection.open(
            path,
            self.models.embedder(config.embedding_model),
            self.models.dimension(config.embedding_model),
            max_document_bytes=self.settings.max_document_bytes,
            checkpoint_wal_bytes=self.settings.checkpoint_wal_bytes,
        )

    def open_all(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and (path / "collection.json").exists():
                self._collections[path.name] = self._open(path)
        log.info("opened %d collection(s) from %s in %.2f s", len(self._collections), self.root, time.perf_counter() - started)

    def create(self, name: str, config: CollectionConfig) -> Collection:
        validate_collection_name(name)
        config = self.with_defaults(config)
        validate_config_values(config)
        with self._lock:
            path = self.root / name
            if name in self._collections or path.exists():
                raise AlreadyExists(f"collection {name!r} already exists")
            try:
                self.models.dimension(config.embedding_model)
            except Exception as exc:
                raise InvalidArgument("config.embedding_model", f"cannot load {config.embedding_model!r}: {exc}") from exc
            if config.reranker_model:
                try:
                    self.models.cross_encoder(config.reranker_model)
                except Exception as exc:
                    raise InvalidArgument("config.reranker_model", f"cannot load {config.reranker_model!r}: {exc}") from exc
            Collection.write_config(path, config)
            collection = self._collections[name] = self._open(path)
            log.info("created collection %s", name)
            return collection

    def get(self, name: str) -> Collection:
        validate_collection_name(name, "collection")
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} not found")
        return collection

    def list(self) -> list[Collection]:
        return [self._collections[n] for n in sorted(self._collections)]

    def delete(self, name: str) -> None:
        validate_collection_name(name)
        with self._lock:
            collection = self._collections.pop(name, None)
            if collection is None:
                raise NotFound(f"collection {name!r} not found")
            collection.close(checkpoint=False)
            remove_tree_atomic(collection.path)
            log.info("deleted collection %s", name)

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                collection.close()
