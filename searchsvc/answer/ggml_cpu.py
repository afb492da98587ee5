"""Pick llama.cpp's CPU kernels for the CPU at hand, at run time.

The Makefile builds llama-cpp-python with GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS: ggml's CPU backend is then
one shared library per x86 level (`libggml-cpu-haswell.so`, `-skylakex`, `-icelake`, `-zen4`,
`-sapphirerapids`, ...), each reporting a score for this CPU (0 when it needs an instruction the CPU lacks).
llama.cpp would load the highest-scoring one itself, but only from the executable's directory or the working
directory (neither is the package's lib/ under Python), and it would take the AMX variant, whose kernels have
crashed here. So we load it ourselves, before the first model: the best variant without AMX, unless
`llm.cpu_variant` names one (AMX only that way) ("haswell" stands in for a portable AVX2 build on any newer CPU).

A build without those libraries (a static or native build) is left alone: its kernels were fixed at compile time.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PREFIX = "libggml-cpu-"
_AMX_INT8_SCORE_BIT = 1 << 11  # ggml_backend_cpu_x86_score adds it only for variants compiled with AMX_INT8


@dataclass(frozen=True)
class CpuVariant:
    name: str
    path: Path
    score: int  # ggml's own score for this CPU; 0: not runnable here

    @property
    def uses_amx(self) -> bool:
        return bool(self.score & _AMX_INT8_SCORE_BIT)


class VariantUnavailable(RuntimeError):
    pass


_lock = threading.Lock()
_loaded: str | None = None


def lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def variants(directory: Path | None = None) -> list[CpuVariant]:
    """Every CPU variant library in `directory` with its score here (dlopen'ed to ask, then closed, as ggml does)."""
    import _ctypes

    out = []
    for path in sorted((directory or lib_dir()).glob(f"{_PREFIX}*.so")):
        handle = ctypes.CDLL(str(path))
        try:
            score = int(handle.ggml_backend_score()) if hasattr(handle, "ggml_backend_score") else 0
        finally:
            _ctypes.dlclose(handle._handle)
        out.append(CpuVariant(path.name[len(_PREFIX) : -len(".so")], path, score))
    return out


def choose(found: list[CpuVariant], wanted: str = "auto") -> CpuVariant:
    """The named variant, or the best-scoring one without AMX (name "sapphirerapids" to opt in to AMX)."""
    if wanted != "auto":
        match = [v for v in found if v.name == wanted]
        if not match:
            raise VariantUnavailable(f"llm.cpu_variant {wanted!r} is not built; built: {', '.join(v.name for v in found)}")
        if match[0].score == 0:
            raise VariantUnavailable(f"llm.cpu_variant {wanted!r} needs instructions this CPU lacks")
        return match[0]
    runnable = [v for v in found if v.score > 0 and not v.uses_amx]
    if not runnable:
        raise VariantUnavailable(f"no llama.cpp CPU variant runs on this CPU (built: {', '.join(v.name for v in found)})")
    return max(runnable, key=lambda v: v.score)


def load_cpu_backend(wanted: str = "auto") -> str | None:
    """Register the chosen CPU variant with ggml; its name, or None for a build without variants. Idempotent; the
    first call wins (ggml cannot unload the backend a model was loaded on)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            if wanted not in ("auto", _loaded):
                log.warning("llama.cpp CPU variant %s already loaded; %s ignored until restart", _loaded, wanted)
            return _loaded
        found = variants()
        if not found:
            return None
        chosen = choose(found, wanted)
        # ggml as libllama links it: dlsym on libllama's handle searches its dependencies. (Opening lib/libggml.so
        # by path would load a second copy -- the wheel ships libggml.so and libggml.so.0 as separate files --
        # with a registry of its own that llama.cpp never reads.)
        from llama_cpp import llama_cpp as bindings

        ggml = bindings._lib
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        if ggml.ggml_backend_reg_count():  # llama.cpp already loaded its own pick (a model opened elsewhere first)
            raise VariantUnavailable("a ggml backend is already loaded in this process; restart to choose another")
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        if not ggml.ggml_backend_load(str(chosen.path).encode()):
            raise VariantUnavailable(f"ggml could not load {chosen.path}")
        _loaded = chosen.name
        log.info("llama.cpp CPU kernels: %s (score %d; runnable here: %s)", chosen.name, chosen.score,
                 ", ".join(f"{v.name}{' (AMX: only when named)' if v.uses_amx else ''}" for v in found if v.score > 0))
        return chosen.name
