"""Pick llama.cpp's CPU kernels for the CPU at hand, at run time.

The Makefile builds llama-cpp-python with GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS: ggml's CPU backend is then
one shared library per x86 level (`libggml-cpu-haswell.so`, `-skylakex`, `-icelake`, `-zen4`,
`-sapphirerapids`, ...), each reporting a score for this CPU (0 when it needs an instruction the CPU lacks).
llama.cpp would load the highest-scoring one itself, but only from the executable's directory or the working
directory (neither is the package's lib/ under Python). So we load it ourselves, before the first model: the
best-scoring variant, unless `llm.cpu_variant` names one ("haswell" stands in for a portable AVX2 build on any
newer CPU).

The AMX variant (`sapphirerapids`) once died of SIGILL on its first tile instruction on a ggml worker thread; the
Makefile now builds it with the upstream fix (patches/llama-cpp-python/0001-*). Before `auto` trusts it, a probe
runs it in a child process: the model reads a 128-token prompt (the AMX tile kernels) and decodes a token (the
VNNI path) on every worker thread. A probe that crashes, fails or hangs costs the child, not the server: `auto`
then loads the best variant without AMX and logs why.

A build without those libraries (a static or native build) is left alone: its kernels were fixed at compile time.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


Probe = Callable[[CpuVariant], "str | None"]  # None: the variant ran cleanly; else why not


def choose(found: list[CpuVariant], wanted: str = "auto", probe: Probe | None = None) -> CpuVariant:
    """The named variant, or the best-scoring one; an AMX variant only if `probe` passes it, else the best
    without AMX."""
    if wanted != "auto":
        match = [v for v in found if v.name == wanted]
        if not match:
            raise VariantUnavailable(f"llm.cpu_variant {wanted!r} is not built; built: {', '.join(v.name for v in found)}")
        if match[0].score == 0:
            raise VariantUnavailable(f"llm.cpu_variant {wanted!r} needs instructions this CPU lacks")
        return match[0]
    runnable = [v for v in found if v.score > 0]
    amx = [v for v in runnable if v.uses_amx]
    if amx:
        best_amx = max(amx, key=lambda v: v.score)
        failure = probe(best_amx) if probe is not None else "not probed"
        if failure is None:
            log.info("llama.cpp AMX kernels (%s) passed their probe on every worker thread", best_amx.name)
            return best_amx
        log.warning("llama.cpp AMX kernels (%s) not used: %s; using the best variant without AMX", best_amx.name, failure)
    elif any(v.name == "sapphirerapids" for v in found):  # built, scored 0 here
        log.info("llama.cpp AMX kernels not used: this CPU has no AMX (no amx_int8 flag)")
    runnable = [v for v in runnable if not v.uses_amx]
    if not runnable:
        raise VariantUnavailable(f"no llama.cpp CPU variant runs on this CPU (built: {', '.join(v.name for v in found)})")
    return max(runnable, key=lambda v: v.score)


PROBE_PROMPT_TOKENS = 128  # a batch this long runs ggml's AMX tile kernels (decoding one token runs its VNNI path)


def probe_variant(variant: CpuVariant, model_path: Path, threads: int, timeout_s: float = 120.0) -> str | None:
    """Run `variant` on the model in a child process, with `threads` threads; None if it ran cleanly, else why not
    (the signal that killed it, its error, or a timeout)."""
    command = [sys.executable, "-m", "searchsvc.answer.ggml_cpu", str(variant.path), str(model_path), str(threads)]
    return run_probe(command, timeout_s)


def run_probe(command: list[str], timeout_s: float) -> str | None:
    """Run a probe's child; None if it exited 0, else how it ended."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"probe timed out after {timeout_s:g} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"probe killed by {signal.Signals(-done.returncode).name}"
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"probe exited with {done.returncode}: {last}"


def _probe_main(variant_path: str, model_path: str, threads: int) -> None:
    """The probe's child: load the variant (by path, whatever its score) and the model, read a prompt and decode
    one token."""
    import numpy as np
    from llama_cpp import Llama

    _register(Path(variant_path))
    llama = Llama(model_path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    words = llama.tokenize("The quick brown fox jumps over the lazy dog. ".encode() * 16, add_bos=True)
    llama.eval(words[:PROBE_PROMPT_TOKENS])
    llama.eval([words[PROBE_PROMPT_TOKENS]])
    logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),))
    if not np.isfinite(logits).all():
        raise SystemExit("the variant computed non-finite logits")


# ggml_log_level (ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5) -> logging's. Its INFO is the model
# loader's hundreds of lines: DEBUG here. NONE is an unconditional print: INFO.
_LLAMA_LOG_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_LLAMA_LOG_CONT = 5  # continues the previous message
llama_log = logging.getLogger("searchsvc.llama_cpp")
_log_state = threading.local()  # per thread: ggml logs from its workers too
_log_callback = None  # the ctypes callback, kept alive while llama.cpp holds it


def route_llama_logs() -> None:
    """Send llama.cpp's and ggml's log lines to `logging` (logger searchsvc.llama_cpp), one record per line, instead
    of llama-cpp-python's print to stderr: they then carry the server's format (json included) and levels.
    Idempotent."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != _LLAMA_LOG_CONT:
            _log_state.level = _LLAMA_LOG_LEVELS.get(level, logging.DEBUG)
        pending = getattr(_log_state, "pending", "") + text.decode("utf-8", "replace")
        *lines, _log_state.pending = pending.split("\n")
        for line in lines:
            if line.strip():
                llama_log.log(getattr(_log_state, "level", logging.DEBUG), "%s", line)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def load_cpu_backend(wanted: str = "auto", probe: Probe | None = None) -> str | None:
    """Register the chosen CPU variant with ggml; its name, or None for a build without variants. Idempotent; the
    first call wins (ggml cannot unload the backend a model was loaded on). `probe` vets an AMX variant for
    "auto" (probe_variant with the model about to load)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            if wanted not in ("auto", _loaded):
                log.warning("llama.cpp CPU variant %s already loaded; %s ignored until restart", _loaded, wanted)
            return _loaded
        found = variants()
        if not found:
            return None
        route_llama_logs()
        chosen = choose(found, wanted, probe)
        _register(chosen.path)
        _loaded = chosen.name
        log.info("llama.cpp CPU kernels: %s (score %d; runnable here: %s)", chosen.name, chosen.score,
                 ", ".join(v.name for v in found if v.score > 0))
        return chosen.name


def _register(path: Path) -> None:
    """Hand one CPU backend library to ggml (whatever its score: the caller chose)."""
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
    if not ggml.ggml_backend_load(str(path).encode()):
        raise VariantUnavailable(f"ggml could not load {path}")


if __name__ == "__main__":  # the probe's child process (probe_variant)
    _probe_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
