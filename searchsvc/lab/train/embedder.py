"""`searchsvc train-embedder`: contrastive fine-tuning of a sentence-transformers embedder on a collection's own
judged queries (train split only), measured on held-back validation queries before and after.

Recipe: MultipleNegativesRankingLoss (in-batch negatives + mined hard negatives) through
sentence-transformers' SentenceTransformerTrainer, no duplicate texts within a batch. Hard negatives come from
the base model's own ranking, with two guards against false negatives (unjudged relevant documents, common in
SciFact's sparse qrels): the top `mine_from_rank` ranks are skipped and a candidate must score at least
`relative_margin` below the positive (NV-Retriever's TopK-PercPos). Mining is done here, not with
`sentence_transformers.util.mine_hard_negatives`, because the corpus embeddings computed for the "before"
validation are reused (that function would encode the 5k-document corpus again: ~3 min on this CPU).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from searchsvc.lab.relevance import ndcg_at_k, paired_bootstrap
from searchsvc.lab.train.data import RetrievalData
from searchsvc.retrieve.models import TRAINED_MANIFEST, resolve_model_path

log = logging.getLogger(__name__)

MANIFEST = TRAINED_MANIFEST


@dataclass(frozen=True)
class EmbedderRecipe:
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    negatives: int = 1  # mined hard negatives per (query, positive) pair
    mine_from_rank: int = 3
    mine_to_rank: int = 50
    relative_margin: float = 0.05
    max_seq_length: int = 256
    seed: int = 13
    use_qrels: bool = True  # (train query, judged passage) pairs
    pseudo_queries: str = ""  # "title" / "ict": add label-free pairs made from the corpus (see RetrievalData.pseudo_pairs)


@dataclass
class TrainReport:
    base_model: str
    model_dir: str
    recipe: dict
    train_pairs: int
    validation_queries: int
    ndcg10_before: float
    ndcg10_after: float
    wins: int
    losses: int
    ties: int
    bootstrap: dict
    loss_history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def dense_ndcg(doc_emb: np.ndarray, doc_ids: list[str], query_emb: np.ndarray, qids: list[str], qrels: dict) -> list[float]:
    """Per-query nDCG@10 of exact cosine search (the FAISS flat index the service uses gives the same order)."""
    scores = query_emb @ doc_emb.T
    top = np.argsort(-scores, axis=1)[:, :10]
    return [ndcg_at_k([doc_ids[j] for j in row], qrels[q]) for q, row in zip(qids, top)]


def mine_negatives(
    pairs: list[tuple[str, str, str]],
    query_emb: dict[str, np.ndarray],
    doc_emb: np.ndarray,
    data: RetrievalData,
    recipe: EmbedderRecipe,
    positives: dict[str, set[str]] | None = None,
) -> list[dict[str, str]]:
    """(anchor, positive, negative_1..n) rows. A pair with too few safe candidates is topped up with random
    unjudged documents (every row needs the same columns; an easy negative still teaches something).
    `positives`: document ids never to use as a negative, per query id (default: the query's judged ones)."""
    index_of = {d: i for i, d in enumerate(data.doc_ids)}
    rng = np.random.default_rng(recipe.seed)
    rows = []
    for qid, query, positive in pairs:
        scores = doc_emb @ query_emb[qid]
        relevant = positives[qid] if positives is not None else {d for d, g in data.qrels[qid].items() if g > 0}
        judged = {index_of[d] for d in relevant if d in index_of}
        positive_score = max(scores[i] for i in judged)
        ceiling = positive_score - recipe.relative_margin * abs(positive_score)
        order = np.argsort(-scores)[recipe.mine_from_rank : recipe.mine_to_rank]
        negatives = [int(i) for i in order if int(i) not in judged and scores[i] < ceiling][: recipe.negatives]
        while len(negatives) < recipe.negatives:
            i = int(rng.integers(len(data.doc_ids)))
            if i not in judged and i not in negatives:
                negatives.append(i)
        row = {"anchor": query, "positive": positive}
        row.update({f"negative_{k + 1}": data.doc_texts[i] for k, i in enumerate(negatives)})
        rows.append(row)
    return rows


def train_embedder(data: RetrievalData, base: str, out_root: Path, recipe: EmbedderRecipe = EmbedderRecipe(), data_licence: str = "") -> TrainReport:
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model = SentenceTransformer(resolve_model_path(base), device="cpu")
    model.max_seq_length = recipe.max_seq_length

    val, train = data.split.validation, data.split.train
    doc_emb = encode(model, data.doc_texts)
    query_emb = dict(zip(data.queries, encode(model, list(data.queries.values()))))
    before = dense_ndcg(doc_emb, data.doc_ids, np.stack([query_emb[q] for q in val]), val, data.qrels)
    seconds["encode_and_validate_before"] = time.perf_counter() - clock
    log.info("validation nDCG@10 before: %.4f", np.mean(before))

    clock = time.perf_counter()
    pairs = data.pairs(train) if recipe.use_qrels else []
    positives = {qid: {d for d, g in data.qrels[qid].items() if g > 0} for qid, _, _ in pairs}
    if recipe.pseudo_queries:
        # Pseudo-query ids are "doc:<id>" so they never collide with query ids; their one positive is the document.
        pseudo = [("doc:" + d, q, p) for d, q, p in data.pseudo_pairs(recipe.pseudo_queries, recipe.seed)]
        query_emb.update(zip((qid for qid, _, _ in pseudo), encode(model, [q for _, q, _ in pseudo])))
        positives.update({qid: {qid[4:]} for qid, _, _ in pseudo})
        pairs += pseudo
    if not pairs:
        raise ValueError("no training pairs: use the qrels, pseudo-queries, or both")
    rows = mine_negatives(pairs, query_emb, doc_emb, data, recipe, positives)
    seconds["mine"] = time.perf_counter() - clock
    log.info("%d training rows", len(rows))

    clock = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    model_dir = out_root / f"embedder-{data.name}-{stamp}"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_root / ".trainer-scratch"),
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        warmup_steps=math.ceil(recipe.warmup_ratio * recipe.epochs * math.ceil(len(rows) / recipe.batch_size)),
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate text in a batch would be a false in-batch negative
        seed=recipe.seed,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), loss=MultipleNegativesRankingLoss(model)
    )
    trainer.train()
    seconds["train"] = time.perf_counter() - clock
    losses = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]

    clock = time.perf_counter()
    doc_emb = encode(model, data.doc_texts)
    after = dense_ndcg(doc_emb, data.doc_ids, encode(model, [data.queries[q] for q in val]), val, data.qrels)
    seconds["validate_after"] = time.perf_counter() - clock

    a, b = np.array(before), np.array(after)
    report = TrainReport(
        base_model=base,
        model_dir=str(model_dir),
        recipe=asdict(recipe),
        train_pairs=len(rows),
        validation_queries=len(val),
        ndcg10_before=float(a.mean()),
        ndcg10_after=float(b.mean()),
        wins=int((b > a).sum()),
        losses=int((b < a).sum()),
        ties=int((b == a).sum()),
        bootstrap=paired_bootstrap(a, b, seed=recipe.seed),
        loss_history=losses,
        seconds=seconds,
    )
    model.save(str(model_dir))
    write_manifest(model_dir, "embedder", stamp, base, data, data_licence, "MultipleNegativesRankingLoss", recipe, report)
    return report


def write_manifest(model_dir: Path, kind: str, stamp: str, base: str, data: RetrievalData, data_licence: str, loss: str, recipe, report) -> None:
    """`searchsvc-manifest.json` beside a trained model's weights: what it was made from, how, and how it scored."""
    import torch

    manifest = {
        "kind": kind,
        "created": stamp,
        "base_model": base,
        "data": {
            "dataset": data.name,
            "fingerprint_sha256": data.fingerprint,
            "licence": data_licence or "not given (pass --data-licence)",
            "split": {"seed": data.split.seed, "train_queries": len(data.split.train), "validation_queries": data.split.validation},
        },
        "recipe": {"loss": loss, **asdict(recipe)},
        "labels": ("qrels train split" if recipe.use_qrels else "none (label-free)")
        + (f" + pseudo-queries ({recipe.pseudo_queries})" if recipe.pseudo_queries else ""),
        "metrics": {k: v for k, v in asdict(report).items() if k not in ("recipe", "model_dir", "base_model")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
