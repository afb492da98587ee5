import random

import pytest
from rank_bm25 import BM25Okapi

from searchsvc.retrieve.analyzers import get_analyzer
from searchsvc.retrieve.keyword import KeywordIndex


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(300)]
    return [" ".join(rng.choices(vocab, k=rng.randint(5, 40))) for _ in range(80)]


@pytest.mark.parametrize("query", ["w1 w2", "w17", "w5 w250 w99", "w42 w7 w7"])
def test_bm25_ranking_agrees_with_rank_bm25(corpus, query):
    """bm25s 'robertson' is BM25Okapi without the constant (k1 + 1) factor: same ranking, scores x (k1 + 1)."""
    analyzer = get_analyzer("whitespace")
    ours = KeywordIndex(analyzer, k1=1.5, b=0.75, method="robertson")
    ours.add([f"d{i}" for i in range(len(corpus))], corpus)
    ours.refresh()
    reference = BM25Okapi([analyzer.analyze(d) for d in corpus], k1=1.5, b=0.75)
    ref_scores = reference.get_scores(analyzer.analyze(query))

    hits = ours.search(query, 10)
    assert hits, "query terms occur in the corpus"
    expected_top = sorted(ref_scores, reverse=True)[: len(hits)]
    assert [h.score * 2.5 for h in hits] == pytest.approx(expected_top, rel=1e-4)
    for h in hits:
        assert h.score * 2.5 == pytest.approx(ref_scores[int(h.chunk_id[1:])], rel=1e-4)


def test_english_analyzer_stems_and_drops_stopwords():
    assert get_analyzer("english").analyze("The Running dogs are running to the parks") == ["run", "dog", "run", "park"]


def test_filter_is_a_prefilter_and_deletes_hide_until_refresh():
    index = KeywordIndex(get_analyzer("english"))
    index.add(["a", "b", "c"], ["apple pie", "apple apple tart", "banana"])
    index.refresh()
    assert [h.chunk_id for h in index.search("apple", 10)] == ["b", "a"]
    assert [h.chunk_id for h in index.search("apple", 1, allowed={"a"})] == ["a"]
    assert index.search("apple", 10, allowed={"c"}) == []
    index.remove(["b"])  # not refreshed yet: must already be hidden
    assert [h.chunk_id for h in index.search("apple", 10)] == ["a"]
    index.add(["d"], ["apple crumble"])
    assert "d" not in [h.chunk_id for h in index.search("apple", 10)]  # visible only after refresh
    assert index.refresh()
    assert [h.chunk_id for h in index.search("apple", 10)] == ["a", "d"] or [h.chunk_id for h in index.search("apple", 10)] == ["d", "a"]
    assert not index.refresh()  # nothing changed: no rebuild


def test_background_refresher_makes_new_chunks_searchable():
    import time

    index = KeywordIndex(get_analyzer("english"), refresh_interval_s=0.05)
    index.start_refresher()
    try:
        index.add(["a"], ["quantum chromodynamics"])
        deadline = time.monotonic() + 5
        while not index.search("quantum", 5) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [h.chunk_id for h in index.search("quantum", 5)] == ["a"]
    finally:
        index.stop_refresher()
