"""The collection's keyword leg on tantivy: Lucene BM25 over our analyzers' terms, filters inside the search,
deletes hidden at once, commits that survive a reopen without re-analysing anything, and a collection written
before the index existed getting it built once."""

from __future__ import annotations

import math
import random
import shutil

import pytest

from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.filters import from_pairs
from searchsvc.domain.types import CollectionConfig, Document, SearchMode, SearchParams
from searchsvc.retrieve.analyzers import get_analyzer
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.pipeline import SearchPipeline
from searchsvc.storage.embedded.tantivy_keyword import KeywordChunk, TantivyKeywordIndex


def chunk(cid: str, text: str, **metadata: str) -> KeywordChunk:
    return KeywordChunk(f"{cid}#0", cid, text, metadata)


def english_collection(tmp_path):
    """An English collection "c" whose keyword leg commits before each ack."""
    settings = load_settings(index_dir=tmp_path, default_language="en")
    models = ModelRegistry()
    catalog = Catalog(settings, models)
    catalog.open_all()
    return settings, models, catalog, catalog.create("c", CollectionConfig("", "", 0, 0, refresh_interval_ms=-1))


def lucene_bm25(docs: list[list[str]], query: list[str], k1=1.2, b=0.75) -> list[float]:
    """Lucene's BM25 (what tantivy computes), written out."""
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    df = {t: sum(t in d for d in docs) for t in set(query)}
    scores = []
    for d in docs:
        s = 0.0
        for t in query:
            tf = d.count(t)
            if tf:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * (k1 + 1) * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(s)
    return scores


@pytest.mark.parametrize("query", ["w1 w2", "w17", "w5 w250 w99", "w42 w7 w7"])
def test_scores_are_lucene_bm25_with_collection_wide_statistics(tmp_path, query):
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(300)]
    corpus = [" ".join(rng.choices(vocab, k=rng.randint(5, 40))) for _ in range(80)]  # <= 40 terms: exact lengths
    analyzer = get_analyzer("whitespace")
    index = TantivyKeywordIndex(tmp_path / "kw", analyzer)
    for part in (corpus[:30], corpus[30:60], corpus[60:]):  # three commits: three segments, one set of statistics
        start = corpus.index(part[0])
        index.add([chunk(f"d{start + i}", text) for i, text in enumerate(part)])
        index.commit()
    expected = lucene_bm25([analyzer.analyze(d) for d in corpus], analyzer.analyze(query))
    hits = index.search(query, 10)
    assert hits, "query terms occur in the corpus"
    for h in hits:
        assert h.score == pytest.approx(expected[int(h.chunk_id[1:].split("#")[0])], rel=1e-4)
    assert [h.score for h in hits] == pytest.approx(sorted(expected, reverse=True)[: len(hits)], rel=1e-4)
    index.close()


def test_filters_deletes_and_commits(tmp_path):
    index = TantivyKeywordIndex(tmp_path / "kw", get_analyzer("english"))
    index.add([chunk("a", "apple pie", lang="en"), chunk("b", "apple apple tart", lang="fr"), chunk("c", "banana", lang="en")])
    assert index.search("apple", 10) == [], "visible only after a commit"
    assert index.commit() and not index.commit(), "nothing changed: no second commit"
    assert [h.chunk_id for h in index.search("apple", 10)] == ["b#0", "a#0"]
    unfiltered = {h.chunk_id: h.score for h in index.search("apple", 10)}
    filtered = index.search("apple", 10, from_pairs({"lang": "en"}))
    assert [(h.chunk_id, h.score) for h in filtered] == [("a#0", unfiltered["a#0"])], "a filter adds nothing to the score"
    assert index.search("apple", 10, from_pairs({"lang": "de"})) == []
    index.delete_documents(["b"])  # not committed yet: already hidden
    assert [h.chunk_id for h in index.search("apple", 10)] == ["a#0"]
    index.add([chunk("d", "apple crumble")])
    index.commit()
    assert sorted(h.chunk_id for h in index.search("apple", 10)) == ["a#0", "d#0"]
    index.close()


def test_a_reopened_index_serves_without_analysing_and_knows_its_wal_position(tmp_path, monkeypatch):
    analyzer = get_analyzer("english")
    index = TantivyKeywordIndex(tmp_path / "kw", analyzer)
    index.add([chunk("a", "quantum chromodynamics")])
    index.applied(7)
    index.commit()
    index.add([chunk("b", "quantum electrodynamics")])
    index.applied(8)
    index.close()  # as a crash leaves it: the second add was never committed

    calls = []
    monkeypatch.setattr(type(analyzer), "analyze_many", lambda self, texts: calls.append(texts) or [])
    again = TantivyKeywordIndex(tmp_path / "kw", analyzer)
    assert again.committed_seq == 7 and len(again) == 1
    assert [h.chunk_id for h in again.search("chromodynamics", 5)] == ["a#0"]
    assert calls == [], "opening analyses nothing"
    again.close()


def test_background_commits_make_new_chunks_searchable(tmp_path):
    import time

    index = TantivyKeywordIndex(tmp_path / "kw", get_analyzer("english"), refresh_interval_s=0.05)
    index.start_refresher()
    try:
        index.add([chunk("a", "quantum chromodynamics")])
        deadline = time.monotonic() + 5
        while not index.search("quantum", 5) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [h.chunk_id for h in index.search("quantum", 5)] == ["a#0"]
    finally:
        index.close()


def test_a_collection_from_before_the_keyword_index_builds_it_once(tmp_path, monkeypatch):
    settings, models, catalog, coll = english_collection(tmp_path)
    coll.index_documents([Document("a", "alpha particles"), Document("b", "beta decay")])
    catalog.close()  # a checkpoint
    # The previous on-disk format: a snapshot and a WAL, no keyword index.
    shutil.rmtree(tmp_path / "c" / "keyword")
    (tmp_path / "c" / "keyword.seq").unlink()

    def keyword_ids(catalog) -> list[str]:
        hits = SearchPipeline(models).search(catalog.get("c"), SearchParams("alpha beta", mode=SearchMode.KEYWORD)).hits
        return sorted(h.chunk_id for h in hits)

    migrated = Catalog(settings, models)
    migrated.open_all()
    assert keyword_ids(migrated) == ["a#0", "b#0"]
    migrated.get("c").index_documents([Document("g", "gamma rays")])  # WAL only: replayed at the next open
    migrated.get("c").keyword.close()  # a crash: the last commit stays
    migrated.get("c").wal.close()
    migrated.get("c").dense.kvstore.close()

    calls = []
    english = type(get_analyzer("english"))
    original = english.analyze_many
    monkeypatch.setattr(english, "analyze_many", lambda self, texts: calls.append(len(texts)) or original(self, texts))
    reopened = Catalog(settings, models)
    reopened.open_all()
    assert sum(calls) <= 1, "only the WAL's record after the last keyword commit is analysed, not the collection"
    hits = SearchPipeline(models).search(reopened.get("c"), SearchParams("alpha beta gamma", mode=SearchMode.KEYWORD)).hits
    assert sorted(h.chunk_id for h in hits) == ["a#0", "b#0", "g#0"]
    reopened.close()


def test_a_damaged_keyword_index_is_rebuilt_not_fatal(tmp_path):
    settings, models, catalog, coll = english_collection(tmp_path)
    coll.index_documents([Document("a", "alpha particles"), Document("b", "beta decay")])
    catalog.close()
    (tmp_path / "c" / "keyword" / "meta.json").write_text("{ torn")
    again = Catalog(settings, models)
    again.open_all()
    hits = SearchPipeline(models).search(again.get("c"), SearchParams("alpha beta", mode=SearchMode.KEYWORD)).hits
    assert sorted(h.chunk_id for h in hits) == ["a#0", "b#0"]
    again.close()


class FailingWriter:
    """tantivy's writer, failing its next commit as it does when the disk fills while writing a segment."""

    def __init__(self, writer) -> None:
        self.writer, self.fail_next_commit = writer, True

    def commit(self):
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise ValueError("An IO error occurred: 'No space left on device (os error 28)'")
        return self.writer.commit()

    def __getattr__(self, name):
        return getattr(self.writer, name)


def test_a_failed_keyword_commit_keeps_the_wal_and_the_next_write_replaces_the_writer(tmp_path, monkeypatch):
    from searchsvc.errors import ResourceExhausted
    from searchsvc.storage.embedded.tantivy_keyword import TantivyKeywordIndex

    settings, models, catalog, coll = english_collection(tmp_path)
    coll.index_documents([Document("a", "alpha particles")])
    coll.keyword._writer = FailingWriter(coll.keyword._writer)
    report = coll.index_documents([Document("b", "beta decay")])  # durable in the WAL: acked despite the failure
    assert report.indexed == 1
    assert "keyword index commit failed" in coll.read_only_reason
    # Searches still work: dense sees "b", the keyword leg serves its last commit.
    dense = SearchPipeline(models).search(coll, SearchParams("beta decay", mode=SearchMode.DENSE, top_k=1)).hits
    assert [h.chunk_id for h in dense] == ["b#0"]
    with pytest.raises(ResourceExhausted):
        coll.checkpoint()  # refused: emptying the WAL would lose "b" from the keyword index
    with coll._write_lock:
        coll._try_checkpoint_locked()  # what a size-triggered checkpoint does: it fails and keeps the WAL
    assert coll.wal.size() > 0

    # While the disk stays full, the fresh writer fails too: the write is refused as a full disk.
    reset = TantivyKeywordIndex.reset_writer
    monkeypatch.setattr(TantivyKeywordIndex, "reset_writer", lambda self: (reset(self), setattr(self, "_writer", FailingWriter(self._writer))))
    with pytest.raises(ResourceExhausted, match="disk full"):
        coll.index_documents([Document("c", "gamma rays")])
    monkeypatch.undo()
    coll._keyword_heal_at = 0.0  # rather than wait out the retry interval

    # Space is back: the next write replaces the writer, replays "b" from the WAL, and goes through.
    assert coll.index_documents([Document("c", "gamma rays")]).indexed == 1
    assert not coll.read_only_reason
    hits = SearchPipeline(models).search(coll, SearchParams("alpha beta gamma", mode=SearchMode.KEYWORD)).hits
    assert sorted(h.chunk_id for h in hits) == ["a#0", "b#0", "c#0"]
    coll.checkpoint()
    assert coll.wal.size() == 0
    reopened = catalog.reopen("c")
    hits = SearchPipeline(models).search(reopened, SearchParams("alpha beta gamma", mode=SearchMode.KEYWORD)).hits
    assert sorted(h.chunk_id for h in hits) == ["a#0", "b#0", "c#0"]
    catalog.close()
