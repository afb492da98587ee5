"""A Korean dev set large enough to choose defaults: MS MARCO dev, machine-translated (baba9811/msmarco_Kor).

6,980 queries, each with its positive passages (7,279 in all, none shared), translated to Korean with GPT-4o mini.
MS MARCO's terms are research use only, so the data is never committed: this module fetches it (or reads a copy
you fetched) and writes a BEIR-layout dataset to a cache directory, for `searchsvc eval` and the benches.

The corpus is the union of the positives: every passage answers exactly one query, and the others are its
distractors. The queries are split once, by a fixed seed, into `dev` (choose on it) and `test` (check on it), so
that a default chosen here can be checked on questions it was not chosen on.

    searchsvc lab-data msmarco-kor                    # fetch from GitHub, write ~/.cache/searchsvc/datasets/msmarco-kor
    searchsvc lab-data msmarco-kor --source FILE      # a msmarco_kor.json you fetched (e.g. `git clone` of the repo)
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
from pathlib import Path

from searchsvc.platform.files import user_cache_dir

SOURCE_URL = "https://raw.githubusercontent.com/baba9811/msmarco_Kor/46784ba476be734f1d54620a5abf7acb590ff31f/data/msmarco_kor.json"
# The file at that commit: a different file would be a different dataset, with different figures.
SOURCE_SHA256 = "0b87b8936626ac741a36209fd78fa6043a5a151f"  # git blob id, checked below
DEFAULT_DIR = user_cache_dir() / "datasets" / "msmarco-kor"
SPLIT_SEED = 39


def git_blob_id(data: bytes) -> str:
    """The id git gives this content: lets a copy from any clone of the repository be checked against the pin."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_source(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=60) as response:  # noqa: S310 (a pinned https URL)
            data = response.read()
    else:
        data = Path(source).read_bytes()
    if git_blob_id(data) != SOURCE_SHA256:
        raise ValueError(f"{source}: not the pinned msmarco_kor.json (git blob {git_blob_id(data)}, expected {SOURCE_SHA256})")
    return data


def write_beir(rows: list[dict], out: Path, seed: int = SPLIT_SEED) -> dict[str, int]:
    """corpus.jsonl, queries.jsonl, qrels/dev.tsv and qrels/test.tsv (half of the queries each)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    qids = [str(r["id"]) for r in rows]
    shuffled = sorted(qids, key=int)
    random.Random(seed).shuffle(shuffled)
    dev = set(shuffled[: len(shuffled) // 2])
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as corpus, open(out / "queries.jsonl", "w", encoding="utf-8") as queries, \
            open(out / "qrels" / "dev.tsv", "w", encoding="utf-8") as qdev, open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as qtest:
        for f in (qdev, qtest):
            f.write("query-id\tcorpus-id\tscore\n")
        for r in rows:
            qid = str(r["id"])
            queries.write(json.dumps({"_id": qid, "text": r["query"]}, ensure_ascii=False) + "\n")
            for i, passage in enumerate(r["positive"]):
                pid = f"p{qid}-{i}"
                corpus.write(json.dumps({"_id": pid, "title": "", "text": passage}, ensure_ascii=False) + "\n")
                (qdev if qid in dev else qtest).write(f"{qid}\t{pid}\t1\n")
    return {"queries": len(rows), "passages": sum(len(r["positive"]) for r in rows), "dev": len(dev), "test": len(rows) - len(dev)}


def prepare(source: str = SOURCE_URL, out: Path = DEFAULT_DIR) -> Path:
    if (out / "qrels" / "test.tsv").exists():
        return out
    counts = write_beir(json.loads(read_source(source)), out)
    print(f"msmarco-kor: {counts['queries']} queries ({counts['dev']} dev, {counts['test']} test), "
          f"{counts['passages']} passages -> {out}")
    return out
