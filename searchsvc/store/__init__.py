"""Durable storage of a collection: a write-ahead log of acked batches plus atomic snapshots of the indexes."""
