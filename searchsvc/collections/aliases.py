"""Collection aliases (issue 19): second names that every RPC naming a collection accepts, re-pointed atomically
for a zero-downtime reindex (build `docs_v2`, compare, re-point `docs`, delete `docs_v1`).

Stored in one small JSON file under the index dir, replaced whole (written to a temporary file, fsynced, renamed,
directory fsynced) by every update: a reader, or a restart after kill -9, finds the old set or the new one,
never a mix. Lookups read an immutable dict that an update swaps in one assignment, so a search resolving its
collection while another thread re-points the alias gets one collection or the other.

Like Elasticsearch's and Qdrant's, an alias names exactly one collection, never another alias, and no
collection may have an alias's name.

Aliases of Qdrant-backed collections live in Qdrant instead (storage/qdrant/aliases.py, issue 40), so that every
server on the cluster resolves them the same way at once. The two sets share one namespace: an alias name is
taken in both. One UpdateAliases request changes one set only (each set is atomic, the two together are not).
A name that is neither a loaded collection nor a file alias costs one read of Qdrant's aliases per lookup:
that read is what makes a re-point through another server visible at once.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from searchsvc.domain.types import validate_collection_name
from searchsvc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from searchsvc.platform.files import write_json_atomic

MAX_ACTIONS = 100
KINDS = ("create", "delete", "repoint")


@dataclass(frozen=True)
class AliasAction:
    kind: str  # create | delete | repoint
    alias: str
    collection: str = ""  # create, repoint: the collection it names


class StoreAliases(Protocol):
    """Aliases a store keeps itself (Qdrant's collection aliases)."""

    def read(self) -> dict[str, str]: ...

    def write(self, before: dict[str, str], after: dict[str, str]) -> None: ...


EMBEDDED, QDRANT = "embedded", "qdrant"


class Aliases:
    """`store()`: the Qdrant alias set when this server uses Qdrant, else None. `is_loaded(name)`: a collection
    this server knows (its own name never needs an alias lookup, and so never waits for the cluster)."""

    def __init__(self, path: Path, store: Callable[[], StoreAliases | None] = lambda: None,
                 is_loaded: Callable[[str], bool] = lambda name: False) -> None:
        self.path = path
        self._store = store
        self._is_loaded = is_loaded
        self._lock = threading.Lock()  # one update at a time
        self._names: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def resolve_local(self, name: str) -> str:
        """`name` through the file's aliases only: no call to a store (for the event loop)."""
        return self._names.get(name, name)

    def resolve(self, name: str) -> str:
        """The collection `name` names: its alias target, or itself."""
        if name in self._names:
            return self._names[name]
        store = self._store()
        if store is None or self._is_loaded(name):
            return name
        return store.read().get(name, name)

    def target(self, alias: str, local_only: bool = False) -> str | None:
        """The collection `alias` names, or None. `local_only`: the file's aliases only (an embedded collection's
        aliases are all there: an alias is kept where its collection is)."""
        if alias in self._names:
            return self._names[alias]
        store = None if local_only else self._store()
        return store.read().get(alias) if store is not None else None

    def all(self) -> dict[str, str]:
        return {alias: collection for alias, (collection, _) in self.listing().items()}

    def listing(self) -> dict[str, tuple[str, str]]:
        """Every alias: (the collection it names, where the alias is kept: "embedded" or "qdrant")."""
        store = self._store()
        remote = store.read() if store is not None else {}
        both = {a: (c, QDRANT) for a, c in remote.items()} | {a: (c, EMBEDDED) for a, c in self._names.items()}
        return dict(sorted(both.items()))

    def of(self, collection: str, local_only: bool = False) -> list[str]:
        names = self._names if local_only else self.all()
        return sorted(a for a, c in names.items() if c == collection)

    def update(self, actions: Sequence[AliasAction], is_collection: Callable[[str], bool],
               in_store: Callable[[str], bool] = lambda name: False) -> dict[str, tuple[str, str]]:
        """Apply `actions` in order to a copy; store and publish it only if every one holds. The caller holds
        the catalog's lock, so no collection is created or deleted meanwhile (`is_collection`). `in_store(c)`:
        collection `c` is kept in the store, so aliases naming it are the store's; the actions of one request
        must all be on one side."""
        if not 1 <= len(actions) <= MAX_ACTIONS:
            raise InvalidArgument("actions", f"between 1 and {MAX_ACTIONS} actions")
        with self._lock:
            store = self._store()
            remote = store.read() if store is not None else {}
            names = {**remote, **self._names}  # one namespace: every check below sees both sets
            sides = set()
            for i, action in enumerate(actions):
                at = f"actions[{i}].{action.kind}"
                # where the alias is now, and where it would point: one side for the whole request
                for collection in (names.get(action.alias, ""), action.collection):
                    if collection:
                        sides.add(QDRANT if in_store(collection) else EMBEDDED)
                if len(sides) > 1:
                    raise InvalidArgument(at, "aliases of Qdrant-backed and embedded collections change in separate "
                                          "requests, and an alias cannot move from one to the other (each set "
                                          "changes atomically, the two together cannot)")
                _apply(names, action, at, is_collection)
            if sides == {QDRANT} and store is not None:
                after = {a: c for a, c in names.items() if a not in self._names}
                store.write(remote, after)
            else:
                local = {a: c for a, c in names.items() if a not in remote or a in self._names}
                if local != self._names:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(self.path, local)
                    self._names = local
            return self.listing()


def _apply(names: dict[str, str], action: AliasAction, at: str, is_collection: Callable[[str], bool]) -> None:
    if action.kind not in KINDS:
        raise InvalidArgument(at, "an action must set create, delete or repoint")
    alias_field = at if action.kind == "delete" else f"{at}.alias"
    validate_collection_name(action.alias, alias_field)
    if action.kind == "delete":
        if names.pop(action.alias, None) is None:
            raise NotFound(f"{at}: no alias {action.alias!r}")
        return
    validate_collection_name(action.collection, f"{at}.collection")
    if action.kind == "create":
        if action.alias in names:
            raise AlreadyExists(f"{at}: alias {action.alias!r} already exists (points to {names[action.alias]!r}); use repoint")
        if is_collection(action.alias):
            raise AlreadyExists(f"{at}: a collection is named {action.alias!r}")
    elif action.alias not in names:
        raise NotFound(f"{at}: no alias {action.alias!r} to re-point; use create")
    if action.collection in names:
        raise FailedPrecondition(f"{at}.collection: {action.collection!r} is an alias; an alias names a collection")
    if not is_collection(action.collection):
        raise NotFound(f"{at}.collection: collection {action.collection!r} not found")
    names[action.alias] = action.collection
