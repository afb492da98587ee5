"""What the benches feed the service: a synthetic corpus, synthetic embeddings, and closed-loop clients.
Deterministic from a seed, so a run is repeatable on any machine."""

from __future__ import annotations

import random
import threading
import time
from typing import Callable

import numpy as np

from searchsvc.domain.types import Document


class SyntheticCorpus:
    def __init__(self, seed: int = 13, vocab_size: int = 20000) -> None:
        self.rng = random.Random(seed)
        syllables = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "po", "an", "el", "or", "is", "un"]
        self.vocab = list(dict.fromkeys(
            "".join(self.rng.choices(syllables, k=self.rng.randint(2, 4))) for _ in range(vocab_size * 2)
        ))[:vocab_size]
        weights = 1 / np.arange(1, len(self.vocab) + 1) ** 1.07  # Zipf-like
        self.cum = np.cumsum(weights / weights.sum())

    def words(self, n: int) -> list[str]:
        picks = np.searchsorted(self.cum, [self.rng.random() for _ in range(n)])
        return [self.vocab[min(i, len(self.vocab) - 1)] for i in picks]

    def docs(self, n: int, start: int = 0, min_words: int = 20, max_words: int = 60) -> list[Document]:
        return [
            Document(f"doc{i}", " ".join(self.words(self.rng.randint(min_words, max_words))) + ".", metadata={"shard": str(i % 8)})
            for i in range(start, start + n)
        ]


class ClusteredVectors:
    """Synthetic embeddings for loading with Document.vector: unit vectors scattered around 1,000 random centres
    (noise per component 1.4x a centre's), so neighbourhoods exist as they do between topics of real text, but
    are loose enough that a graph index can miss neighbours (at spread 0.9 HNSW found 100% at every setting).
    Uniformly random vectors have no neighbourhoods at all: the worst case for any approximate index, and
    nothing like an embedding model's output."""

    def __init__(self, dimension: int, seed: int = 0, centres: int = 1000, spread: float = 1.4) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.standard_normal((centres, dimension)).astype(np.float32)
        self.spread = spread

    def sample(self, n: int) -> np.ndarray:
        picked = self.centres[self.rng.integers(0, len(self.centres), n)]
        v = picked + self.spread * self.rng.standard_normal(picked.shape).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def closed_loop_rate(call: Callable[[int, int], object], clients: int, seconds: float) -> float:
    """Calls per second from `clients` threads at once, each making its next call as soon as its last returns
    (client c's i-th call is `call(c, i)`)."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def client(c: int) -> None:
        while time.perf_counter() < stop:
            call(c, counts[c])
            counts[c] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def free_port() -> int:
    """A loopback port nothing listens on now (for a child server's /metrics)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
