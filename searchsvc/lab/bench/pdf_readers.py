"""Benchmark: the two PDF text readers on Korean pages, pypdfium2 (PDFium, which searchsvc uses) against pypdf.

    .venv/bin/python -m searchsvc.lab.bench.pdf_readers [--pages 200] [--data ../shared/data/autorag-ko]

Writes the first PAGES AutoRAG-ko pages into one PDF, a page each (lab/document_files.py: fpdf2 with Debian's Nanum
Gothic), reads it back page by page with each reader, and prints pages/s, CPU per page and the fidelity of
the text read to the source text (difflib's ratio over the first 20,000 characters, whitespace ignored).
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import time
from pathlib import Path

from searchsvc.lab import document_files

ROOT = Path(__file__).resolve().parents[3]


def _pdfium(data: bytes) -> list[str]:
    import pypdfium2

    pdf = pypdfium2.PdfDocument(data)
    out = []
    for i in range(len(pdf)):
        textpage = pdf[i].get_textpage()
        out.append(textpage.get_text_range())
        textpage.close()
    return out


def _pypdf(data: bytes) -> list[str]:
    import pypdf

    return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "autorag-ko")
    args = parser.parse_args()
    with open(args.data / "corpus.jsonl", encoding="utf-8") as f:
        pages = [t for t in (json.loads(line)["text"] for _, line in zip(range(args.pages), f)) if t.strip()]
    data = document_files.pdf(pages, title="autorag-ko")
    source = "".join("".join(pages).split())[:20_000]
    for name, read in (("pypdfium2", _pdfium), ("pypdf", _pypdf)):
        read(data)  # warm-up: imports, caches
        cpu, wall = time.process_time(), time.perf_counter()
        got = read(data)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        fidelity = difflib.SequenceMatcher(None, "".join("".join(got).split())[:20_000], source, autojunk=False).ratio()
        print(f"{name:10} {len(got)} PDF pages  {len(got) / wall:7.0f} pages/s  {cpu / len(got) * 1000:5.2f} ms CPU/page  "
              f"fidelity {fidelity:.4f}")


if __name__ == "__main__":
    main()
