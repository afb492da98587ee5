"""Python clients of a running server: channels with TLS and keys, resumable bulk indexing, a LlamaIndex retriever."""
