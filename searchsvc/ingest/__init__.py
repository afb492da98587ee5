"""Ingest: loaders (files -> Documents), validation, and chunking (Document -> Chunks)."""
