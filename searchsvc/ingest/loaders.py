"""Loaders for `searchsvc index`: JSONL (including BEIR corpus.jsonl), CSV/TSV rows, single files and folders.

- A folder is walked recursively and its files picked by extension: text and Markdown are read here; PDF, Office,
  HWP/HWPX, HTML, XLSX and CSV/TSV files are sent as files (Document.content) and read by the server, so every
  client gets the same extraction. A document's id is the file's path relative to the folder.
- A CSV or TSV file given alone is one document per row, its columns mapped by `Columns` (by default `id`, `text`,
  an optional `title`, every other column metadata); its encoding is detected (CP949/EUC-KR included) unless given.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from searchsvc.domain import filters
from searchsvc.domain.types import Document
from searchsvc.ingest.extract import SUFFIXES
from searchsvc.ingest.extract.plain import detect_encoding, heading_title

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
FILE_SUFFIXES = set(SUFFIXES) - TEXT_SUFFIXES  # sent as files, read by the server


@dataclass(frozen=True)
class Columns:
    """How a CSV row maps to a document. `metadata`: None means every column not used otherwise."""

    id: str = "id"
    text: tuple[str, ...] = ("text",)
    title: str = "title"
    metadata: tuple[str, ...] | None = None


@dataclass
class FolderScan:
    """What a folder holds for indexing: the files picked, in order, and what was skipped, by extension."""

    root: Path
    files: list[Path] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def _as_metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in value.items()}


def load_jsonl(path: Path) -> Iterator[Document]:
    """One JSON object per line: `id` or BEIR's `_id`, `text`, optional `title`, `metadata` (values that are not
    strings become JSON strings), `typed_metadata` (filters.to_json: numbers, booleans, string lists,
    {"$timestamp": microseconds}) and `vector` (the document's own embedding), as `searchsvc export` writes."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            doc_id = row.get("id", row.get("_id"))
            if doc_id is None:
                raise ValueError(f"{path}:{line_no}: no 'id' or '_id'")
            metadata = {**_as_metadata(row.get("metadata")), **filters.from_json(row.get("typed_metadata") or {})}
            yield Document(str(doc_id), row.get("text", ""), row.get("title") or "", metadata, row.get("vector"))


def _rows(path: Path, encoding: str, delimiter: str) -> csv.DictReader:
    raw = path.read_bytes()
    return csv.DictReader(io.StringIO(raw.decode(encoding or detect_encoding(raw)), newline=""), delimiter=delimiter)


def load_csv(path: Path, columns: Columns = Columns(), encoding: str = "", delimiter: str = "") -> Iterator[Document]:
    """One document per row: id from `columns.id`, text from `columns.text` (joined by blank lines), title from
    `columns.title` if present, metadata from `columns.metadata` (default: every other column)."""
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    rows = _rows(path, encoding, delimiter)
    header = rows.fieldnames or []
    missing = [c for c in (columns.id, *columns.text) if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)}); "
                         "map them with --id-column and --text-columns")
    used = {columns.id, *columns.text, columns.title}
    keep = [c for c in header if c and c not in used] if columns.metadata is None else list(columns.metadata)
    for row in rows:
        text = "\n\n".join((row.get(c) or "").strip() for c in columns.text if (row.get(c) or "").strip())
        metadata = {c: row[c] for c in keep if row.get(c) not in (None, "")}
        yield Document(row[columns.id] or "", text, (row.get(columns.title) or "").strip(), metadata)


def scan_folder(root: Path) -> FolderScan:
    """Every file below `root` (recursively, hidden ones skipped) whose extension searchsvc reads."""
    scan = FolderScan(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES or suffix in FILE_SUFFIXES:
            scan.files.append(path)
        else:
            scan.skipped[suffix or "(none)"] += 1
    return scan


def load_folder(root: Path, scan: FolderScan | None = None) -> Iterator[Document]:
    for path in (scan or scan_folder(root)).files:
        yield load_file(path, root)


HASH_KEY = "content_sha256"  # metadata of a document indexed from a file: what `index --sync` compares


def file_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def load_file(path: Path, root: Path) -> Document:
    """A text or Markdown file read here (id = relative path, title = its first `# ` heading, else the file's
    stem); any other file sent as it is, for the server to read. Both carry the file's content hash."""
    rel = path.relative_to(root).as_posix()
    raw = path.read_bytes()
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return Document(rel, "", "", {HASH_KEY: file_hash(raw)}, content=raw, filename=rel)
    text = raw.decode(detect_encoding(raw), errors="replace")
    return Document(rel, text, heading_title(text) or path.stem, {"path": rel, "source": rel, HASH_KEY: file_hash(raw)})


def load_documents(path: Path, columns: Columns = Columns(), encoding: str = "") -> Iterator[Document]:
    if path.is_dir():
        corpus = path / "corpus.jsonl"  # a BEIR dataset folder
        return load_jsonl(corpus) if corpus.exists() else load_folder(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return load_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return load_csv(path, columns, encoding)
    if suffix in TEXT_SUFFIXES or suffix in FILE_SUFFIXES:
        return iter([load_file(path, path.parent)])
    raise ValueError(f"unsupported input {path}: expected a folder, .jsonl, .csv, .tsv or a file of "
                     f"{', '.join(sorted(TEXT_SUFFIXES | FILE_SUFFIXES))}")


def count_documents(path: Path, encoding: str = "") -> int | None:
    """How many documents `load_documents(path)` yields, where that is cheap to know (lines, rows, files; the
    file read once without parsing); None otherwise."""
    if path.is_dir():
        corpus = path / "corpus.jsonl"
        if not corpus.exists():
            return len(scan_folder(path).files)
        path = corpus
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if suffix in (".csv", ".tsv"):
        return sum(1 for _ in _rows(path, encoding, "\t" if suffix == ".tsv" else ","))
    if suffix in TEXT_SUFFIXES or suffix in FILE_SUFFIXES:
        return 1
    return None
