"""The storage seam (issue 16): what a collection's storage offers the search pipeline, the answer engine and
ingest.

`base.CollectionStorage` is the interface. `embedded/` implements it on local disk (FAISS + tantivy + SQLite +
a write-ahead log; `embedded.collection.Collection`).
"""

from searchsvc.storage.base import CollectionStorage

__all__ = ["CollectionStorage"]
