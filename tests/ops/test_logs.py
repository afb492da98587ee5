"""Server logs (issue 17): JSON lines carrying the call's request id (the caller's x-request-id, sent back in the
initial metadata) and trace id; a slow-search line with the knobs and stage timings, never the texts."""

from __future__ import annotations

import json

from conftest import MODELS_DIR, ServerProcess, index
from searchsvc.v1 import searchsvc_pb2 as pb


def test_json_lines_with_request_ids_and_a_slow_search_line(tmp_path):
    env = {"SEARCHSVC_LOG_FORMAT": "json", "SEARCHSVC_LOG_LEVEL": "INFO", "SEARCHSVC_SLOW_QUERY_MS": "0.001"}
    with ServerProcess(tmp_path, env=env) as server:
        stub = server.stub()
        stub.CreateCollection(pb.CreateCollectionRequest(name="c", config=pb.CollectionConfig(refresh_interval_ms=-1)))
        index(stub, "c", [pb.Document(id="a", text="a secret document text about apples")])
        _, call = stub.Search.with_call(pb.SearchRequest(collection="c", query="private question about apples", top_k=3),
                                        metadata=[("x-request-id", "req-42")])
        assert dict(call.initial_metadata())["x-request-id"] == "req-42"
        _, call = stub.Search.with_call(pb.SearchRequest(collection="c", query="apples"))
        generated = dict(call.initial_metadata())["x-request-id"]
        assert len(generated) == 16
    lines = [line for line in server.output if line.startswith("{")]
    records = [json.loads(line) for line in lines]  # every JSON-looking line parses
    assert any(r["logger"] == "searchsvc.api.server" for r in records)  # the server's own lines are JSON too
    (slow,) = [r for r in records if r["logger"] == "searchsvc.slowlog" and r["request_id"] == "req-42"]
    assert slow["level"] == "WARNING" and slow["collection"] == "c" and slow["mode"] == "HYBRID"
    assert slow["top_k"] == 3 and {"embed", "dense", "keyword", "fuse"} <= set(slow["stages_ms"])
    assert any(r["request_id"] == generated for r in records)
    everything = "".join(server.output)
    assert "private question" not in everything and "secret document" not in everything
    # ServerProcess shares one model_cache_dir: the MiniLM export is found there, none is written per index dir.
    assert not (tmp_path / "models").exists() and list((MODELS_DIR / "onnx").glob("*MiniLM*.onnx"))
