"""The README's quick start, run as written against a live server: each command of the block between
`<!-- quickstart:begin -->` and `<!-- quickstart:end -->` must exit 0 and print what a newcomer is told to expect.
A README that drifts from the code fails here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import server_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def quickstart_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- quickstart:begin -->\s*```sh\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
    assert block, "README.md has no quick start between the quickstart markers"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    links = re.findall(r"\]\((docs/[^)#]+)", README.read_text())
    assert links and all((ROOT / link).exists() for link in links), [l for l in links if not (ROOT / l).exists()]


@pytest.fixture(scope="module")
def quickstart_server(tmp_path_factory):
    from searchsvc.api.server import BackgroundServer

    # The product's defaults (language auto: English and Korean side by side), an extractive answer (no LLM).
    settings = server_settings(tmp_path_factory.mktemp("quickstart"), default_language="auto")
    with BackgroundServer(settings) as server:
        yield server


def run(command: str, port: int) -> str:
    argv = shlex.split(command)
    if not (ROOT / argv[0]).exists():  # tests run by another interpreter than the checkout's .venv
        argv[0] = str(Path(sys.executable).with_name(Path(argv[0]).name))
    env = {**os.environ, "SEARCHSVC_PORT": str(port), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_quick_start_runs_as_written(quickstart_server):
    commands = quickstart_commands()
    assert [c.split()[1] for c in commands] == ["index", "search", "search", "search", "answer"]
    port = int(quickstart_server.target.rsplit(":", 1)[1])
    indexed, vaccines, tides, korean, answer = (run(c, port) for c in commands)
    assert re.search(r"indexed 6 documents \(\d+ chunks\) into quickstart", indexed), indexed
    first_hit = lambda out: next(line for line in out.splitlines() if re.match(r"\W*1\W", line))  # the rank-1 row
    assert "vaccines.md" in first_hit(vaccines), vaccines
    assert "science-notes.pdf p.2" in first_hit(tides), tides  # a PDF page, found by page
    assert "서울.hwpx p.1" in first_hit(korean), korean
    assert re.search(r"dense.*keyword.*cosine", korean), korean  # --explain adds each leg's rank and score
    assert re.search(r"│ #1 [\d.]+ │ #1 [\d.]+ │", first_hit(korean)), korean  # both legs found it: searchable on return
    assert re.search(r"\[\d\] antibodies.txt", answer), answer  # an answer that cites the antibodies file
