"""What this CPU can do, read from its flags, never assumed: machines of one kind differ (some have AMX and
AVX512-BF16, others AVX-512 without native bf16, where bf16 is emulated and ~2.6x slower than fp32)."""

from __future__ import annotations

import functools
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's flags ("" where /proc/cpuinfo is missing or has none, e.g. not Linux x86)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True only where bf16 matmuls run in hardware (AVX512-BF16 or AMX-BF16). torch's
    `_is_mkldnn_bf16_supported()` is also true on plain AVX-512, where oneDNN emulates bf16."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def bf16_is_faster(flags: frozenset[str] | None = None) -> bool:
    """Whether torch should run the encoders in bf16: only with AMX (amx_bf16, and the kernel lets this process
    use the tiles). Measured on e5 passages, 2 threads: AMX bf16 23.2 docs/s against 12.1 in fp32, but with AMX
    refused the same CPU's AVX512-BF16 kernels ran 7.2 (searchsvc/lab/bench/without_amx.py), slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return "amx_bf16" in flags and amx_permitted()


@functools.cache
def amx_permitted() -> bool:
    """Linux grants AMX tile data per process on request (arch_prctl ARCH_REQ_XCOMP_PERM); oneDNN asks the same
    way and falls back to AVX-512 when refused (old kernels, some VMs, a seccomp filter)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False
    arch_prctl, req_xcomp_perm, xtiledata = 158, 0x1023, 18
    return ctypes.CDLL(None, use_errno=True).syscall(arch_prctl, req_xcomp_perm, xtiledata) == 0


def describe(flags: frozenset[str] | None = None) -> str:
    """The flags that decide our kernels, for logs and benchmark reports."""
    flags = cpu_flags() if flags is None else flags
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"
