"""Split documents into chunks with LlamaIndex's SentenceSplitter, keeping character offsets.

A document read from a file has units (pages, slides, rows): each unit is split on its own, so no chunk spans two
pages, and its chunks carry the unit's location (`page`, `slide`, `sheet`, `row`) as typed metadata. Offsets stay
relative to the document's whole text (its units joined by UNIT_SEPARATOR).
"""

from __future__ import annotations

import re

from llama_index.core import Document as LIDocument
from llama_index.core.node_parser import SentenceSplitter

from searchsvc.domain.types import UNIT_SEPARATOR, Chunk, Document


# A lone line break, as a PDF's wrapped lines end: the splitter sees a space there (same length, so offsets hold),
# so the same words chunk the same whether their lines were wrapped or not. Paragraph breaks (\n\n) stay.
_LONE_NEWLINE = re.compile(r"(?<!\n)\n(?!\n)")


class Chunker:
    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self.splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)

    def chunk(self, doc: Document) -> list[Chunk]:
        # Chunk ids are `<doc id>#<index>`: re-sending a document produces the same ids, so it replaces.
        parts = [(doc.text, 0, {})] if doc.units is None else self._units(doc)
        chunks: list[Chunk] = []
        for text, offset, location in parts:
            nodes = self.splitter.get_nodes_from_documents([LIDocument(text=_LONE_NEWLINE.sub(" ", text), id_=doc.id)])
            for node in nodes:
                a, z = node.start_char_idx, node.end_char_idx
                # the chunk as written (its line breaks back), where the splitter could place it in the text
                content = text[a:z] if a is not None and z is not None else node.get_content()
                i = len(chunks)
                chunks.append(Chunk(f"{doc.id}#{i}", doc.id, i, content, doc.title, {**doc.metadata, **location},
                                    a + offset if a is not None else -1, z + offset if z is not None else -1))
        return chunks

    @staticmethod
    def _units(doc: Document) -> list[tuple[str, int, dict]]:
        parts, offset = [], 0
        for unit in doc.units or ():
            if unit.text.strip():
                parts.append((unit.text, offset, unit.location))
            offset += len(unit.text) + len(UNIT_SEPARATOR)
        return parts
