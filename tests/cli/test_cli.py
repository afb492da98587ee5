"""The command line for people (issue 20), each command a real process against the session's loopback server:
tables and JSON, bad requests (exit code, the field named), a missing collection, and Ctrl-C during `answer`
stopping generation on the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import fresh_collection, index
from searchsvc.v1 import searchsvc_pb2 as pb

ENV = {**os.environ, "COLUMNS": "220", "SEARCHSVC_LOG_LEVEL": "WARNING"}  # wide tables: nothing folded away


def cli(server, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchsvc", *args, "--target", server.target], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def notes(server, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("cli") / "notes.jsonl"
    rows = [
        {"id": "seoul", "title": "Seoul", "text": "Seoul is the capital of South Korea, on the Han River.", "metadata": {"kind": "city"}},
        {"id": "paris", "title": "Paris", "text": "Paris is the capital of France, famous for the Eiffel Tower.", "metadata": {"kind": "city"}},
        {"id": "cats", "title": "Cats", "text": "Cats are small domesticated felines that purr and hunt mice.", "metadata": {"kind": "animal"},
         "typed_metadata": {"legs": 4}},
        {"id": "blank", "title": "Blank", "text": "   "},
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    created = cli(server, "collections", "create", "cli-notes", "--language", "en", "--refresh-interval-ms", "-1", "--chunk-size", "128")
    assert created.returncode == 0, created.stderr
    assert "cli-notes" in created.stdout and "english" in created.stdout
    indexed = cli(server, "index", str(corpus), "--collection", "cli-notes")
    assert indexed.returncode == 1  # one document was rejected, and the exit code says so
    assert "indexed 3 documents (3 chunks) into cli-notes" in indexed.stdout
    assert "  1 × documents[i].text: must not be empty" in indexed.stdout.splitlines()
    assert "4/4" in indexed.stderr  # the progress bar's total: the file's lines
    yield "cli-notes"
    cli(server, "collections", "delete", "cli-notes", "--yes")


def test_search_prints_a_table_and_json(server, notes):
    table = cli(server, "search", notes, "capital city", "-k", "2", "--explain")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "│" in line and ("seoul" in line or "paris" in line)]
    assert len(rows) == 2 and all("#" in r for r in rows)  # per-leg ranks with --explain
    assert "2 hits in" in table.stdout
    raw = cli(server, "search", notes, "felines", "--mode", "keyword", "--filter", "kind=animal", "--json")
    response = json.loads(raw.stdout)
    assert [h["documentId"] for h in response["hits"]] == ["cats"] and response["hits"][0]["metadata"]["kind"] == "animal"
    where = cli(server, "search", notes, "capital felines", "--where", '{"must":[{"key":"legs","range":{"gte":{"intValue":3}}}]}', "--json")
    assert [h["documentId"] for h in json.loads(where.stdout)["hits"]] == ["cats"]


def test_bad_requests_and_a_missing_collection_exit_non_zero_without_a_traceback(server, notes):
    bad = cli(server, "search", notes, "capital", "-k", "5000")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: INVALID_ARGUMENT: top_k:") and "  field top_k: must be between" in bad.stderr
    assert "Traceback" not in bad.stderr
    where = cli(server, "search", notes, "capital", "--where", '{"must":[{"key":"bad key!","exists":true}]}')
    assert where.returncode == 1 and "field where.must[0].key" in where.stderr
    missing = cli(server, "documents", "count", "no-such-collection")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND:") and "Traceback" not in missing.stderr
    unreachable = subprocess.run([sys.executable, "-m", "searchsvc", "collections", "list", "--target", "127.0.0.1:1", "--timeout", "3"],
                                 capture_output=True, text=True, timeout=60, env=ENV)
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: UNAVAILABLE:")


def test_collections_and_documents(server, stub, notes):
    listed = cli(server, "collections", "list")
    assert any(notes in line and "READY" in line for line in listed.stdout.splitlines())
    got = json.loads(cli(server, "collections", "get", notes, "--json").stdout)
    assert got["name"] == notes and got["documentCount"] == "3" and got["config"]["chunkSize"] == 128
    doc = cli(server, "documents", "get", notes, "cats", "nope")
    assert doc.returncode == 1 and "Cats are small domesticated felines" in doc.stdout and "legs=4" in doc.stdout
    assert "not found: nope" in doc.stdout
    assert cli(server, "documents", "count", notes, "--filter", "kind=city").stdout.strip() == "2"
    page = json.loads(cli(server, "documents", "list", notes, "--page-size", "2", "--json").stdout)
    assert [d["id"] for d in page["documents"]] == ["cats", "paris"] and page["nextPageToken"]
    rest = cli(server, "documents", "list", notes, "--page-size", "2", "--page-token", page["nextPageToken"])
    assert "seoul" in rest.stdout and "more:" not in rest.stdout
    # Deleting a collection asks first; without a terminal it needs --yes.
    refused = subprocess.run([sys.executable, "-m", "searchsvc", "collections", "delete", notes, "--target", server.target],
                             capture_output=True, text=True, timeout=60, env=ENV, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert stub.GetCollection(pb.GetCollectionRequest(name=notes)).document_count == 3


def test_answer_streams_then_cites(server, notes):
    done = cli(server, "answer", notes, "What is the capital of South Korea?", "--extractive")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "Seoul" in lines[0]
    assert any(line.startswith("[1] seoul (seoul#0): \u201c") for line in lines), done.stdout
    assert "EXTRACTIVE answer, guardrails ALLOWED" in done.stdout
    as_json = json.loads(cli(server, "answer", notes, "What is the capital of South Korea?", "--extractive", "--json").stdout)
    assert as_json["kind"] == "ANSWER_KIND_EXTRACTIVE" and as_json["citations"][0]["documentId"] == "seoul"


FACTS = " ".join(f"Fact {i}: cats {fact}." for i, fact in enumerate([
    "sleep twelve to sixteen hours a day", "have thirty-two muscles in each ear", "cannot taste sweetness",
    "walk like camels and giraffes", "have a third eyelid", "see six times better than people in dim light",
    "use their whiskers to measure openings", "purr at twenty-five to one hundred fifty hertz", "sweat through their paws",
    "were domesticated about ten thousand years ago", "have eighteen toes", "can rotate their ears one hundred eighty degrees",
    "spend a third of their waking time grooming", "can jump six times their length", "have a unique nose print",
    "hear higher pitches than dogs", "drink by curling the tongue backwards", "have five toes on each front paw",
], start=1))


def test_ctrl_c_during_answer_stops_generation_on_the_server(server, stub):
    """Eighteen facts to list: a generation of a few hundred tokens, interrupted while the server generates."""
    engine = server.components["service"].answers
    engine.stats.last_cancel_stop_ms = None
    with fresh_collection(stub) as name:
        index(stub, name, [pb.Document(id="cat-facts", title="Cat facts", text=FACTS)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "searchsvc", "answer", name, "List every fact the sources give about cats, one per line.",
             "--max-tokens", "1000", "--temperature", "0", "--no-cache", "--target", server.target],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
            # A shell starts background jobs (`nohup make test &`) with SIGINT ignored, and children inherit that:
            # give the CLI the default a terminal gives it, so Python turns SIGINT into KeyboardInterrupt.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 240
        while not engine.stats.generating and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)  # into the generation: ~240 tokens take 10-20 s here
        assert proc.poll() is None, "the answer ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and b"cancelled" in err and b"Traceback" not in err, (out, err)
        deadline = time.monotonic() + 30
        while engine.stats.last_cancel_stop_ms is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.stats.last_cancel_stop_ms is not None and engine.stats.last_cancel_stop_ms < 5000


def test_the_collections_table_shows_the_graph_builders_backlog():
    from searchsvc.cli.collections import _dense_index

    assert _dense_index(pb.Collection(dense_index_in_use="hnsw", dense_backlog=12345)) == "hnsw (12,345 pending)"
    assert _dense_index(pb.Collection(dense_index_in_use="hnsw")) == "hnsw"
