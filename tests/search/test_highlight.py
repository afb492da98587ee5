"""Highlights (issue 18): the query's terms found in each hit by the collection's analyzer, as character ranges
of the surface text (Korean morphemes included), and the best sentence as a snippet."""

from __future__ import annotations

import pytest

from conftest import SYNC_REFRESH, index
from searchsvc.retrieve.analyzers import get_analyzer
from searchsvc.search.highlight import highlight
from searchsvc.v1 import searchsvc_pb2 as pb


@pytest.fixture(params=["en", "ko"])
def language_collection(stub, request):
    name = f"highlight-{request.param}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(language=request.param,
                                                                                            refresh_interval_ms=SYNC_REFRESH)))
    yield name, request.param
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


CASES = {
    # (text, query, the highlighted surfaces in order, the snippet)
    "en": ("Markets were calm. Rising rivers flooded the valley, and the river kept rising.", "flooding rivers",
           ["rivers", "flooded", "river"], "Rising rivers flooded the valley, and the river kept rising."),
    "ko": ("서울은 대한민국의 수도이다. 한강이 서울을 가로질러 흐른다.", "서울 한강",
           ["서울", "한강", "서울"], "한강이 서울을 가로질러 흐른다."),
}


def test_highlights_land_on_the_surface_text(stub, language_collection):
    name, language = language_collection
    text, query, surfaces, snippet = CASES[language]
    index(stub, name, [pb.Document(id="d", text=text)])
    (hit,) = stub.Search(pb.SearchRequest(collection=name, query=query, top_k=1, highlight=True)).hits
    assert [text[s.start : s.end] for s in hit.highlight.spans] == surfaces
    assert hit.highlight.snippet == snippet
    assert text[hit.highlight.snippet_span.start : hit.highlight.snippet_span.end] == snippet
    plain = stub.Search(pb.SearchRequest(collection=name, query=query, top_k=1)).hits[0]
    assert not plain.HasField("highlight")


def test_a_korean_morpheme_marks_only_its_own_characters():
    """먹었던 analyzes to the stem 먹: the span is that character, not the ending."""
    text = "어제 먹었던 김치가 맛있었다."
    found = highlight(text, ["먹", "김치"], get_analyzer("korean").spans)
    assert [text[s:e] for s, e in found.spans] == ["먹", "김치"]
