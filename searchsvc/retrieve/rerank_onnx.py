"""The rerank stage's cross-encoder on ONNX Runtime: the same single-logit sentence-transformers CrossEncoder,
exported once (onnx_runtime.py) and run with the two members CrossEncoderReranker uses, `tokenizer` and
`predict`. Scores agree with torch's (tests/retrieve/test_onnx_engines.py: logits within 1e-3, Spearman >= 0.99).

As for the bi-encoders, the first load caches the tokenizer and what the export is keyed by
(onnx_runtime.cached_model_facts); later loads import neither sentence-transformers nor torch."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from searchsvc.retrieve import onnx_runtime


class OnnxCrossEncoder:
    def __init__(self, model_path: str, cache_dir: Path, threads: int, max_length: int, model_id: str = "") -> None:
        @functools.cache
        def reference() -> Any:  # the CrossEncoder: loaded only if something is not cached yet
            from sentence_transformers import CrossEncoder

            return CrossEncoder(model_path, device="cpu", max_length=max_length)

        def read() -> tuple[dict[str, Any], str]:
            model = reference()
            source = onnx_runtime.TransformerSource.of(model.model, model.tokenizer)
            facts = dict(num_labels=model.num_labels, input_names=source.input_names, pad_id=model.tokenizer.pad_token_id,
                         pad_token=model.tokenizer.pad_token, pad_type_id=model.tokenizer.pad_token_type_id,
                         digest=source.digest, num_heads=source.num_heads, hidden_size=source.hidden_size)
            return facts, model.tokenizer.backend_tokenizer.to_str()

        model_id = f"cross-encoder:{model_id or model_path}"
        facts, tokenizer_json = onnx_runtime.cached_model_facts(model_path, model_id, cache_dir, "cross-encoder", read)
        if facts["num_labels"] != 1:
            raise ValueError(f"{model_path} has {facts['num_labels']} outputs; a reranker needs a single relevance logit")
        self.tokenizer = onnx_runtime.BatchTokenizer(tokenizer_json, max_length, facts["input_names"], facts["pad_id"],
                                                     facts["pad_token"], facts["pad_type_id"])
        source = onnx_runtime.TransformerSource(lambda: reference().model, facts["digest"], facts["input_names"],
                                                facts["num_heads"], facts["hidden_size"])
        self.encoder = onnx_runtime.export_transformer(source, model_id, cache_dir, threads, output="logits")

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, activation_fn: Callable | None = None,
                show_progress_bar: bool = False, **_: Any) -> np.ndarray:
        """One logit per (query, passage) pair, through `activation_fn` (a torch module) if given, as
        CrossEncoder.predict does. Pairs are truncated longest-first to max_length tokens."""
        logits = []
        for a in range(0, len(pairs), batch_size):
            batch = pairs[a : a + batch_size]
            inputs = self.tokenizer([(q, p) for q, p in batch])
            with self.encoder.lock:
                logits.append(self.encoder.run(**inputs)[:, 0])
        scores = np.concatenate(logits) if logits else np.zeros(0, np.float32)
        if activation_fn is not None:
            import torch

            scores = activation_fn(torch.from_numpy(scores)).numpy()
        return scores
