"""Benchmark: multilingual-e5-small on OpenVINO against ONNX Runtime (issue 14 asks to measure both and keep the
faster). Same tokenizer, windows, batching and pooling (TorchE5Engine.embed); only the forward pass differs.

    HF_HUB_OFFLINE=1 .venv/bin/python -m searchsvc.lab.bench.openvino_e5 [--passages 256] [--threads 2]
    .venv/bin/python -m searchsvc.lab.bench.without_amx .venv/bin/python -m searchsvc.lab.bench.openvino_e5     # stand-in for a CPU without AMX

Needs `pip install openvino nncf` (not dependencies of searchsvc). Engines:
- ort fp32 / ort int8: the service's engines (int8 = the default, FFN down-projections kept fp32);
- ov fp32: OpenVINO, the same torch module converted by ov.convert_model, inference precision forced to f32;
- ov auto: OpenVINO's own default precision for this CPU (bf16 where it has AMX);
- ov int8: NNCF post-training quantization (model_type TRANSFORMER) calibrated on 128 other passages, FFN
  down-projections kept fp32 as in ort int8; the rest in OpenVINO's default precision (ov-int8) or f32
  (ov-int8-f32, what a CPU without AVX512-BF16 runs).
Per engine: 8-token query p50, SciFact passages/s, and the minimum cosine to the torch fp32 vectors.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[3]  # the checkout; ../shared lies beside it
DATA = ROOT.parent / "shared" / "data"
QUERY = "does vitamin d reduce the risk of hip fractures"


def passages(limit: int, skip: int = 0) -> list[str]:
    from searchsvc.ingest.loaders import load_documents

    return [d.text for d in itertools.islice(load_documents(DATA / "scifact"), skip, skip + limit)]


class OvE5Engine:
    """TorchE5Engine with the forward pass on an OpenVINO compiled model."""

    def __init__(self, torch_engine, compiled) -> None:
        self.t = torch_engine
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def forward_pooled(self, batch):
        from searchsvc.retrieve.onnx_runtime import mean_pool

        ids, mask = self.t.pad(batch)
        out = self.request.infer({0: self.t.word_embeddings(ids), 1: mask})
        return mean_pool(np.asarray(out[0]), mask)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="ort-fp32,ort-int8,ov-fp32,ov-auto,ov-int8,ov-int8-f32")
    args = ap.parse_args()

    import openvino as ov
    import torch

    from searchsvc.platform import hardware
    from searchsvc.retrieve import e5 as e5mod
    from searchsvc.retrieve.onnx_runtime import HiddenStates

    torch.set_num_threads(args.threads)
    texts = passages(args.passages)
    print(f"CPU flags: {hardware.describe()}; openvino {ov.__version__}; {args.threads} threads; {len(texts)} SciFact abstracts")
    reference = e5mod.TorchE5Engine(precision="float32", attn_implementation="eager")
    ref_p = reference.embed(texts, is_query=False)
    ref_q = reference.embed([QUERY], is_query=True)

    def measure(name: str, engine) -> None:
        # TorchE5Engine.embed with this engine's forward pass
        embed = lambda t, q: e5mod.TorchE5Engine.embed(engine, t, is_query=q)  # noqa: E731
        for _ in range(5):
            embed([QUERY], True)
        times = []
        for _ in range(50):
            started = time.perf_counter()
            embed([QUERY], True)
            times.append((time.perf_counter() - started) * 1e3)
        embed(texts[:16], False)
        started = time.perf_counter()
        vecs = embed(texts, False)
        docs_s = len(texts) / (time.perf_counter() - started)
        cos = min(float((vecs * ref_p).sum(1).min()), float((embed([QUERY], True) * ref_q).sum()))
        print(f"  {name:<9} query(8 tok) p50 {statistics.median(times):5.1f} ms   passages {docs_s:5.1f} docs/s   "
              f"min cosine to torch fp32 {cos:.4f}", flush=True)

    class Shim:  # what TorchE5Engine.embed reads from self
        def __init__(self, forward):
            self.tokenizer, self.file, self.windows = reference.tokenizer, reference.file, reference.windows
            self.forward_pooled = forward

    engines = args.engines.split(",")
    for name in engines:
        if name.startswith("ort"):
            ort = e5mod.OrtE5Engine(threads=args.threads, int8=name == "ort-int8")
            measure(name, Shim(ort.forward_pooled))
            continue
        f = reference.file
        module = HiddenStates(reference.model, ["inputs_embeds", "attention_mask"])
        example = (torch.zeros(2, 8, f.hidden), torch.ones(2, 8, dtype=torch.int64))
        model = ov.convert_model(module, example_input=example,
                                 input=[ov.PartialShape([-1, -1, f.hidden]), ov.PartialShape([-1, -1])])
        config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
        if name in ("ov-fp32", "ov-int8-f32"):
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if name.startswith("ov-int8"):
            import nncf

            calib = []
            for t in passages(128, skip=args.passages):
                content = reference.tokenizer.content_ids([e5mod.PASSAGE_PREFIX + t])
                ids, mask = reference.pad([w for _, w, _ in reference.windows(content)][:1])
                calib.append((reference.word_embeddings(ids), mask))
            ffn_down = [n.get_friendly_name() for n in model.get_ops() if n.get_type_name() == "MatMul"
                        and "output.dense" in n.get_friendly_name() and "attention" not in n.get_friendly_name()]
            model = nncf.quantize(model, nncf.Dataset(calib, lambda x: {0: x[0], 1: x[1]}),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                                  ignored_scope=nncf.IgnoredScope(names=ffn_down, validate=False))
        started = time.perf_counter()
        compiled = ov.Core().compile_model(model, "CPU", config)
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        print(f"  ({name}: compiled in {time.perf_counter() - started:.1f} s, inference precision {precision})")
        measure(name, Shim(OvE5Engine(reference, compiled).forward_pooled))


if __name__ == "__main__":
    main()
