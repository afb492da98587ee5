"""Split documents into chunks with LlamaIndex's SentenceSplitter, keeping character offsets."""

from __future__ import annotations

from llama_index.core import Document as LIDocument
from llama_index.core.node_parser import SentenceSplitter

from searchsvc.domain.types import Chunk, Document


class Chunker:
    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self.splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)

    def chunk(self, doc: Document) -> list[Chunk]:
        # Chunk ids are `<doc id>#<index>`: re-sending a document produces the same ids, so it replaces.
        source = LIDocument(text=doc.text, id_=doc.id)
        nodes = self.splitter.get_nodes_from_documents([source])
        chunks = []
        for i, node in enumerate(nodes):
            start = node.start_char_idx if node.start_char_idx is not None else -1
            end = node.end_char_idx if node.end_char_idx is not None else -1
            chunks.append(Chunk(f"{doc.id}#{i}", doc.id, i, node.get_content(), doc.title, dict(doc.metadata), start, end))
        return chunks
