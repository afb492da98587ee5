"""Rebuild examples/quickstart/ (the README's quick start folder) from examples/quickstart.jsonl: the same ten
texts as a folder of mixed files, so the quick start shows files read by page. Run from the repository root:

    .venv/bin/python examples/build_quickstart.py

Needs the dev extras (fpdf2) and Debian's fonts-nanum. The files are ours (written by this script) and committed.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from searchsvc.lab import document_files as make  # noqa: E402  (the builders the tests use)


def main() -> None:
    docs = {d["id"]: d for d in map(json.loads, (ROOT / "examples" / "quickstart.jsonl").read_text().splitlines())}
    text = lambda key: docs[key]["text"]  # noqa: E731
    out = ROOT / "examples" / "quickstart"
    out.mkdir(exist_ok=True)
    (out / "vaccines.md").write_text(f"# {docs['vaccines']['title']}\n\n{text('vaccines')}\n")
    (out / "antibodies.txt").write_text(f"{text('antibodies')}\n")
    (out / "science-notes.pdf").write_bytes(make.pdf([text("vitamin-d"), text("tides"), text("volcanoes")], title="Science notes"))
    (out / "search-engines.pptx").write_bytes(make.pptx([f"BM25\n{text('bm25')}", f"HNSW graphs\n{text('hnsw')}"]))
    (out / "서울.hwpx").write_bytes(make.hwpx([[text("seoul")], [text("kimchi")]], title="서울"))
    (out / "한글.docx").write_bytes(make.docx([[text("hangul")]], heading="한글"))


if __name__ == "__main__":
    main()
