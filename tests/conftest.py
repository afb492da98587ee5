"""Shared fixtures: a real server on a loopback port (in-process or as a subprocess) and real models."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from searchsvc.config import apply_process_env, load_settings
from searchsvc.lab.process import ServerProcess as _ServerProcess

apply_process_env()
# Test servers (in-process and subprocesses, which inherit this) embed MiniLM on ONNX Runtime alone. The default,
# "auto", also compiles an OpenVINO passage engine on a CPU with AMX: ~4 s more for every one of the suite's
# server starts. That engine and the choice are tested on their own (tests/retrieve/test_openvino_engine.py).
os.environ.setdefault("SEARCHSVC_SENTENCE_ENGINE", "onnx")

from searchsvc.v1 import searchsvc_pb2 as pb  # noqa: E402
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc  # noqa: E402

SYNC_REFRESH = -1  # keyword leg refreshes before each ack: deterministic tests
# Exports and the assembled GGUF answer models (1.6 GB) are made once per machine and shared by every test server
# and checkout, as pip's and the llama.cpp wheel's caches are: one copy per server filled a CI machine's disk, and
# one per clean clone cost each CI run ~2 min of exports. Safe to share: every entry is keyed by the digest of the
# weights it came from and the versions that made it (retrieve/onnx_runtime.py: export_key), and written atomically.
MODELS_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "searchsvc" / "test-models"


@pytest.fixture
def no_background_builds(monkeypatch):
    """HNSW vectors stay pending until the test moves them into the graph itself (DenseIndex.build_step,
    build_all): for tests that assert what the graph holds at a given moment."""
    from searchsvc.storage.embedded import graph_builder

    monkeypatch.setattr(graph_builder.BUILDER, "wake", lambda index: None)


def server_settings(index_dir: Path, **overrides):
    """A test server's settings: a free loopback port, one torch thread, English defaults, the shared model cache
    and, unless `llm` says otherwise, no LLM (answers are extractive; the session `server` has the real one)."""
    base = dict(index_dir=index_dir, port=0, torch_threads=1, default_language="en", model_cache_dir=MODELS_DIR,
                llm={"backend": "none"})
    return load_settings(**{**base, **overrides})


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    from searchsvc.api.server import BackgroundServer

    settings = load_settings(
        index_dir=tmp_path_factory.mktemp("indexes"),
        port=0,
        max_document_bytes=20_000,
        max_message_bytes=2_000_000,
        max_response_bytes=400_000,
        torch_threads=1,
        # Most tests are about English behaviour (stemming, MiniLM scores); language tests ask for theirs.
        default_language="en",
        model_cache_dir=MODELS_DIR,
        model_allow_list=[str(tmp_path_factory.getbasetemp())],  # models the tests make (e.g. a plumbing cross-encoder)
    )
    with BackgroundServer(settings) as running:
        yield running


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    return pb_grpc.SearchServiceStub(channel)


_names = iter(range(10**6))


@contextmanager
def fresh_collection(stub, backend: str = "") -> Iterator[str]:
    """A new collection (synchronous keyword refresh on the embedded backend), deleted on the way out."""
    name = f"t{next(_names)}"
    config = pb.CollectionConfig(refresh_interval_ms=SYNC_REFRESH, backend=backend)
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))
    try:
        yield name
    finally:
        try:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))
        except grpc.RpcError:
            pass


@pytest.fixture
def collection(stub):
    """A fresh embedded collection; deleted afterwards."""
    with fresh_collection(stub) as name:
        yield name


def doc(id: str, text: str, title: str = "", **metadata: str) -> pb.Document:
    return pb.Document(id=id, text=text, title=title, metadata=metadata)


CORPUS = [
    doc("cats", "Cats are small domesticated felines that purr and hunt mice.", "Cats", kind="animal", lang="en"),
    doc("dogs", "Dogs are loyal companions that bark and fetch sticks.", "Dogs", kind="animal", lang="en"),
    doc("faiss", "FAISS is a library for efficient similarity search over dense vectors.", "FAISS", kind="software", lang="en"),
    doc("bm25", "BM25 ranks documents by term frequency and inverse document frequency.", "BM25", kind="software", lang="en"),
    doc("paris", "Paris is the capital of France, famous for the Eiffel Tower.", "Paris", kind="city", lang="en"),
    doc("seoul", "Seoul is the capital of South Korea, on the Han River.", "Seoul", kind="city", lang="en"),
]


def index(stub, collection: str, docs, batch_size: int = 2) -> list[pb.BulkIndexResponse]:
    docs = list(docs)
    requests = [
        pb.BulkIndexRequest(collection=collection, documents=docs[i : i + batch_size], sequence=i // batch_size + 1)
        for i in range(0, len(docs), batch_size)
    ]
    return list(stub.BulkIndex(iter(requests), timeout=120))


def field_violation(err: grpc.RpcError) -> str:
    """The field path of an INVALID_ARGUMENT's BadRequest detail."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    detail = error_details_pb2.BadRequest()
    assert rpc_status.from_call(err).details[0].Unpack(detail)
    return detail.field_violations[0].field


def search(stub, collection: str, query: str, **kwargs) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(collection=collection, query=query, **kwargs), timeout=60)


def ids(response: pb.SearchResponse) -> list[str]:
    return [h.document_id for h in response.hits]


class ServerProcess(_ServerProcess):
    """The server as a child process, with one torch thread (tests run beside each other on 2 cores), English
    defaults (as the in-process server), the shared model cache, and no LLM (answers in these tests are
    extractive; loading 1.1 GB per process would only cost time and memory). `with ServerProcess(dir) as
    server:` starts it and stops it (if still running) on the way out."""

    def __init__(self, index_dir: Path, env: dict[str, str] | None = None) -> None:
        defaults = {"SEARCHSVC_TORCH_THREADS": "1", "SEARCHSVC_DEFAULT_LANGUAGE": "en",
                    "SEARCHSVC_MODEL_CACHE_DIR": str(MODELS_DIR), "SEARCHSVC_LLM__BACKEND": "none"}
        super().__init__(index_dir, env={**defaults, **(env or {})})
        self._channel: grpc.Channel | None = None

    def stub(self) -> pb_grpc.SearchServiceStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return pb_grpc.SearchServiceStub(self._channel)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self) -> None:
        self._close_channel()
        super().stop()

    def kill9(self) -> None:
        self._close_channel()
        super().kill9()


# Encoder parity texts: English, Korean, one word, and one longer than a 512-token window.
ENCODER_TEXTS = [
    "Vitamin D supplementation and the risk of hip fractures in older adults.",
    "비타민 D 보충이 노인의 고관절 골절 위험에 미치는 영향",
    "BM25",
    "A long passage about retrieval. " * 120,
]
