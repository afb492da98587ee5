"""Per-collection languages: the defaults each picks, per-query detection in "auto" collections, a mixed
Korean/English collection through the server, and explicit settings winning over language defaults."""

from __future__ import annotations

import json

import grpc
import pytest

from conftest import SYNC_REFRESH, doc, ids, index, search
from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.types import CollectionConfig
from searchsvc.retrieve.language import detect
from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, E5_MODEL, ModelRegistry
from searchsvc.v1 import searchsvc_pb2 as pb

KOREAN_DOCS = [
    doc("loan", "은행에서 대출을 받으려면 신분증과 소득 증빙 서류가 필요합니다."),
    doc("weather", "내일은 전국이 맑고 낮 기온이 20도까지 오르겠습니다."),
    doc("etf-ko", "상장지수펀드(ETF)는 주식처럼 거래되는 펀드로 수익률이 지수를 따라갑니다."),
]
ENGLISH_DOCS = [
    doc("vaccine", "Vaccines train the immune system to recognise a pathogen."),
    doc("etf-en", "ETF fees compared across brokers: expense ratios and spreads."),
]


@pytest.mark.parametrize(
    "text, language",
    [("B2B e커머스 장점", "ko"), ("지방은행 시중은행 전환", "ko"), ("What is an ETF?", "en"), ("ETF 수익률", "ko"), ("12345", "en")],
)
def test_query_language_is_detected_from_its_script(text, language):
    assert detect(text) == language


def test_each_language_fills_its_defaults_and_explicit_fields_win(tmp_path):
    catalog = Catalog(load_settings(index_dir=tmp_path), ModelRegistry())  # the shipped defaults: language auto
    blank = CollectionConfig("", "", 0, 0)
    auto = catalog.with_defaults(blank)
    assert (auto.language, auto.analyzer, auto.embedding_model) == ("auto", "multilingual", E5_MODEL)
    ko = catalog.with_defaults(CollectionConfig("", "", 0, 0, language="ko"))
    assert (ko.analyzer, ko.embedding_model) == ("korean", E5_MODEL)
    en = catalog.with_defaults(CollectionConfig("", "", 0, 0, language="en"))
    assert (en.analyzer, en.embedding_model) == ("english", DEFAULT_EMBEDDING_MODEL)
    mine = catalog.with_defaults(CollectionConfig("all-MiniLM-L6-v2", "whitespace", 0, 0, language="ko"))
    assert (mine.language, mine.analyzer, mine.embedding_model) == ("ko", "whitespace", "all-MiniLM-L6-v2")


def test_unknown_language_is_rejected_with_its_field(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="klingon", config=pb.CollectionConfig(language="tlh")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "config.language" in err.value.details()
    names = [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]
    assert "klingon" not in names


def _create(stub, name: str, language: str) -> pb.Collection:
    config = pb.CollectionConfig(language=language, refresh_interval_ms=SYNC_REFRESH)
    return stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))


def test_korean_collection_gets_korean_analysis_embedder_and_fusion(stub):
    created = _create(stub, "ko-bank", "ko")
    assert (created.config.language, created.config.analyzer, created.config.embedding_model) == ("ko", "korean", E5_MODEL)
    index(stub, "ko-bank", KOREAN_DOCS)
    # Particles differ from the document's (은행에서/대출을 vs 은행의/대출): morphemes still match.
    for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_HYBRID):
        response = search(stub, "ko-bank", "은행의 대출 서류", mode=mode)
        assert ids(response)[0] == "loan", mode
    # Korean defaults: RRF with weights that follow the query and sum to 2. Both legs rank "loan" first: 2/61.
    response = search(stub, "ko-bank", "은행의 대출 서류")
    assert response.query_language == "ko" and response.fusion == pb.FUSION_RRF
    assert response.hits[0].score == pytest.approx(2 / 61)
    # A request's own weights win; so does its own fusion, which then gets weights 1 (fused score 1.0 in [0, 1]).
    assert search(stub, "ko-bank", "은행의 대출 서류", keyword_weight=2, dense_weight=1).hits[0].score == pytest.approx(3 / 61)
    rsf = search(stub, "ko-bank", "은행의 대출 서류", fusion=pb.FUSION_RELATIVE_SCORE)
    assert rsf.fusion == pb.FUSION_RELATIVE_SCORE and rsf.hits[0].score == pytest.approx(1.0)


def test_mixed_language_auto_collection(stub):
    created = _create(stub, "mixed", "auto")
    assert (created.config.analyzer, created.config.embedding_model) == ("multilingual", E5_MODEL)
    index(stub, "mixed", KOREAN_DOCS + ENGLISH_DOCS)
    english = search(stub, "mixed", "how do vaccines work with the immune system")
    assert ids(english)[0] == "vaccine"
    assert english.query_language == "en" and english.hits[0].score <= 2 / 61  # weights 1
    korean = search(stub, "mixed", "내일 날씨 기온")
    assert ids(korean)[0] == "weather"
    assert korean.query_language == "ko" and korean.hits[0].score == pytest.approx(2 / 61)  # adaptive weights, sum 2
    # A Korean query with an English term reaches documents in both scripts through the keyword leg.
    keyword = search(stub, "mixed", "ETF 수익률", mode=pb.SEARCH_MODE_KEYWORD)
    assert set(ids(keyword)[:2]) == {"etf-ko", "etf-en"}


def test_collections_stored_before_languages_read_as_english(tmp_path):
    settings = load_settings(index_dir=tmp_path, default_language="en")
    catalog = Catalog(settings, ModelRegistry())
    catalog.open_all()
    catalog.create("old", CollectionConfig("", "", 0, 0))
    catalog.close()
    path = tmp_path / "old" / "collection.json"
    stored = json.loads(path.read_text())
    del stored["language"]
    path.write_text(json.dumps(stored))
    again = Catalog(load_settings(index_dir=tmp_path), ModelRegistry())  # server default now "auto"
    again.open_all()
    assert again.get("old").config.language == "en"
    again.close()
