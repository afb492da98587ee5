"""The rerank stage's mechanics and the `searchsvc index` command, against the session's loopback server."""

import subprocess
import sys

import grpc
import pytest

from conftest import CORPUS, SYNC_REFRESH, index, search
from searchsvc.models import packaged_minilm_path
from searchsvc.v1 import searchsvc_pb2 as pb


@pytest.fixture(scope="module")
def plumbing_cross_encoder(tmp_path_factory):
    """A CrossEncoder on MiniLM with an UNTRAINED head: its scores are arbitrary but fixed once saved.
    Only good for checking that the stage orders, reports and cuts by the model's scores. Never a default."""
    from sentence_transformers import CrossEncoder

    path = tmp_path_factory.mktemp("cross-encoder")
    CrossEncoder(packaged_minilm_path(), num_labels=1, device="cpu").save(str(path))
    return str(path)


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
    assert "indexed 7 documents, 1 rejected" in done.stdout
    assert "empty.txt" in done.stdout + done.stderr
    got = stub.GetCollection(pb.GetCollectionRequest(name="notes"))
    assert got.document_count == 7
    stub.DeleteCollection(pb.DeleteCollectionRequest(name="notes"))
