"""Loaders: JSONL (including BEIR corpus.jsonl), CSV, and folders of text/markdown files -> Documents."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from searchsvc.domain import filters
from searchsvc.domain.types import Document

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}


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


def load_csv(path: Path) -> Iterator[Document]:
    """Header row with `id` and `text`, optional `title`; every other column becomes metadata."""
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            doc_id, text = row.pop("id", None), row.pop("text", None)
            if doc_id is None or text is None:
                raise ValueError(f"{path}: CSV needs 'id' and 'text' columns")
            title = row.pop("title", "") or ""
            yield Document(doc_id, text, title, {k: v for k, v in row.items() if k and v is not None})


def load_folder(root: Path) -> Iterator[Document]:
    """Every .txt/.md/.rst file below `root`; id = relative path, title = first markdown heading or file stem."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        yield load_text_file(path, root)


def load_text_file(path: Path, root: Path) -> Document:
    text = path.read_text(encoding="utf-8", errors="replace")
    title = path.stem
    for line in text.splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            break
        if line.strip():
            break
    rel = path.relative_to(root).as_posix()
    return Document(rel, text, title, {"path": rel})


def load_documents(path: Path) -> Iterator[Document]:
    if path.is_dir():
        corpus = path / "corpus.jsonl"  # a BEIR dataset folder
        return load_jsonl(corpus) if corpus.exists() else load_folder(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return load_jsonl(path)
    if suffix == ".csv":
        return load_csv(path)
    if suffix in TEXT_SUFFIXES:
        return iter([load_text_file(path, path.parent)])
    raise ValueError(f"unsupported input {path}: expected a folder, .jsonl, .csv, .txt or .md")


def count_documents(path: Path) -> int | None:
    """How many documents `load_documents(path)` yields, where that is cheap to know (lines, rows, files; the
    file read once without parsing); None otherwise."""
    if path.is_dir():
        corpus = path / "corpus.jsonl"
        if not corpus.exists():
            return sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        path = corpus
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    if suffix in TEXT_SUFFIXES:
        return 1
    return None
