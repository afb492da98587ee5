"""`searchsvc eval` end to end on a tiny BEIR-layout dataset on disk: every mode's row, and HYBRID+RERANK."""

from __future__ import annotations

import json
import subprocess
import sys

from test_train import write_dataset


def test_eval_reports_every_mode_and_the_rerank_row(tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    from searchsvc.retrieve.models import packaged_minilm_path

    dataset = write_dataset(tmp_path / "toy", query=lambda i, animal: f"which animal is the {animal}")
    reranker = tmp_path / "plumbing-ce"  # untrained head: checks the row's plumbing, not its quality
    CrossEncoder(packaged_minilm_path(), num_labels=1, device="cpu", activation_fn=torch.nn.Identity()).save(str(reranker))
    out = tmp_path / "eval.json"
    done = subprocess.run(
        [sys.executable, "-m", "searchsvc", "eval", str(dataset), "--language", "en", "--reranker-model", str(reranker),
         "--rerank-candidates", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) == {"KEYWORD", "DENSE", "HYBRID", "HYBRID-RSF", "HYBRID-DEFAULT", "HYBRID+RERANK"}
    # Each query names its document's animal: BM25 must put it first.
    assert result["KEYWORD"]["metrics"]["ndcg@10"] == 1.0
    assert len(result["HYBRID+RERANK"]["per_query"]) == 12
    assert all(ms > 0 for ms in result["HYBRID+RERANK"]["latency"]["rerank"])
    assert not any(result["HYBRID"]["latency"]["rerank"])
    assert "HYBRID+RERANK vs HYBRID: wins" in done.stdout
    assert "HYBRID-DEFAULT [en, 12 queries]" in done.stdout and "vs best leg KEYWORD" in done.stdout


def _result(per_query, languages):
    return {"per_query": per_query, "languages": languages}


def test_hybrid_against_best_leg_per_query_language():
    from searchsvc.lab.evaluate import hybrid_against_best_leg

    languages = ["ko"] * 40 + ["en"] * 40
    results = {
        # ko: keyword is the better leg and hybrid beats it on every query; en: dense is, and hybrid only ties it
        "KEYWORD": _result([0.5] * 40 + [0.2] * 40, languages),
        "DENSE": _result([0.3] * 40 + [0.6] * 40, languages),
        "HYBRID-DEFAULT": _result([0.6] * 40 + [0.6] * 40, languages),
    }
    en, ko = hybrid_against_best_leg(results)
    assert "[ko, 40 queries]" in ko and "best leg KEYWORD 0.5000" in ko and "+0.1000" in ko and ko.endswith("beats both legs")
    assert "[en, 40 queries]" in en and "best leg DENSE" in en and en.endswith("does not beat both legs")
    assert hybrid_against_best_leg({"KEYWORD": results["KEYWORD"]}) == []
