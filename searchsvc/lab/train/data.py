"""Training data from a BEIR-layout dataset: a fixed-seed train/validation split of the judged queries, and
(query, positive passage) pairs from the train side only. Validation queries never reach a training step."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from searchsvc.domain.text import split_sentences
from searchsvc.domain.types import indexed_text
from searchsvc.ingest.loaders import load_jsonl
from searchsvc.lab.relevance import load_qrels, load_queries


@dataclass(frozen=True)
class Split:
    train: list[str]  # query ids
    validation: list[str]
    seed: int


def split_queries(qids: list[str], seed: int = 13, validation_fraction: float = 0.2) -> Split:
    """Deterministic for a given id set and seed: sorted, then shuffled by the seed."""
    ordered = sorted(qids)
    random.Random(seed).shuffle(ordered)
    n_val = round(len(ordered) * validation_fraction)
    return Split(train=sorted(ordered[n_val:]), validation=sorted(ordered[:n_val]), seed=seed)


@dataclass
class RetrievalData:
    """A corpus (documents as the service embeds them: title + text), queries and graded qrels."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: Split
    fingerprint: str  # sha256 over the files read, for the manifest
    doc_titles: list[str] = field(default_factory=list)
    doc_bodies: list[str] = field(default_factory=list)

    def pairs(self, qids: list[str]) -> list[tuple[str, str, str]]:
        """(query id, query, positive passage) for every relevant document of each query."""
        text_of = dict(zip(self.doc_ids, self.doc_texts))
        return [
            (qid, self.queries[qid], text_of[d])
            for qid in qids
            for d, grade in sorted(self.qrels[qid].items())
            if grade > 0 and d in text_of
        ]

    def pseudo_pairs(self, kind: str, seed: int = 13) -> list[tuple[str, str, str]]:
        """Label-free (pseudo-query id, pseudo-query, passage) pairs made from the corpus alone, for collections
        without qrels. The pseudo-query id is the document id: the document is its only known positive.

        "title": a document's title is the query and its body the passage (documents without a title fall
        back to "ict"). "ict": inverse cloze task (Lee et al. 2019): one sentence, picked with a fixed seed, is
        the query and the rest of the document the passage (the sentence is removed so matching is not a string
        copy). Documents shorter than two sentences are skipped.
        """
        if kind not in ("title", "ict"):
            raise ValueError(f"unknown pseudo-query kind {kind!r} (title, ict)")
        rng = random.Random(seed)
        pairs = []
        for doc_id, title, body in zip(self.doc_ids, self.doc_titles, self.doc_bodies):
            if kind == "title" and len(title.split()) >= 3 and body.strip():
                pairs.append((doc_id, title, body))
                continue
            sentences = [body[a:b] for a, b in split_sentences(body)]
            if len(sentences) < 2:
                continue
            i = rng.randrange(len(sentences))
            pairs.append((doc_id, sentences[i], " ".join(sentences[:i] + sentences[i + 1 :])))
        return pairs


def load_retrieval_data(dataset: Path, split_name: str = "dev", seed: int = 13, validation_fraction: float = 0.2) -> RetrievalData:
    files = [dataset / "corpus.jsonl", dataset / "queries.jsonl", dataset / "qrels" / f"{split_name}.tsv"]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    qrels = load_qrels(files[2])
    queries = {q: t for q, t in load_queries(files[1]).items() if q in qrels}
    docs = list(load_jsonl(files[0]))
    return RetrievalData(
        name=dataset.resolve().name,
        doc_ids=[d.id for d in docs],
        doc_texts=[indexed_text(d.title, d.text) for d in docs],
        queries=queries,
        qrels={q: qrels[q] for q in queries},
        split=split_queries(list(queries), seed, validation_fraction),
        fingerprint=digest.hexdigest(),
        doc_titles=[d.title for d in docs],
        doc_bodies=[d.text for d in docs],
    )
