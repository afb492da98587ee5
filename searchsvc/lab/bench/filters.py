"""`searchsvc bench --filters CHUNKS`: filtered search at 1%, 10% and 50% selectivity against unfiltered (issue 18).

One collection of CHUNKS external-vector chunks (as bench --scale: pseudo-word texts, clustered 384-d vectors,
no model at ingest), each with typed metadata: `bucket`, an integer 0-99 (uniform), and `published`, a timestamp
whose day is the bucket. For each selectivity s, two filters select s of the chunks: equality (`bucket` any_of
s·100 values: postings) and a range (`published` within s·100 days: sorted arrays). Each query gets its own
filter of that selectivity (shifted buckets or days), so no search reuses another's selection (the metadata
index keeps recent ones until the next write; a repeated filter costs less than shown). Reported for DENSE,
KEYWORD and HYBRID: p50 and p99 of the filtered searches, and p50 as a ratio of the unfiltered search in the
same run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from searchsvc.api.metadata_pb import value_to_pb
from searchsvc.client.channel import bulk_index
from searchsvc.config import Settings
from searchsvc.domain.filters import Timestamp
from searchsvc.lab.bench.service import _timed_searches
from searchsvc.lab.bench.workload import ClusteredVectors, SyntheticCorpus
from searchsvc.lab.process import ServerProcess
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

NAME = "filters"
DIMENSION = 384
DAY_US = 86_400 * 1_000_000
EPOCH_2024 = 1_704_067_200 * 1_000_000


def _filters(selectivity: float, shift: int) -> dict[str, pb.Filter]:
    n = max(1, round(selectivity * 100))
    buckets = pb.ValueList(values=[pb.MetadataValue(int_value=(shift + b) % 100) for b in range(n)])
    first = shift % (101 - n)
    since, before = (value_to_pb(Timestamp(EPOCH_2024 + day * DAY_US)) for day in (first, first + n))
    return {
        "equality (any_of)": pb.Filter(must=[pb.FilterClause(key="bucket", any_of=buckets)]),
        "range (timestamp)": pb.Filter(must=[pb.FilterClause(key="published", range=pb.Range(gte=since, lt=before))]),
    }


def run_filters(settings: Settings, total: int, queries: int) -> None:
    corpus, vectors = SyntheticCorpus(), ClusteredVectors(DIMENSION)
    env = {"SEARCHSVC_LLM__BACKEND": "none"}
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) if settings.index_dir == Path("indexes") else settings.index_dir
        with ServerProcess(index_dir, env=env) as server:
            stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(server.target))
            config = pb.CollectionConfig(embedding_model="external", dimension=DIMENSION)
            stub.CreateCollection(pb.CreateCollectionRequest(name=NAME, config=config))
            docs = corpus.docs(total, min_words=10, max_words=30)
            for i, (doc, vector) in enumerate(zip(docs, vectors.sample(total))):
                bucket = corpus.rng.randrange(100)
                doc.vector = vector
                doc.metadata = {"bucket": bucket, "published": Timestamp(EPOCH_2024 + bucket * DAY_US + i % DAY_US)}
            started = time.perf_counter()
            bulk_index(lambda: grpc.insecure_channel(server.target), NAME, docs, batch_size=1000)
            print(f"{total:,} chunks with typed metadata loaded in {time.perf_counter() - started:.0f} s "
                  f"({stub.GetCollection(pb.GetCollectionRequest(name=NAME)).dense_index_in_use})")
            time.sleep(3)  # the keyword leg's last refresh
            texts = [" ".join(corpus.words(corpus.rng.randint(2, 5))) for _ in range(queries)]
            qv = [v.tolist() for v in vectors.sample(queries)]
            modes = {"DENSE": pb.SEARCH_MODE_DENSE, "KEYWORD": pb.SEARCH_MODE_KEYWORD, "HYBRID": pb.SEARCH_MODE_HYBRID}

            def requests(mode, selectivity=None, kind=""):
                return [pb.SearchRequest(collection=NAME, query=t, query_vector=v, mode=mode,
                                         where=_filters(selectivity, i)[kind] if selectivity else None)
                        for i, (t, v) in enumerate(zip(texts, qv))]

            for label, mode in modes.items():
                times, _ = _timed_searches(stub, requests(mode))
                base = np.percentile(times, 50)
                print(f"{label}: unfiltered p50 {base:.1f} ms, p99 {np.percentile(times, 99):.1f} ms")
                for selectivity in (0.01, 0.10, 0.50):
                    for kind in _filters(selectivity, 0):
                        times, responses = _timed_searches(stub, requests(mode, selectivity, kind))
                        p50 = np.percentile(times, 50)
                        hits = np.mean([len(r.hits) for r in responses])
                        print(f"  {selectivity:>4.0%} {kind:<18} p50 {p50:6.1f} ms ({p50 / base:4.2f}x unfiltered)"
                              f"  p99 {np.percentile(times, 99):6.1f} ms  ({hits:.1f} hits)", flush=True)
