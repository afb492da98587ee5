"""Collection aliases (issue 19): second names that every RPC naming a collection accepts, re-pointed atomically
for a zero-downtime reindex (build `docs_v2`, compare, re-point `docs`, delete `docs_v1`).

Stored in one small JSON file under the index dir, replaced whole (written to a temporary file, fsynced, renamed,
directory fsynced) by every update: a reader, or a restart after kill -9, finds the old set or the new one,
never a mix. Lookups read an immutable dict that an update swaps in one assignment, so a search resolving its
collection while another thread re-points the alias gets one collection or the other.

Like Elasticsearch's and Qdrant's, an alias names exactly one collection, never another alias, and no
collection may have an alias's name.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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


class Aliases:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one update at a time
        self._names: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def resolve(self, name: str) -> str:
        """The collection `name` names: its alias target, or itself."""
        return self._names.get(name, name)

    def target(self, alias: str) -> str | None:
        return self._names.get(alias)

    def all(self) -> dict[str, str]:
        return dict(sorted(self._names.items()))

    def of(self, collection: str) -> list[str]:
        return sorted(a for a, c in self._names.items() if c == collection)

    def update(self, actions: Sequence[AliasAction], is_collection: Callable[[str], bool]) -> dict[str, str]:
        """Apply `actions` in order to a copy; store and publish it only if every one holds. The caller holds
        the catalog's lock, so no collection is created or deleted meanwhile (`is_collection`)."""
        if not 1 <= len(actions) <= MAX_ACTIONS:
            raise InvalidArgument("actions", f"between 1 and {MAX_ACTIONS} actions")
        with self._lock:
            names = dict(self._names)
            for i, action in enumerate(actions):
                _apply(names, action, f"actions[{i}].{action.kind}", is_collection)
            if names != self._names:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.path, names)
                self._names = names
            return self.all()


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
