"""Aliases of Qdrant-backed collections, kept as Qdrant's own collection aliases (issue 40).

Every server on the cluster reads the same names: an alias created or re-pointed through one server resolves
through all the others at their next lookup, with no file to copy and no restart. A change is one
`update_collection_aliases` request, which Qdrant applies atomically: a re-point is a delete and a create in the
same request, so a search resolving the alias meanwhile gets the old collection or the new one, never neither.

Qdrant has no compare-and-set on aliases. Two servers changing the same alias at once are ordered by Qdrant:
the later request wins, or fails where Qdrant refuses it (an alias created twice, or re-pointed after its delete).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Mapping

from searchsvc.storage.qdrant.errors import qdrant_errors


class QdrantAliases:
    def __init__(self, client: Callable[[], object], calls: AbstractContextManager) -> None:
        self._client = client  # the catalog's client, made at first use
        self._calls = calls  # held around each call (local mode's client is not thread-safe)

    def read(self) -> dict[str, str]:
        """Every alias on the cluster and the collection it names."""
        with self._calls, qdrant_errors("reading aliases"):
            found = self._client().get_aliases().aliases
        return {a.alias_name: a.collection_name for a in found}

    def write(self, before: Mapping[str, str], after: Mapping[str, str]) -> None:
        """Make the cluster's aliases go from `before` to `after` in one atomic request."""
        from qdrant_client import models

        operations: list = []
        for alias, collection in sorted(before.items()):
            if after.get(alias) != collection:
                operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        for alias, collection in sorted(after.items()):
            if before.get(alias) != collection:
                operations.append(models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
        if operations:
            with self._calls, qdrant_errors("changing aliases"):
                self._client().update_collection_aliases(change_aliases_operations=operations)
