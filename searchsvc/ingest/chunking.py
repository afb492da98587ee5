"""Split documents into chunks with LlamaIndex's SentenceSplitter, keeping character offsets.

A document read from a file has units (pages, slides, rows): each unit is split on its own, so no chunk spans two
pages, and its chunks carry the unit's location (`page`, `slide`, `sheet`, `row`) as typed metadata. Offsets stay
relative to the document's whole text (its units joined by UNIT_SEPARATOR).
"""

from __future__ import annotations

from llama_index.core import Document as LIDocument
from llama_index.core.node_parser import SentenceSplitter

from searchsvc.domain.types import UNIT_SEPARATOR, Chunk, Document


class Chunker:
    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self.splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)

    def chunk(self, doc: Document) -> list[Chunk]:
        # Chunk ids are `<doc id>#<index>`: re-sending a document produces the same ids, so it replaces.
        parts = [(doc.text, 0, {})] if doc.units is None else self._units(doc)
        chunks: list[Chunk] = []
        for text, offset, location in parts:
            nodes = self.splitter.get_nodes_from_documents([LIDocument(text=text, id_=doc.id)])
            for node in nodes:
                start = node.start_char_idx + offset if node.start_char_idx is not None else -1
                end = node.end_char_idx + offset if node.end_char_idx is not None else -1
                i = len(chunks)
                chunks.append(Chunk(f"{doc.id}#{i}", doc.id, i, node.get_content(), doc.title, {**doc.metadata, **location}, start, end))
        return chunks

    @staticmethod
    def _units(doc: Document) -> list[tuple[str, int, dict]]:
        parts, offset = [], 0
        for unit in doc.units or ():
            if unit.text.strip():
                parts.append((unit.text, offset, unit.location))
            offset += len(unit.text) + len(UNIT_SEPARATOR)
        return parts
