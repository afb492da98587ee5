"""`searchsvc bench --memory`: the server's resident memory at rest (issue 41), LLM off, on a fresh index dir.

Steps: idle (no collection), one "en" collection, one "ko" collection, one search in each (the first Korean text
loads kiwi), then the "ko" collection deleted (its model is dropped at once: unused_model_grace_s 0; kiwi stays). After each, the server's RSS, and beside it what each loaded model added to it as the server itself
measured while loading (the `searchsvc_model_resident_bytes` gauge of /metrics).
"""

from __future__ import annotations

import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from searchsvc.config import Settings
from searchsvc.lab.bench.workload import free_port
from searchsvc.lab.process import ServerProcess
from searchsvc.platform import hardware
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc


def _gauges(url: str) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, s.labels.get("model", "")): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name in ("searchsvc_resident_bytes", "searchsvc_model_resident_bytes")}


def run_memory(settings: Settings) -> None:
    port = free_port()
    env = {"SEARCHSVC_LLM__BACKEND": "none", "SEARCHSVC_METRICS_PORT": str(port), "SEARCHSVC_UNUSED_MODEL_GRACE_S": "0"}
    if settings.model_cache_dir:
        env["SEARCHSVC_MODEL_CACHE_DIR"] = str(settings.model_cache_dir)
    print(f"server RSS, LLM off; {hardware.describe()}", flush=True)
    print(f"{'step':<34}{'RSS MB':>8}   models (MB added while loading)", flush=True)
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "idx", env=env) as server, \
            grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        url = f"http://127.0.0.1:{port}/metrics"

        def report(step: str) -> None:
            time.sleep(1)
            gauges = _gauges(url)
            models = ", ".join(f"{m} {v / 2**20:.0f}" for (n, m), v in sorted(gauges.items()) if n.endswith("model_resident_bytes"))
            print(f"{step:<34}{gauges[('searchsvc_resident_bytes', '')] / 2**20:>8.0f}   {models or '-'}", flush=True)

        report("idle")
        for language in ("en", "ko"):
            stub.CreateCollection(pb.CreateCollectionRequest(name=language, config=pb.CollectionConfig(language=language)),
                                  timeout=600)
            report(f"+ collection {language!r}")
        for language, query in (("en", "vitamin D and bone health"), ("ko", "비타민 D와 뼈 건강")):
            stub.Search(pb.SearchRequest(collection=language, query=query), timeout=120)
            report(f"+ a search in {language!r}")
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="ko"), timeout=120)
        report("- collection 'ko' deleted")
        print(f"peak RSS {server.peak_rss_mb():.0f} MB", flush=True)
