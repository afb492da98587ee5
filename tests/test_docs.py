"""The docs keep their promises: every table in docs/benchmarks.md sits in a section that gives the command
regenerating it and the CPU it ran on, and every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def sections(markdown: str) -> list[tuple[str, str]]:
    """(heading, body) for each heading of any level."""
    parts = re.split(r"^(#{1,6} .*)$", markdown, flags=re.M)
    return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def test_every_benchmark_table_names_its_command_and_cpu():
    missing = []
    for heading, body in sections((DOCS / "benchmarks.md").read_text()):
        if not re.search(r"^\|.*\|\s*$\n^\|[-| :]+\|\s*$", body, flags=re.M):
            continue  # no table here
        has_command = "```sh" in body or re.search(r"`(\.venv/bin/|searchsvc |python )[^`]+`", body)
        has_cpu = re.search(r"\bCPU\b", body)
        if not (has_command and has_cpu):
            missing.append(f"{heading}: {'command' if not has_command else ''} {'CPU' if not has_cpu else ''}")
    assert not missing, missing


def test_relative_links_resolve():
    broken = []
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
