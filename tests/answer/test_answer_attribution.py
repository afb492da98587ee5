"""What the server does with what a model writes, end to end through the Answer RPC: a real server on loopback
whose LLM backend is an OpenAI-compatible server double on loopback, scripted to answer with chosen text
(no local model needed, so these run everywhere)."""

from __future__ import annotations

import pytest
from fake_llm_servers import FakeOpenAI

from conftest import CORPUS, SYNC_REFRESH, index, server_settings
from searchsvc.api.server import BackgroundServer
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def llm_server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def stub(tmp_path_factory, llm_server):
    import grpc

    settings = server_settings(
        tmp_path_factory.mktemp("indexes"),
        llm={"backend": "openai_like", "model": "served-model", "base_url": llm_server.url + "/v1", "api_key": "sk-test"},
    )
    with BackgroundServer(settings) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="kb", config=pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)))
        index(stub, "kb", CORPUS)
        yield stub


def answer(stub, llm_server, *pieces: str) -> pb.AnswerResponse:
    llm_server.pieces = pieces
    search = pb.SearchRequest(collection="kb", query="What is the capital of South Korea?", top_k=2)
    return stub.Answer(pb.AnswerRequest(search=search, bypass_cache=True), timeout=60)


def test_an_uncited_supported_sentence_gets_an_inferred_marker(stub, llm_server):
    r = answer(stub, llm_server, "Seoul is the capital", " of South Korea", ", on the Han River.")
    assert r.kind == pb.ANSWER_KIND_GENERATED
    assert r.answer == "Seoul is the capital of South Korea, on the Han River. [1]"
    assert r.context[0].document_id == "seoul"
    [citation] = r.citations
    assert (citation.marker, citation.document_id, citation.inferred) == ("[1]", "seoul", True)
    assert citation.quote == "Seoul is the capital of South Korea, on the Han River."


def test_a_marker_the_model_wrote_is_not_inferred(stub, llm_server):
    r = answer(stub, llm_server, "Seoul is the capital of South Korea [1].")
    assert r.generator.backend == "openai_like"
    assert [(c.document_id, c.inferred) for c in r.citations] == [("seoul", False)]


def test_an_answer_with_no_supported_sentence_is_a_refusal_not_silence(stub, llm_server):
    r = answer(stub, llm_server, "Bananas are purple", " fruit grown on Mars by robots.")
    assert r.kind == pb.ANSWER_KIND_REFUSED
    assert r.answer and "Bananas" not in r.answer
    assert r.guardrails.status == pb.GUARDRAIL_STATUS_BLOCKED
    assert ("output.grounding", "blocked") in {(h.rail, h.action) for h in r.guardrails.hits}
    assert not r.citations


def test_a_list_whose_items_are_all_unsupported_is_a_refusal(stub, llm_server):
    r = answer(stub, llm_server, "1. Bananas are purple fruit grown on Mars.\n", "2. Robots farm the moons of Jupiter.")
    assert r.kind == pb.ANSWER_KIND_REFUSED and "1." not in r.answer


def test_the_model_saying_the_context_lacks_the_answer_is_unanswered(stub, llm_server):
    r = answer(stub, llm_server, "I don't know: the provided documents do not contain the answer.")
    assert r.kind == pb.ANSWER_KIND_UNANSWERED and not r.citations
    assert r.guardrails.status == pb.GUARDRAIL_STATUS_ALLOWED


def test_sentence_selection_sends_the_model_what_bears_on_the_question(tmp_path_factory, llm_server):
    """With a small context budget, `sentences` sends the passage's best sentences, the one that answers the
    question included, in the passage's own order (whole passages would send its head: the answer sits in the
    middle; pack_context's tests cover that)."""
    selection = "sentences"
    import grpc

    filler = [f"The museum's wing number {i} holds pottery, tapestries and coins from many periods." for i in range(24)]
    guide = " ".join(filler[:12] + ["Seoul is the capital of South Korea."] + filler[12:])
    settings = server_settings(
        tmp_path_factory.mktemp("indexes"),
        llm={"backend": "openai_like", "model": "served-model", "base_url": llm_server.url + "/v1", "api_key": "sk-test"},
        answer={"context_selection": selection, "context_tokens": 80},
    )
    with BackgroundServer(settings) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="guide", config=pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH)))
        index(stub, "guide", [pb.Document(id="guide", title="Guide", text=guide)])
        llm_server.pieces = ("Seoul is the capital of South Korea [1].",)
        search = pb.SearchRequest(collection="guide", query="What is the capital of South Korea?", top_k=1)
        r = stub.Answer(pb.AnswerRequest(search=search, bypass_cache=True), timeout=60)
    prompt = llm_server.requests[-1].body["messages"][-1]["content"]
    assert r.timings.context_ms > 0 and r.context[0].document_id == "guide"
    assert "[1] Guide: " in prompt and " … Seoul is the capital of South Korea." in prompt
    assert r.kind == pb.ANSWER_KIND_GENERATED and [c.document_id for c in r.citations] == ["guide"]
    assert prompt.count("The museum's wing") < 8  # within the budget
