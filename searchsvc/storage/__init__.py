"""The storage seam (issue 16): what a collection's storage offers the search pipeline and the answer engine.

`base.CollectionStorage` is the interface; `searchsvc.collection.Collection` (FAISS + tantivy + SQLite + WAL on
local disk, the `embedded` backend) implements it.
"""

from searchsvc.storage.base import CollectionStorage

__all__ = ["CollectionStorage"]
