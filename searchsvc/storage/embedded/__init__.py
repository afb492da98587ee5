"""The embedded backend: a collection on local disk. FAISS (dense.py) and tantivy (tantivy_keyword.py) indexes,
chunk text and metadata in SQLite (sqlite_kv.py), a write-ahead log of acked batches (wal.py), checkpoints and
recovery (collection.py)."""
