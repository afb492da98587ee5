"""Retrieval legs: dense (LlamaIndex VectorStoreIndex over FAISS) and keyword (BM25 via bm25s)."""
