"""Keyword analyzers on tricky Korean, English and mixed text; the batch path equals the query path."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from searchsvc.errors import InvalidArgument
from searchsvc.retrieve.analyzers import KoreanAnalyzer, get_analyzer
from searchsvc.retrieve.keyword import KeywordIndex


@pytest.fixture(scope="module")
def korean():
    return get_analyzer("korean")


@pytest.fixture(scope="module")
def multilingual():
    return get_analyzer("multilingual")


def test_particles_attach_to_nouns_but_index_as_the_noun(korean):
    # Whitespace tokens would be three different terms.
    assert korean.analyze("은행은 은행의 은행에서") == ["은행"] * 3
    assert get_analyzer("whitespace").analyze("은행은 은행의 은행에서") == ["은행은", "은행의", "은행에서"]


def test_verb_and_adjective_endings_reduce_to_the_stem(korean):
    assert korean.analyze("먹었던 사과는 맛있었다") == ["먹", "사과", "맛있"]
    assert korean.analyze("사과를 먹는다") == ["사과", "먹"]


def test_numbers_with_units_and_latin_runs(korean):
    terms = korean.analyze("3.5% 금리, 10만원짜리 ETF를 샀습니다")
    assert {"3.5", "금리", "10", "만", "원", "etf", "사"} <= set(terms)
    assert "를" not in terms and "습니다" not in terms
    # kiwi splits B2B into B/SL 2/SN B/SL: the contiguous run is one term again.
    assert korean.analyze("B2B e커머스의 급성장") == ["커머스", "급성장", "b2b", "e"]


def test_urls_and_dates_stay_whole(korean):
    assert korean.analyze("https://example.com 에 접속 2023-01-05") == ["https://example.com", "접속", "2023-01-05"]


def test_compound_joins_add_the_joined_noun():
    assert KoreanAnalyzer(compound_joins=True).analyze("지방은행이 시중은행으로") == ["지방", "은행", "지방은행", "시중", "은행", "시중은행"]


def test_multilingual_routes_each_script(multilingual):
    assert multilingual.analyze("The banks were running ETFs") == get_analyzer("english").analyze("The banks were running ETFs")
    # Latin inside Korean text goes through the English chain: ETFs and ETF meet.
    assert multilingual.analyze("ETFs를 샀다") == ["사", "etf"]
    # Han ideographs and kana: character bigrams.
    assert multilingual.analyze("中國語와 カタカナ") == ["中國", "國語", "カタ", "タカ", "カナ"]


@pytest.mark.parametrize("name", ["korean", "multilingual", "english", "whitespace"])
def test_batch_path_equals_query_path(name):
    texts = ["은행에서 대출을 받았다", "Running banks", "B2B e커머스 3가지 이유", "", "中國語 공부", "ETF 수익률 10%"]
    analyzer = get_analyzer(name)
    assert analyzer.analyze_many(texts) == [analyzer.analyze(t) for t in texts]


def test_concurrent_analysis_gives_the_same_terms(korean):
    texts = [f"{i}번째 지점의 은행에서 대출을 받았습니다" for i in range(200)]
    expected = [korean.analyze(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(korean.analyze_many, [texts] * 4))
        singles = list(pool.map(korean.analyze, texts))
    assert all(b == expected for b in batches) and singles == expected


def test_unknown_analyzer_is_an_invalid_argument():
    with pytest.raises(InvalidArgument) as err:
        get_analyzer("klingon")
    assert err.value.field == "config.analyzer"


def test_korean_bm25_matches_across_particles_where_whitespace_cannot():
    docs = {"loan": "은행의 대출 조건은 다음과 같다", "weather": "오늘은 날씨가 맑다", "bank2": "은행 지점 안내"}
    hits = {}
    for name in ("korean", "whitespace"):
        index = KeywordIndex(get_analyzer(name))
        index.add(list(docs), list(docs.values()))
        index.refresh()
        hits[name] = [s.chunk_id for s in index.search("은행에서 대출을 받으려면", 3)]
    assert hits["korean"][0] == "loan"
    assert hits["whitespace"] == []  # no whitespace token is shared


def test_korean_query_with_english_terms_hits_both_scripts(multilingual):
    docs = {"en": "ETF fees compared across brokers", "ko": "상장지수펀드의 수익률 비교", "other": "주식 거래 시간"}
    index = KeywordIndex(multilingual)
    index.add(list(docs), list(docs.values()))
    index.refresh()
    assert {s.chunk_id for s in index.search("ETF 수익률", 3)} == {"en", "ko"}


def test_multilingual_loads_kiwi_only_for_hangul():
    """kiwi's model is hundreds of MB: a multilingual analyzer that has seen no Korean has not loaded it."""
    from searchsvc.retrieve.analyzers import MultilingualAnalyzer

    analyzer = MultilingualAnalyzer()
    assert analyzer.analyze_many(["Running dogs", "東京タワー"]) and analyzer._korean_analyzer is None
    assert "은행" in analyzer.analyze("은행에서 ETF를")
    assert analyzer._korean_analyzer is not None


def test_a_collection_holding_korean_is_detected_from_a_sample_of_its_chunks():
    import numpy as np

    from searchsvc.domain.types import Chunk
    from searchsvc.retrieve.external import ExternalEmbedding
    from searchsvc.storage.embedded.dense import DenseIndex

    dense = DenseIndex.create(ExternalEmbedding(dimension=2), 2)
    assert not dense.sample_has_hangul()
    dense.add([Chunk("a#0", "a", 0, "plain English", "", {}, 0, 13)], np.array([[1, 0]], np.float32))
    assert not dense.sample_has_hangul()
    dense.add([Chunk("b#0", "b", 0, "금리가 올랐다", "", {}, 0, 7)], np.array([[0, 1]], np.float32))
    assert dense.sample_has_hangul() and not dense.sample_has_hangul(rows=1)  # "a#0" comes first


def test_korean_multi_word_names_index_as_their_words():
    # kiwi's multi-word dictionary (not loaded) would make "자연어 처리" one proper noun, unmatched by "자연어" alone
    terms = KoreanAnalyzer().analyze("자연어 처리 기술과 네이버 쇼핑")
    assert {"자연어", "처리", "네이버", "쇼핑"} <= set(terms) and not any(" " in t for t in terms)
