"""The rerank stage's mechanics and the `searchsvc index` command, against the session's loopback server."""

import re
import subprocess
import sys

import grpc
import numpy as np
import pytest

from conftest import CORPUS, SYNC_REFRESH, doc, index, search
from searchsvc.retrieve.models import packaged_minilm_path
from searchsvc.v1 import searchsvc_pb2 as pb


@pytest.fixture(scope="module")
def plumbing_cross_encoder(tmp_path_factory):
    """A CrossEncoder on MiniLM with an UNTRAINED head: its scores are arbitrary but fixed once saved.
    Only good for checking that the stage orders, reports and cuts by the model's scores. Never a default.
    Saved with an identity activation, so it predicts raw logits: the stage must still give sigmoid scores."""
    import torch
    from sentence_transformers import CrossEncoder

    path = tmp_path_factory.mktemp("cross-encoder")
    torch.manual_seed(0)  # the new head's initial weights: the same scores in every run
    CrossEncoder(packaged_minilm_path(), num_labels=1, device="cpu", activation_fn=torch.nn.Identity()).save(str(path))
    return str(path)


def test_scores_are_the_sigmoid_of_the_logit_whatever_the_saved_activation(plumbing_cross_encoder, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    from searchsvc.retrieve.models import ModelRegistry
    from searchsvc.search.rerank import CrossEncoderReranker

    pairs = [("capital city", d.text) for d in CORPUS]
    raw = CrossEncoder(plumbing_cross_encoder, device="cpu")
    assert isinstance(raw.activation_fn, torch.nn.Identity), "the fixture must predict raw logits"
    logits = raw.predict(pairs)
    # models_dir: the ONNX export goes under the test's directory, not the user's cache
    reranker = CrossEncoderReranker(ModelRegistry(models_dir=tmp_path).cross_encoder(plumbing_cross_encoder), "plumbing")
    scores = reranker.score("capital city", [t for _, t in pairs])
    assert scores == pytest.approx((1 / (1 + np.exp(-logits))).tolist(), abs=1e-5)


def test_int8_fast_path_keeps_the_order(plumbing_cross_encoder, tmp_path):
    from scipy.stats import spearmanr

    from searchsvc.retrieve.models import ModelRegistry
    from searchsvc.search.rerank import CrossEncoderReranker

    texts = [f"{d.title}\n{d.text}" for d in CORPUS]
    fp32 = CrossEncoderReranker(ModelRegistry(models_dir=tmp_path).cross_encoder(plumbing_cross_encoder), "fp32")
    int8 = CrossEncoderReranker(ModelRegistry(models_dir=tmp_path, rerank_int8=True).cross_encoder(plumbing_cross_encoder), "int8")
    assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in int8.model.modules())
    a, b = fp32.score("capital city", texts), int8.score("capital city", texts)
    assert all(0 <= s <= 1 for s in b) and spearmanr(a, b).statistic > 0.7, (a, b)


KOREAN = [
    doc("bank", "은행에서 대출을 받으려면 신분증과 소득 증빙 서류가 필요합니다.", "은행 대출"),
    doc("seoul-ko", "서울은 대한민국의 수도이며 한강이 도시를 가로지릅니다.", "서울"),
    doc("kimchi", "김치는 배추와 고춧가루로 만드는 한국의 전통 발효 음식입니다.", "김치"),
]


def test_a_reranker_without_korean_vocabulary_is_skipped_and_says_so(stub, plumbing_cross_encoder):
    name = "rerank-korean"
    stub.CreateCollection(pb.CreateCollectionRequest(
        name=name, config=pb.CollectionConfig(reranker_model=plumbing_cross_encoder, refresh_interval_ms=SYNC_REFRESH)))
    try:
        index(stub, name, KOREAN + CORPUS[:1])
        rerank = pb.RerankOptions(enabled=True, candidates=4)
        for query in ("대한민국의 수도는 어디인가요", "capital of Korea"):  # a Korean query; an English one over Korean text
            r = search(stub, name, query, top_k=4, rerank=rerank)
            plain = search(stub, name, query, top_k=4)
            assert not r.rerank.applied and "Korean" in r.rerank.skipped_reason, query
            assert [h.chunk_id for h in r.hits] == [h.chunk_id for h in plain.hits]
        english = search(stub, name, "cats that purr", top_k=1, rerank=pb.RerankOptions(enabled=True, candidates=1))
        assert english.rerank.applied
    finally:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_rerank_orders_by_cross_encoder_scores_and_cutoff_uses_them(stub, plumbing_cross_encoder):
    name = "rerank-plumbing"
    stub.CreateCollection(pb.CreateCollectionRequest(
        name=name, config=pb.CollectionConfig(reranker_model=plumbing_cross_encoder, refresh_interval_ms=SYNC_REFRESH)))
    try:
        index(stub, name, CORPUS)
        r = search(stub, name, "capital city", explain=True, top_k=6, rerank=pb.RerankOptions(enabled=True, candidates=6))
        assert r.rerank.applied and r.rerank.model == plumbing_cross_encoder and r.timings.rerank_ms > 0
        scores = [h.explanation.rerank_score for h in r.hits]
        assert len(scores) == 6 and scores == sorted(scores, reverse=True)
        assert [h.score for h in r.hits] == scores
        assert all(0 <= s <= 1 for s in scores), "single-label cross-encoders end in a sigmoid"
        cutoff = scores[2]
        cut = search(stub, name, "capital city", explain=True, top_k=6, similarity_cutoff=cutoff,
                     rerank=pb.RerankOptions(enabled=True, candidates=6))
        assert [h.chunk_id for h in cut.hits] == [h.chunk_id for h in r.hits if h.explanation.rerank_score >= cutoff]
        assert cut.cutoff_dropped == 6 - len(cut.hits)
        plain = search(stub, name, "capital city", top_k=6)
        assert not plain.rerank.applied and not plain.rerank.skipped_reason
    finally:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_unloadable_reranker_is_rejected_at_create(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCollection(pb.CreateCollectionRequest(name="bad-rr", config=pb.CollectionConfig(reranker_model="/no/such/model")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_index_command_streams_a_folder(server, stub, tmp_path):
    for i in range(7):
        (tmp_path / f"note{i}.md").write_text(f"# Note {i}\n\nThis note is about topic number {i} and nothing else.\n")
    (tmp_path / "empty.txt").write_text("   ")
    done = subprocess.run(
        [sys.executable, "-m", "searchsvc", "index", str(tmp_path), "--collection", "notes", "--target", server.target, "--batch-size", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1, done.stderr  # one file was rejected, and the exit code says so
    assert re.search(r"indexed 7 documents \(7 chunks\) into notes in [\d.]+ s \([\d.]+ docs/s\); 1 rejected", done.stdout)
    assert "  1 × documents[i].text: must not be empty" in done.stdout.splitlines()
    assert "empty.txt" in done.stdout + done.stderr
    assert "8/8" in done.stderr  # the progress bar knew the total (files in the folder)
    got = stub.GetCollection(pb.GetCollectionRequest(name="notes"))
    assert got.document_count == 7
    stub.DeleteCollection(pb.DeleteCollectionRequest(name="notes"))


def test_loaded_cross_encoders_are_bounded_least_recently_used_first(plumbing_cross_encoder, tmp_path):
    import shutil

    from searchsvc.retrieve.models import ModelNotAllowed, ModelRegistry

    copy = str(tmp_path / "copy")
    shutil.copytree(plumbing_cross_encoder, copy)
    registry = ModelRegistry(models_dir=tmp_path / "models", allowed=[plumbing_cross_encoder, str(tmp_path)], max_cross_encoders=1)
    first = registry.cross_encoder(plumbing_cross_encoder)
    assert registry.cross_encoder(plumbing_cross_encoder) is first  # kept while it is the one in use
    registry.cross_encoder(copy)
    assert list(registry._cross_encoders) == [copy]  # the other was dropped, not kept beside it
    with pytest.raises(ModelNotAllowed):
        ModelRegistry(models_dir=tmp_path / "models", allowed=[]).cross_encoder(plumbing_cross_encoder)
