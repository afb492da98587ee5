"""`searchsvc train-reranker`: a cross-encoder distilled from the collection's own retrieval, with
held-back validation queries measured before (the teacher's ranking) and after (reranked).

Why distillation: no cross-encoder weights install offline, and a MiniLM with a new head trained on a few
thousand hard-labelled pairs reranks SciFact at nDCG@10 0.23-0.36 (issue 4). Here every training pair carries a
graded target instead of a bare 0/1:
- Teacher: convex fusion of the (fine-tuned) bi-encoder's cosine and BM25, each min-max normalised over the
  query's candidates (relative-score fusion). For a train query the judged relevant documents are set to the
  top score: the labels correct the teacher where they exist.
- Student: a CrossEncoder initialised from the bi-encoder's own weights (a new one-logit head), trained with
  MarginMSE (Hofstaetter et al. 2020) on (query, positive, negative_1..n) rows whose targets are teacher scores.
- Queries: the train split of the qrels and/or label-free pseudo-queries made from the corpus (titles, ICT).
- Calibration: MarginMSE fixes only score differences, so a Platt scaling (a, b) is fitted on train queries'
  candidates (judged relevant = 1, other = 0) and folded into the head (W' = aW, c' = ac + b). The saved model's
  default activation (sigmoid) then gives a probability-like score in [0, 1] on every collection, which is
  what `similarity_cutoff` compares against.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from searchsvc.lab.relevance import ndcg_at_k, paired_bootstrap
from searchsvc.lab.train.data import RetrievalData
from searchsvc.lab.train.embedder import encode, write_manifest
from searchsvc.retrieve.models import resolve_model_path
from searchsvc.search.fuse import fuse_relative_score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankerRecipe:
    epochs: int = 1
    batch_size: int = 8  # rows; each row is 1 + negatives pairs
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    candidates: int = 20  # teacher's top-k: where negatives come from, and what validation reranks
    negatives: int = 3
    teacher_dense_weight: float = 0.6  # convex fusion weight of the normalised cosine (the rest: BM25)
    negative_ceiling: float = 0.8  # other candidates' targets are teacher score x this: a judgement outranks the teacher
    target_scale: float = 10.0  # targets in logit units: [0, 1] margins would ask for near-equal logits
    max_length: int = 192  # query + passage tokens; longer passages are truncated
    use_qrels: bool = True
    pseudo_queries: str = ""  # "title", "ict" or both ("title,ict")
    max_pseudo_queries: int = 2000  # per kind: a random sample (seeded) of the corpus' pseudo-queries
    seed: int = 13


@dataclass
class RerankerReport:
    base_model: str
    model_dir: str
    recipe: dict
    train_rows: int
    validation_queries: int
    ndcg10_input: float
    ndcg10_reranked: float
    wins: int
    losses: int
    ties: int
    bootstrap: dict
    calibration: dict
    loss_history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


class Teacher:
    """Candidates and graded scores for any query: convex fusion of normalised cosine and BM25."""

    def __init__(self, data: RetrievalData, embedder, dense_weight: float, analyzer: str = "english") -> None:
        from searchsvc.retrieve.analyzers import get_analyzer
        from searchsvc.retrieve.keyword import KeywordIndex

        self.data = data
        self.embedder = embedder
        self.dense_weight = dense_weight
        self.doc_emb = encode(embedder, data.doc_texts)
        self.keyword = KeywordIndex(get_analyzer(analyzer))
        self.keyword.add(list(data.doc_ids), list(data.doc_texts))
        self.keyword.refresh()
        self.index_of = {d: i for i, d in enumerate(data.doc_ids)}

    def rank(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Per query: the top-k (doc id, teacher score in [0, 1]) from the union of each leg's top 100."""
        query_emb = encode(self.embedder, queries)
        out = []
        for q, qv in zip(queries, query_emb):
            cos = self.doc_emb @ qv
            dense_top = np.argsort(-cos)[:100]
            bm25 = {s.chunk_id: s.score for s in self.keyword.search(q, 100)}
            pool = set(bm25) | {self.data.doc_ids[i] for i in dense_top}
            legs = {"dense": {d: float(cos[self.index_of[d]]) for d in pool}, "keyword": bm25}
            out.append(fuse_relative_score(legs, {"dense": self.dense_weight, "keyword": 1 - self.dense_weight})[:k])
        return out


def training_rows(
    queries: list[tuple[str, str, set[str]]],
    ranked: list[list[tuple[str, float]]],
    data: RetrievalData,
    recipe: RerankerRecipe,
    positive_text: dict[str, str] | None = None,
) -> list[dict]:
    """One row per (query, known positive): the positive and `negatives` candidates sampled from the teacher's
    top-k. Targets: 1.0 for the known positive, teacher score x `negative_ceiling` for the others (min-max
    normalisation gives the teacher's own top 1.0, which would otherwise tie with the judgement).
    `positive_text`: query id -> the positive's text where it is not the stored document (an inverse-cloze
    query's document without the query sentence, so the pair is not a string match)."""
    rng = np.random.default_rng(recipe.seed)
    text_of = dict(zip(data.doc_ids, data.doc_texts))
    positive_text = positive_text or {}
    rows = []
    for (qid, query, positives), candidates in zip(queries, ranked):
        others = [(d, s) for d, s in candidates if d not in positives]
        if len(others) < recipe.negatives:
            continue
        for p in sorted(positives):
            picks = rng.choice(len(others), size=recipe.negatives, replace=False)
            row = {"query": query, "positive": positive_text.get(qid, text_of[p])}
            labels = [1.0]
            for k, i in enumerate(sorted(picks)):
                d, s = others[int(i)]
                row[f"negative_{k + 1}"] = text_of[d]
                labels.append(s * recipe.negative_ceiling)
            row["label"] = [recipe.target_scale * x for x in labels]
            rows.append(row)
    return rows


def pseudo_queries(data: RetrievalData, recipe: RerankerRecipe) -> tuple[list[tuple[str, str, set[str]]], dict[str, str]]:
    """Label-free training queries, (id, text, {its document}), for each kind in `recipe.pseudo_queries`, and
    the positive text of those whose positive is not the stored document (inverse cloze: the document without
    the query sentence)."""
    queries, positive_text = [], {}
    for kind in filter(None, recipe.pseudo_queries.split(",")):
        pairs = data.pseudo_pairs(kind, recipe.seed)
        rng = np.random.default_rng(recipe.seed)
        for i in sorted(rng.choice(len(pairs), size=min(recipe.max_pseudo_queries, len(pairs)), replace=False)):
            doc_id, query, passage = pairs[i]
            qid = f"{kind}:{doc_id}"
            queries.append((qid, query, {doc_id}))
            if kind == "ict":
                positive_text[qid] = passage
    return queries, positive_text


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) such that sigmoid(a * logit + b) estimates P(relevant): Platt (1999) scaling with his smoothed
    targets ((n+ + 1) / (n+ + 2) and 1 / (n- + 2)), which keep the fit finite when the scores separate
    perfectly. Newton's method with step halving on standardised logits (plain Newton diverged on our
    MarginMSE students, whose logits span hundreds); written here because it is a 2-parameter fit."""
    x = logits.astype(float)
    mu, sigma = float(x.mean()), float(x.std()) or 1.0
    z = (x - mu) / sigma
    n_pos = float((labels > 0).sum())
    y = np.where(labels > 0, (n_pos + 1) / (n_pos + 2), 1 / (len(labels) - n_pos + 2))

    def loss(w: np.ndarray) -> float:
        t = w[0] * z + w[1]
        return float((np.logaddexp(0, t) - y * t).sum())

    w = np.zeros(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(w[0] * z + w[1])))
        grad = np.array([((p - y) * z).sum(), (p - y).sum()])
        h = p * (1 - p)
        hess = np.array([[(h * z * z).sum(), (h * z).sum()], [(h * z).sum(), h.sum()]]) + 1e-9 * np.eye(2)
        step, current = np.linalg.solve(hess, grad), loss(w)
        while loss(w - step) > current and np.abs(step).max() > 1e-12:
            step /= 2
        w = w - step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0] / sigma), float(w[1] - w[0] * mu / sigma)


def rerank_ndcg(model, queries: list[str], ranked: list[list[tuple[str, float]]], qids: list[str], data: RetrievalData):
    """Per-query nDCG@10 of the input ranking and of the cross-encoder's reordering of it."""
    text_of = dict(zip(data.doc_ids, data.doc_texts))
    before, after = [], []
    for qid, query, candidates in zip(qids, queries, ranked):
        ids = [d for d, _ in candidates]
        scores = model.predict([(query, text_of[d]) for d in ids], batch_size=32, show_progress_bar=False)
        order = [ids[i] for i in np.argsort(-np.asarray(scores), kind="stable")]
        before.append(ndcg_at_k(ids, data.qrels[qid]))
        after.append(ndcg_at_k(order, data.qrels[qid]))
    return before, after


def train_reranker(
    data: RetrievalData, base: str, out_root: Path, recipe: RerankerRecipe = RerankerRecipe(), data_licence: str = ""
) -> RerankerReport:
    """`base`: the bi-encoder that is both the teacher's dense leg and the student's initial weights."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    torch.manual_seed(recipe.seed)
    base_path = resolve_model_path(base)
    teacher = Teacher(data, SentenceTransformer(base_path, device="cpu"), recipe.teacher_dense_weight)
    val, train = data.split.validation, data.split.train
    val_ranked = teacher.rank([data.queries[q] for q in val], recipe.candidates)

    queries: list[tuple[str, str, set[str]]] = []
    if recipe.use_qrels:
        queries += [(q, data.queries[q], {d for d, g in data.qrels[q].items() if g > 0}) for q in train]
    pseudo, positive_text = pseudo_queries(data, recipe)
    queries += pseudo
    if not queries:
        raise ValueError("no training queries: use the qrels, pseudo-queries, or both")
    ranked = teacher.rank([q for _, q, _ in queries], recipe.candidates)
    rows = training_rows(queries, ranked, data, recipe, positive_text)
    seconds["teacher"] = time.perf_counter() - clock
    log.info("%d training rows from %d queries", len(rows), len(queries))

    clock = time.perf_counter()
    model = CrossEncoder(base_path, num_labels=1, max_length=recipe.max_length, device="cpu")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    model_dir = out_root / f"reranker-{data.name}-{stamp}"
    steps = recipe.epochs * math.ceil(len(rows) / recipe.batch_size)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out_root / ".trainer-scratch"),
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        warmup_steps=math.ceil(recipe.warmup_ratio * steps),
        seed=recipe.seed,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), loss=MarginMSELoss(model))
    trainer.train()
    seconds["train"] = time.perf_counter() - clock
    losses = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]

    clock = time.perf_counter()
    calibration = calibrate(model, data, queries, ranked, recipe)
    before, after = rerank_ndcg(model, [data.queries[q] for q in val], val_ranked, val, data)
    seconds["calibrate_and_validate"] = time.perf_counter() - clock

    a, b = np.array(before), np.array(after)
    report = RerankerReport(
        base_model=base,
        model_dir=str(model_dir),
        recipe=asdict(recipe),
        train_rows=len(rows),
        validation_queries=len(val),
        ndcg10_input=float(a.mean()),
        ndcg10_reranked=float(b.mean()),
        wins=int((b > a).sum()),
        losses=int((b < a).sum()),
        ties=int((b == a).sum()),
        bootstrap=paired_bootstrap(a, b, seed=recipe.seed),
        calibration=calibration,
        loss_history=losses,
        seconds=seconds,
    )
    model.save_pretrained(str(model_dir))
    write_manifest(
        model_dir, "reranker", stamp, base, data, data_licence, "MarginMSELoss (teacher: convex fusion of cosine and BM25)", recipe, report
    )
    return report


def calibrate(model, data: RetrievalData, queries, ranked, recipe: RerankerRecipe, max_queries: int = 200) -> dict:
    """Fit Platt scaling on train queries with labels (judged = 1, other candidates = 0) and fold it into the
    head, so sigmoid(logit) is a calibrated score. Label-free runs use the pseudo-queries' own document."""
    import torch

    text_of = dict(zip(data.doc_ids, data.doc_texts))
    pairs, labels = [], []
    for (_, query, positives), candidates in list(zip(queries, ranked))[:max_queries]:
        ids = sorted({d for d, _ in candidates} | positives)
        pairs += [(query, text_of[d]) for d in ids]
        labels += [1.0 if d in positives else 0.0 for d in ids]
    logits = np.asarray(model.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False))
    a, b = fit_platt(logits, np.asarray(labels))
    head = model[0].model.classifier
    with torch.no_grad():
        head.weight.mul_(a)
        head.bias.mul_(a).add_(b)
    return {"method": "platt, folded into the head", "a": a, "b": b, "pairs": len(pairs), "positive_share": float(np.mean(labels))}
