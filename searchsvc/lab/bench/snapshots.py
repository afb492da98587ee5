"""`searchsvc bench --snapshots SOURCE`: snapshot and restore of one collection through the API (issue 19).

SOURCE is a dataset (a BEIR folder or any file `searchsvc index` reads: indexed with the server's default
language) or a chunk count (that many synthetic one-chunk documents with 384-d external vectors, as `bench
--scale` loads them). Reported: the collection's size on disk; CreateSnapshot's time and the archive's size,
beside a plain copy of the collection directory, fsynced, in the same run (the floor for writing those bytes
durably once);
RestoreSnapshot's time (verify every member, extract, open); export through ListDocuments; and a snapshot taken
while a BulkIndex stream runs, with the stream's ack latency during it.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from searchsvc.client.channel import bulk_index
from searchsvc.config import Settings
from searchsvc.domain.types import Document
from searchsvc.ingest.loaders import load_documents
from searchsvc.lab.bench.workload import ClusteredVectors, SyntheticCorpus
from searchsvc.lab.process import ServerProcess
from searchsvc.platform.files import fsync_tree
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

NAME = "snapshots"


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _logged_snapshot(server: ServerProcess, name: str) -> str:
    return next((line.strip().split(": ", 1)[-1] for line in server.output if f"snapshot {name} " in line), "-")


def _synthetic(start: int, count: int, corpus: SyntheticCorpus, vectors: ClusteredVectors) -> list:
    docs = corpus.docs(count, start=start, min_words=10, max_words=30)
    for doc, vector in zip(docs, vectors.sample(count)):
        doc.vector = vector
    return docs


def run_snapshots(settings: Settings, source: str) -> None:
    env = {"SEARCHSVC_LLM__BACKEND": "none", "SEARCHSVC_LOG_LEVEL": "INFO"}  # the server logs each snapshot's stages
    synthetic = source.isdigit()
    corpus, vectors = SyntheticCorpus(), ClusteredVectors(384)
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "index", env=env) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.SearchServiceStub(channel)
        config = pb.CollectionConfig(embedding_model="external", dimension=384) if synthetic else pb.CollectionConfig()
        stub.CreateCollection(pb.CreateCollectionRequest(name=NAME, config=config))
        started = time.perf_counter()
        docs = _synthetic(0, int(source), corpus, vectors) if synthetic else load_documents(Path(source))
        bulk_index(lambda: grpc.insecure_channel(server.target), NAME, docs, batch_size=1000 if synthetic else 256)
        collection = stub.GetCollection(pb.GetCollectionRequest(name=NAME))
        print(f"loaded {collection.document_count:,} documents ({collection.chunk_count:,} chunks, "
              f"{collection.config.embedding_model}) in {time.perf_counter() - started:.1f} s", flush=True)

        started = time.perf_counter()
        snap = stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=NAME), timeout=3600)
        took = time.perf_counter() - started
        on_disk = _tree_bytes(server.index_dir / NAME)
        copy_started = time.perf_counter()
        shutil.copytree(server.index_dir / NAME, Path(tmp) / "plain-copy")
        fsync_tree(Path(tmp) / "plain-copy")  # durable, as the archive is
        copied = time.perf_counter() - copy_started
        print(f"CreateSnapshot: {took:.2f} s, archive {snap.size_bytes / 1e6:.1f} MB (collection on disk {on_disk / 1e6:.1f} MB); "
              f"a plain copy of the collection directory, fsynced, took {copied:.2f} s: snapshot/copy time {took / copied:.2f}",
              flush=True)
        print(f"  server log: {_logged_snapshot(server, snap.name)}")

        started = time.perf_counter()
        restored = stub.RestoreSnapshot(pb.RestoreSnapshotRequest(name=snap.name, collection=f"{NAME}-restored"), timeout=3600)
        took = time.perf_counter() - started
        assert (restored.document_count, restored.chunk_count) == (collection.document_count, collection.chunk_count)
        print(f"RestoreSnapshot (verify every member, extract, open): {took:.2f} s for {restored.document_count:,} documents", flush=True)
        opened = next((line.strip().split(": ", 1)[-1] for line in server.output if f"collection {NAME}-restored loaded" in line), "-")
        print(f"  server log: {opened}")

        started, exported, token = time.perf_counter(), 0, ""
        while True:
            page = stub.ListDocuments(pb.ListDocumentsRequest(collection=NAME, page_size=200, page_token=token,
                                                              view=pb.DOCUMENT_VIEW_FULL), timeout=600)
            exported += len(page.documents)
            if not (token := page.next_page_token):
                break
        took = time.perf_counter() - started
        print(f"export (ListDocuments, FULL, 200 per page): {exported:,} documents in {took:.2f} s ({exported / took:,.0f} docs/s)", flush=True)

        # A snapshot while a stream writes: what the stream's acks wait meanwhile.
        acks: list[float] = []
        more = max(min(collection.document_count // 10, 20_000), 2_000)
        extra = _synthetic(10**7, more, corpus, vectors) if synthetic else \
            [Document(f"extra-{i}", f"an extra document number {i} written during a snapshot") for i in range(more)]
        last = [time.perf_counter()]

        def on_ack(ack) -> None:
            now = time.perf_counter()
            acks.append(now - last[0])
            last[0] = now

        streaming = threading.Thread(target=bulk_index, args=(lambda: grpc.insecure_channel(server.target), NAME, extra),
                                     kwargs={"batch_size": 200, "on_ack": on_ack})
        streaming.start()
        time.sleep(1.0)
        before = len(acks)
        started = time.perf_counter()
        during = stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=NAME), timeout=3600)
        took = time.perf_counter() - started
        during_acks = acks[before:]
        streaming.join()
        print(f"CreateSnapshot during a BulkIndex stream: {took:.2f} s at seq {during.sequence} ({during.document_count:,} documents); "
              f"ack gaps before it p50 {np.percentile(acks[:before], 50) * 1000:.0f} ms, while it ran max "
              f"{max(during_acks or [0]) * 1000:.0f} ms over {len(during_acks)} acks", flush=True)
        print(f"  server log: {_logged_snapshot(server, during.name)}")
        channel.close()
