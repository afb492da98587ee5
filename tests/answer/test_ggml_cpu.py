"""llama.cpp's CPU kernels chosen at run time: the choice rules on made-up scores, and the real variant libraries'
scores against this CPU's flags (when llama-cpp-python is a GGML_CPU_ALL_VARIANTS build, as the Makefile makes it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from searchsvc.answer.ggml_cpu import CpuVariant, VariantUnavailable, choose
from searchsvc.platform import hardware

AMX = 1 << 11


def _v(name: str, score: int) -> CpuVariant:
    return CpuVariant(name, Path(f"/x/libggml-cpu-{name}.so"), score)


FOUND = [_v("x64", 1), _v("haswell", 63), _v("skylakex", 191), _v("icelake", 1471), _v("sapphirerapids", 1983 | AMX)]


def test_auto_takes_the_best_variant_without_amx():
    assert choose(FOUND).name == "icelake"


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
    best = choose(list(scores.values()))
    assert not best.uses_amx and best.score == max(v.score for v in scores.values() if not v.uses_amx)
