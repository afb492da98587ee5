"""ModelRegistry's memory rules (issue 41): a server makes a model's missing exports in a child process, so the
export's torch and transformers never enter it; models no collection uses are dropped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import MODELS_DIR
from searchsvc.retrieve.models import DEFAULT_EMBEDDING_MODEL, ModelRegistry

# Loads MiniLM as a server's registry does, in a fresh interpreter (pytest's own has imported torch long ago),
# and reports what the process imported and whether it ran a child to make files.
LOAD = textwrap.dedent("""
    import json, logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from searchsvc.retrieve.models import ModelRegistry
    registry = ModelRegistry(cache_dir=Path(sys.argv[1]), threads=1, sentence_engine="onnx", build_in_child=True)
    model = registry.embedder("sentence-transformers/all-MiniLM-L6-v2")
    vector = model.get_query_embedding("apples are red")
    print(json.dumps({"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                      "dimension": len(vector)}))
""")


def load_in_fresh_process(cache: Path) -> tuple[dict, str]:
    import json

    done = subprocess.run([sys.executable, "-c", LOAD, str(cache)], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_a_missing_export_is_made_in_a_child_and_torch_stays_out(tmp_path):
    first, log = load_in_fresh_process(tmp_path)
    assert "making it in a child process" in log and "files made in a child process" in log
    assert first == {"torch": False, "transformers": False, "dimension": 384}
    assert list((tmp_path / "onnx").glob("*.onnx")), "the child wrote the export where the registry reads it"
    second, log = load_in_fresh_process(tmp_path)
    assert "child process" not in log  # made once
    assert second == first


def test_unused_models_are_dropped():
    registry = ModelRegistry(cache_dir=MODELS_DIR, threads=1, sentence_engine="onnx")
    kept = registry.embedder(DEFAULT_EMBEDDING_MODEL)
    assert registry.resident_bytes[DEFAULT_EMBEDDING_MODEL] > 0
    assert registry.release_unused(lambda: {DEFAULT_EMBEDDING_MODEL, "some-reranker"}) == []
    assert registry.embedder(DEFAULT_EMBEDDING_MODEL) is kept
    assert registry.release_unused(set) == [DEFAULT_EMBEDDING_MODEL]
    assert DEFAULT_EMBEDDING_MODEL not in registry.resident_bytes
    assert registry.embedder(DEFAULT_EMBEDDING_MODEL) is not kept  # loaded again when needed


def test_an_unused_model_stays_for_the_grace_and_goes_if_still_unused():
    import time

    registry = ModelRegistry(cache_dir=MODELS_DIR, threads=1, sentence_engine="onnx", unused_grace_s=0.3)
    registry.embedder(DEFAULT_EMBEDDING_MODEL)
    in_use: set[str] = set()
    assert registry.release_unused(lambda: in_use) == []
    in_use.add(DEFAULT_EMBEDDING_MODEL)  # a collection uses it again before the grace is over: kept
    time.sleep(0.6)
    assert DEFAULT_EMBEDDING_MODEL in registry.resident_bytes
    in_use.clear()
    registry.release_unused(lambda: in_use)
    time.sleep(0.6)
    assert DEFAULT_EMBEDDING_MODEL not in registry.resident_bytes


def test_an_idle_server_loads_no_model_until_a_collection_needs_one(tmp_path):
    from conftest import ServerProcess
    from searchsvc.v1 import searchsvc_pb2 as pb

    def mapped(pid: int) -> set[str]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        return {lib for lib in ("libonnxruntime", "libtorch_cpu", "kiwi") if lib in maps}

    with ServerProcess(tmp_path / "idx") as server:
        assert mapped(server.proc.pid) == set()
        server.stub().CreateCollection(pb.CreateCollectionRequest(name="en", config=pb.CollectionConfig(language="en")), timeout=300)
        assert mapped(server.proc.pid) == {"libonnxruntime"}  # MiniLM on ONNX Runtime; still no torch


def test_a_dropped_e5_gives_its_engine_back():
    import gc

    from searchsvc.retrieve import e5

    # threads=3: options no other test's engine has, so nothing else keeps this engine alive
    registry = ModelRegistry(cache_dir=MODELS_DIR, threads=3, e5_engine="onnx", encoder_int8=True)
    registry.embedder("multilingual-e5-small").get_query_embedding("비타민 D")
    key = next(k for k in e5._ENGINES.keys() if dict(k[1]).get("threads") == 3)
    assert registry.release_unused(set) == ["multilingual-e5-small"]
    gc.collect()
    assert key not in e5._ENGINES
