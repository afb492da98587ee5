"""Documents sent as files (Document.content) made into documents with text: each file read in the extraction
pool, its units kept (no chunk spans two pages), its chunks tagged with their `page`/`slide`/`sheet`/`row` and
`source`. A file that cannot be read marks its document invalid with the reason, so ingest refuses that one
document by its field path and indexes the rest of the batch."""

from __future__ import annotations

from typing import Sequence

from searchsvc.domain.types import Document
from searchsvc.ingest.extract.base import ExtractionError, ExtractionLimits
from searchsvc.ingest.extract.pool import ExtractionPool

LOCATION_KEYS = ("page", "slide", "sheet", "row", "source")  # set by the server on a file's chunks


class FileReader:
    def __init__(self, workers: int, limits: ExtractionLimits, max_text_bytes: int) -> None:
        self.pool = ExtractionPool(workers, limits)
        self.max_text_bytes = max_text_bytes

    def read(self, docs: Sequence[Document]) -> None:
        """Fill in `text`, `units` and `title` of each file document (in place), all files of the batch read at
        once by the pool's workers; or set `invalid`."""
        pending = []
        for i, doc in enumerate(docs):
            if doc.content is None or doc.invalid:
                continue
            at = f"documents[{i}]"
            if doc.text:
                doc.invalid = (f"{at}.content", "set text or content, not both")
            elif clash := sorted(set(doc.metadata) & set(LOCATION_KEYS)):
                doc.invalid = (f"{at}.metadata", f"{clash} are set by the server from the file")
            else:
                pending.append((i, doc, self.pool.submit(doc.content, doc.filename, doc.content_type)))
        for i, doc, future in pending:
            try:
                extracted = self.pool.result(future)
            except ExtractionError as exc:
                doc.invalid = (f"documents[{i}].content", exc.reason)
                continue
            text = extracted.text
            if len(text.encode()) > self.max_text_bytes:
                doc.invalid = (f"documents[{i}].content", f"{len(text.encode()):,} bytes of text; at most {self.max_text_bytes:,}")
                continue
            doc.text, doc.units = text, extracted.units
            doc.title = doc.title or extracted.title
            doc.metadata = {**doc.metadata, "source": doc.filename or doc.id}
            doc.content = None  # read: the bytes are not kept

    def close(self) -> None:
        self.pool.close()
