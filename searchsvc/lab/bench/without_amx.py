"""Run a command with AMX unavailable, to stand in for a CPU without it (most cloud AVX-512 servers).

Linux hands AMX to a process only after arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA); ONNX Runtime's MLAS and
oneDNN ask for it and use their AVX-512 kernels when refused. A seccomp filter (libseccomp, via ctypes) makes
that request fail with EPERM for this process and everything it execs, so the same binaries run their non-AMX
paths. avx512_bf16 is untouched: for torch, force fp32 (SEARCHSVC_ENCODER_PRECISION=float32) as well.

    .venv/bin/python -m searchsvc.lab.bench.without_amx .venv/bin/searchsvc bench --part encoders --passages ../shared/data/scifact
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def refuse_amx() -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    ctx = ctypes.c_void_p(lib.seccomp_init(SCMP_ACT_ALLOW))
    nr = lib.seccomp_syscall_resolve_name(b"arch_prctl")
    cmp = (ArgCmp * 1)(ArgCmp(0, SCMP_CMP_EQ, ARCH_REQ_XCOMP_PERM, 0))
    if lib.seccomp_rule_add_array(ctx, 0x00050000 | errno.EPERM, nr, 1, cmp) or lib.seccomp_load(ctx):
        raise OSError("could not install the seccomp filter")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(158, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != -1:  # 158: arch_prctl on x86_64
        raise OSError("AMX permission was still granted")


if __name__ == "__main__":
    refuse_amx()
    os.execvp(sys.argv[1], sys.argv[1:])
