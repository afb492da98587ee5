"""The msmarco-kor converter on rows shaped like the source file (the file itself is research-use only and never
committed): BEIR layout, one fixed split into dev and test halves, and the pin on the source's content."""

from __future__ import annotations

import json

import pytest

from searchsvc.lab.data import msmarco_kor
from searchsvc.lab.relevance import load_qrels, load_queries


def test_rows_become_a_beir_dataset_split_in_fixed_halves(tmp_path):
    rows = [{"id": i, "query": f"질문 {i}", "positive": [f"답 {i}"] + ([f"또 다른 답 {i}"] if i % 3 == 0 else [])} for i in range(1, 11)]
    counts = msmarco_kor.write_beir(rows, tmp_path / "a")
    assert counts == {"queries": 10, "passages": 13, "dev": 5, "test": 5}
    dev, test = load_qrels(tmp_path / "a" / "qrels" / "dev.tsv"), load_qrels(tmp_path / "a" / "qrels" / "test.tsv")
    assert not dev.keys() & test.keys() and len(dev) + len(test) == 10
    assert test.get("3", dev.get("3")) == {"p3-0": 1, "p3-1": 1}  # every positive of a query, judged 1
    assert load_queries(tmp_path / "a" / "queries.jsonl")["7"] == "질문 7"
    corpus = [json.loads(line) for line in open(tmp_path / "a" / "corpus.jsonl", encoding="utf-8")]
    assert len(corpus) == 13 and corpus[0] == {"_id": "p1-0", "title": "", "text": "답 1"}
    msmarco_kor.write_beir(rows, tmp_path / "b")  # the same split every time
    assert load_qrels(tmp_path / "b" / "qrels" / "dev.tsv") == dev


def test_a_source_that_is_not_the_pinned_file_is_refused(tmp_path):
    copy = tmp_path / "msmarco_kor.json"
    copy.write_text("[]")
    with pytest.raises(ValueError, match="not the pinned"):
        msmarco_kor.read_source(str(copy))
    assert msmarco_kor.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`
