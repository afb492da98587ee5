"""Small atomic-file helpers: write-then-rename with fsync, so readers see the old or the new, never half."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True))


def remove_tree_atomic(path: Path) -> None:
    """Make `path` disappear in one rename, then delete the renamed tree."""
    graveyard = path.with_name(f".deleted-{path.name}-{os.getpid()}-{id(path)}")
    os.replace(path, graveyard)
    fsync_dir(path.parent)
    shutil.rmtree(graveyard, ignore_errors=True)
