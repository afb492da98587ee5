"""The architecture (docs/architecture.md) holds: import-linter's contracts in pyproject.toml (packages by layer,
no gRPC below api/, storage knows no search stage, serving code never imports cli/ or lab/, no import cycles at
any depth), and only the bottom layer's shared modules stay loose at the top of the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import searchsvc

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(searchsvc.__file__).parent


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint_imports), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
    kept = run.stdout.count(" KEPT")
    assert kept == 6, run.stdout  # a contract that stops being read (renamed table, typo) must not pass quietly


def test_only_the_shared_bottom_modules_are_loose():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__", "__main__", "config", "errors"]


def test_every_package_is_in_the_layers_contract():
    """`exhaustive = true` in the layers contract makes import-linter fail on a package it does not name; this
    checks that the flag is still there."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")
    assert layers.get("exhaustive") is True
    named = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= named, packages - named
