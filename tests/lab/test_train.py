"""train-embedder on a tiny BEIR-layout dataset written to disk: a real MiniLM, a real training run (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from searchsvc.lab.relevance import paired_bootstrap
from searchsvc.lab.train.data import load_retrieval_data, split_queries
from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, resolve_model_path

pytest.importorskip("datasets", reason="the train extra is not installed")

ANIMALS = ["cat", "dog", "horse", "goat", "sheep", "rabbit", "parrot", "turtle", "camel", "zebra", "otter", "lynx"]


def write_dataset(root: Path, query=lambda i, animal: f"code xq{i * 37 % 101}v") -> Path:
    """Default queries are made-up product codes no pretrained model can map to their documents: only
    training can."""
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, animal in enumerate(ANIMALS):
            f.write(json.dumps({"_id": f"d{i}", "title": animal.title(), "text": f"The {animal} is an animal people keep."}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i, animal in enumerate(ANIMALS):
            f.write(json.dumps({"_id": f"q{i}", "text": query(i, animal)}) + "\n")
    with open(root / "qrels" / "dev.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(ANIMALS))))
    return root


def test_split_is_deterministic_and_disjoint():
    ids = [f"q{i}" for i in range(100)]
    a, b = split_queries(ids, seed=13), split_queries(list(reversed(ids)), seed=13)
    assert a == b and len(a.validation) == 20 and not set(a.train) & set(a.validation)
    assert split_queries(ids, seed=14).validation != a.validation


def test_paired_bootstrap_sees_a_real_gain_and_no_gain():
    rng = np.random.default_rng(0)
    before = rng.uniform(0, 1, 200)
    assert paired_bootstrap(before, before + 0.05)["p_not_better"] == 0.0
    assert paired_bootstrap(before, before)["p_not_better"] == 1.0


def test_train_embedder_learns_the_pairs_and_writes_a_versioned_model(tmp_path):
    from sentence_transformers import SentenceTransformer

    from searchsvc.lab.train.embedder import MANIFEST, EmbedderRecipe, dense_ndcg, encode, train_embedder

    data = load_retrieval_data(write_dataset(tmp_path / "toy"), validation_fraction=0.25)
    recipe = EmbedderRecipe(epochs=8, batch_size=4, learning_rate=2e-4, mine_from_rank=1, warmup_ratio=0.0)
    report = train_embedder(data, DEFAULT_EMBEDDING_MODEL, tmp_path / "models", recipe, data_licence="CC0 (test)")

    model_dir = Path(report.model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["base_model"] == DEFAULT_EMBEDDING_MODEL and manifest["data"]["licence"] == "CC0 (test)"
    assert manifest["data"]["split"]["validation_queries"] == data.split.validation
    assert report.loss_history[-1]["loss"] < report.loss_history[0]["loss"]
    assert report.train_pairs == len(data.split.train)

    trained = SentenceTransformer(str(model_dir), device="cpu")
    base = SentenceTransformer(resolve_model_path(DEFAULT_EMBEDDING_MODEL), device="cpu")
    # Scored on the training queries: the codes can't generalise, the point is that training moved the model.
    train = data.split.train
    scores = {}
    for label, model in (("base", base), ("trained", trained)):
        scores[label] = np.mean(dense_ndcg(encode(model, data.doc_texts), data.doc_ids, encode(model, [data.queries[q] for q in train]), train, data.qrels))
    assert scores["trained"] > scores["base"] + 0.3, scores



def test_train_reranker_learns_to_match_and_scores_are_calibrated(tmp_path):
    """A MiniLM turned cross-encoder starts with a random head (a random ranking); distilled on 9 queries it must
    rank each held-back query's planted document above the 11 others, with sigmoid scores in [0, 1]."""
    from sentence_transformers.cross_encoder import CrossEncoder

    from searchsvc.lab.train.embedder import MANIFEST
    from searchsvc.lab.train.reranker import RerankerRecipe, train_reranker

    dataset = write_dataset(tmp_path / "toy", query=lambda i, animal: f"where does a {animal} live")
    data = load_retrieval_data(dataset, validation_fraction=0.25)
    recipe = RerankerRecipe(epochs=10, batch_size=3, learning_rate=1e-4, candidates=12, negatives=4, max_length=32, warmup_ratio=0.0)
    report = train_reranker(data, DEFAULT_EMBEDDING_MODEL, tmp_path / "models", recipe, data_licence="CC0 (test)")

    model_dir = Path(report.model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["kind"] == "reranker" and manifest["data"]["licence"] == "CC0 (test)"
    assert report.loss_history[-1]["loss"] < report.loss_history[0]["loss"]
    reranker = CrossEncoder(str(model_dir), device="cpu")  # by path: head and folded calibration included
    text_of = dict(zip(data.doc_ids, data.doc_texts))
    for qid in data.split.validation:
        positive = next(iter(data.qrels[qid]))
        others = [d for d in data.doc_ids if d != positive]
        scores = reranker.predict([(data.queries[qid], text_of[d]) for d in [positive, *others]])
        assert np.all((scores >= 0) & (scores <= 1))
        assert scores[0] > scores[1:].max(), (qid, scores)


def test_platt_fit_matches_the_base_rate_and_stays_finite_when_scores_separate():
    from searchsvc.lab.train.reranker import fit_platt

    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.06).astype(float)
    logits = np.where(labels > 0, rng.normal(300, 80, 4000), rng.normal(100, 80, 4000))  # a MarginMSE student's range
    a, b = fit_platt(logits, labels)
    p = 1 / (1 + np.exp(-(a * logits + b)))
    assert p.mean() == pytest.approx(labels.mean(), abs=0.005)  # calibrated in the large
    assert p[labels > 0].mean() > 0.4 > 0.05 > p[labels == 0].mean()
    a, b = fit_platt(np.where(labels > 0, 5.0, -5.0), labels)
    assert 0 < a < 10 and abs(b) < 10


def test_reranker_rows_from_title_and_inverse_cloze_queries(tmp_path):
    """Both label-free kinds in one run: a title row's positive is the stored document, an inverse-cloze row's is
    the document without the query sentence (otherwise the pair is a string match the model learns nothing from)."""
    from searchsvc.lab.train.reranker import RerankerRecipe, pseudo_queries, training_rows

    root = tmp_path / "sentences"
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, animal in enumerate(ANIMALS):
            body = f"The {animal} sleeps at noon. It eats grass in spring. Farmers count {animal}s at dusk."
            f.write(json.dumps({"_id": f"d{i}", "title": f"Habits of the {animal}", "text": body}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "cat habits"}) + "\n")
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    data = load_retrieval_data(root, validation_fraction=0.0)
    text_of = dict(zip(data.doc_ids, data.doc_texts))

    recipe = RerankerRecipe(negatives=2, pseudo_queries="title,ict")
    queries, positive_text = pseudo_queries(data, recipe)
    ranked = [[(d, 1.0 - 0.05 * j) for j, d in enumerate(data.doc_ids)] for _ in queries]
    rows = training_rows(queries, ranked, data, recipe, positive_text)

    assert len(rows) == 2 * len(ANIMALS)
    by_query = {row["query"]: row for row in rows}
    assert by_query["Habits of the cat"]["positive"] == text_of["d0"]
    ict = [row for row in rows if not row["query"].startswith("Habits")]
    assert all(row["query"] not in row["positive"] and row["positive"] for row in ict)
    assert all(row["label"][0] > max(row["label"][1:]) for row in rows)
