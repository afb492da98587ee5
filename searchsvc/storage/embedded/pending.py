"""Vectors acked but not yet in the HNSW graph: the dense index's appendable flat tail (issue 41).

A write appends its vectors here and is acked without waiting for the graph; a background worker
(graph_builder.py) moves the oldest rows into the graph a small batch at a time; a search scans what is here
exactly, beside its graph search. Ids only grow, so every pending id is above every graph id, and the store's
rows stay in one order (the graph's rows, then these): moving rows into the graph changes no row's position.

Rows live in fixed blocks: appending never copies what is here, and a block the graph has taken whole is freed
(one growable array would hold up to twice the backlog while it grows, ~1.5 GB more at 1M vectors). By hand:
FAISS's flat indexes can append, but not drop their oldest rows without copying the rest.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

BLOCK_ROWS = 16384  # 24 MB of 384-d float32 per block: a scan pays one matrix product per block


class PendingRows:
    """Rows in id order: `append` at the end, `drop` at the front."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._vectors: list[np.ndarray] = []  # blocks of BLOCK_ROWS rows
        self._ids: list[np.ndarray] = []  # the ids of each block's rows
        self._head = 0  # rows of the first block already taken by the graph
        self._tail = 0  # rows used in the last block
        self._all_ids: np.ndarray | None = None  # every block's ids joined (head rows included), built lazily

    def __len__(self) -> int:
        return len(self._vectors) * BLOCK_ROWS - self._head - (BLOCK_ROWS - self._tail if self._vectors else 0)

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32)
        if len(self) and len(ids) and ids[0] <= self._ids[-1][self._tail - 1]:
            raise ValueError("pending ids must ascend")
        done = 0
        while done < len(ids):
            if not self._vectors or self._tail == BLOCK_ROWS:
                self._vectors.append(np.empty((BLOCK_ROWS, self.dimension), dtype=np.float32))
                self._ids.append(np.empty(BLOCK_ROWS, dtype=np.int64))
                self._tail = 0
            n = min(BLOCK_ROWS - self._tail, len(ids) - done)
            self._vectors[-1][self._tail:self._tail + n] = vectors[done:done + n]
            self._ids[-1][self._tail:self._tail + n] = ids[done:done + n]
            self._tail += n
            done += n
        self._all_ids = None

    def head(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the first `n` rows (at most one block's worth): views, valid until `drop`."""
        n = min(n, len(self), self._block_end(0) - self._head)
        return self._ids[0][self._head:self._head + n], self._vectors[0][self._head:self._head + n]

    def drop(self, n: int) -> None:
        """Forget the first `n` rows (the graph holds them now)."""
        if n > len(self):
            raise ValueError(f"drop {n} of {len(self)} pending rows")
        self._head += n
        while self._vectors and self._head >= self._block_end(0):
            if len(self._vectors) == 1:  # all taken
                self.clear()
                return
            self._head -= BLOCK_ROWS
            self._vectors.pop(0)
            self._ids.pop(0)
            self._all_ids = None

    def clear(self) -> None:
        self._vectors, self._ids, self._head, self._tail, self._all_ids = [], [], 0, 0, None

    def _block_end(self, block: int) -> int:
        return self._tail if block == len(self._vectors) - 1 else BLOCK_ROWS

    def blocks(self):
        """(ids, vectors) views of each block's pending rows, in order."""
        for b, (ids, vectors) in enumerate(zip(self._ids, self._vectors)):
            start, end = (self._head if b == 0 else 0), self._block_end(b)
            yield ids[start:end], vectors[start:end]

    def snapshot(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) views of each block's rows as they stand: still valid after later appends (which write
        past them) and drops (a view keeps its block alive), so a search can scan them without the lock."""
        return list(self.blocks())

    def ids(self) -> np.ndarray:
        """Every pending id, ascending (a view of a cached array: valid until the next append or drop)."""
        if self._all_ids is None:
            self._all_ids = np.concatenate([ids[:self._block_end(b)] for b, ids in enumerate(self._ids)]) if self._ids else \
                np.empty(0, dtype=np.int64)
        return self._all_ids[self._head:]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The pending row (0 = the oldest) of each of `ids`, which must be pending."""
        return np.searchsorted(self.ids(), ids)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """The vectors at these pending rows, as a new array."""
        absolute = np.asarray(rows, dtype=np.int64) + self._head
        out = np.empty((len(absolute), self.dimension), dtype=np.float32)
        blocks, offsets = np.divmod(absolute, BLOCK_ROWS)
        for b in np.unique(blocks).tolist():
            at = blocks == b
            out[at] = self._vectors[b][offsets[at]]
        return out

    def scores(self, vector: np.ndarray) -> np.ndarray:
        """The inner product of `vector` with every pending row, in row order."""
        return scan(self.blocks(), vector)[1]

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes + i.nbytes for v, i in zip(self._vectors, self._ids))


def scan(blocks: Iterable[tuple[np.ndarray, np.ndarray]], vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, inner products with `vector`) of the rows of `blocks` ((ids, vectors) pairs: PendingRows.blocks or a
    snapshot of them), in row order: one matrix product per block."""
    parts = [(ids, vectors @ vector) for ids, vectors in blocks]
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return np.concatenate([i for i, _ in parts]), np.concatenate([s for _, s in parts])
