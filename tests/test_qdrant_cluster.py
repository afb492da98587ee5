"""Against a real Qdrant server or cluster: runs only when QDRANT_URL is set (e.g. QDRANT_URL=http://127.0.0.1:6333,
and QDRANT_API_KEY if it needs one). None can be installed on the CI machine (no binary on PyPI, apt or npm, no
Docker), so CI skips this file; tests/test_qdrant_backend.py covers the same API on qdrant-client's local mode."""

from __future__ import annotations

import os
import uuid

import pytest

from conftest import ServerProcess, ids, index, search
from searchsvc.v1 import searchsvc_pb2 as pb

URL = os.environ.get("QDRANT_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="QDRANT_URL is not set: no Qdrant server to test against")


def test_index_search_filter_delete_on_a_real_cluster(tmp_path):
    env = {"SEARCHSVC_QDRANT__URL": URL, "SEARCHSVC_QDRANT__API_KEY": os.environ.get("QDRANT_API_KEY", "")}
    name = f"searchsvc-test-{uuid.uuid4().hex[:8]}"
    with ServerProcess(tmp_path, env=env) as server:
        stub = server.stub()
        config = pb.CollectionConfig(backend="qdrant", embedding_model="external", dimension=4)
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, config=config))
        try:
            docs = [
                pb.Document(id="a", text="red tomatoes", vector=[1, 0, 0, 0], metadata={"kind": "food"}),
                pb.Document(id="b", text="green grass", vector=[0, 1, 0, 0], metadata={"kind": "plant"}),
            ]
            index(stub, name, docs)
            assert ids(search(stub, name, "tomatoes", mode=pb.SEARCH_MODE_KEYWORD)) == ["a"]
            assert ids(search(stub, name, "", mode=pb.SEARCH_MODE_DENSE, query_vector=[0, 1, 0, 0], top_k=1)) == ["b"]
            assert ids(search(stub, name, "green", query_vector=[0, 1, 0, 0], filter={"kind": "food"})) == ["a"]
            stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=["a"]))
            assert ids(search(stub, name, "tomatoes", mode=pb.SEARCH_MODE_KEYWORD)) == []
        finally:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))
    with ServerProcess(tmp_path, env=env) as server:  # the config lived on the cluster: nothing left behind
        assert name not in [c.name for c in server.stub().ListCollections(pb.ListCollectionsRequest()).collections]
