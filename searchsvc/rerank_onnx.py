"""The rerank stage's cross-encoder on ONNX Runtime: the same single-logit sentence-transformers CrossEncoder,
exported once (onnx_runtime.py) and run with the two members CrossEncoderReranker uses, `tokenizer` and
`predict`. Scores agree with torch's (tests/test_onnx_engines.py: logits within 1e-3, Spearman >= 0.99)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from searchsvc.retrieve import onnx_runtime


class OnnxCrossEncoder:
    def __init__(self, model_path: str, cache_dir: Path, threads: int, max_length: int, model_id: str = "") -> None:
        from sentence_transformers import CrossEncoder

        reference = CrossEncoder(model_path, device="cpu", max_length=max_length)
        self.num_labels = reference.num_labels
        if self.num_labels != 1:
            raise ValueError(f"{model_path} has {self.num_labels} outputs; a reranker needs a single relevance logit")
        self.tokenizer = reference.tokenizer
        self.max_length = reference.max_seq_length
        self.encoder = onnx_runtime.export_transformer(
            onnx_runtime.TransformerSource.of(reference.model, self.tokenizer), f"cross-encoder:{model_id or model_path}",
            cache_dir, threads, output="logits",
        )

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, activation_fn: Callable | None = None,
                show_progress_bar: bool = False, **_: Any) -> np.ndarray:
        """One logit per (query, passage) pair, through `activation_fn` (a torch module) if given, as
        CrossEncoder.predict does. Pairs are truncated longest-first to max_length tokens."""
        logits = []
        for a in range(0, len(pairs), batch_size):
            batch = pairs[a : a + batch_size]
            enc = self.tokenizer([q for q, _ in batch], [p for _, p in batch], padding=True, truncation="longest_first",
                                 max_length=self.max_length, return_tensors="np")
            with self.encoder.lock:
                logits.append(self.encoder.run(**{k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})[:, 0])
        scores = np.concatenate(logits) if logits else np.zeros(0, np.float32)
        if activation_fn is not None:
            import torch

            scores = activation_fn(torch.from_numpy(scores)).numpy()
        return scores
