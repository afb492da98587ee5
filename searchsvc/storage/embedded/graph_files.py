"""An HNSW graph's snapshot whose cost follows what changed: the graph rewritten, its vectors appended.

FAISS writes an index whole. At 1M chunks an IndexHNSWFlat snapshot is 1.8 GB, 1.5 GB of it vectors that did
not change: HNSW never removes a row (a delete is a tombstone until compaction builds a new graph), so the rows
only grow. A snapshot directory therefore holds, for an HNSW graph over flat or SQ8 storage:

    graph.faiss    the graph without its storage (faiss.IO_FLAG_SKIP_STORAGE): ~270 B per vector at M=32
    storage.faiss  the storage's header: an empty copy of it (for SQ8, the quantizer's trained ranges)
    ids.i64        the ids of every row: the IndexIDMap's, then the pending rows' (pending.py)
    rows.codes     the storage's codes row after row (float32 vectors or SQ8 codes), then the pending rows
                   encoded the same way: append-only
    graph.json     {"rows": n, "graph_rows": rows the graph holds, "code_size": bytes per row,
                    "lineage": id of the rows file}

The pending rows (acked, not in the graph yet) follow the graph's in the same file and order: when the graph
builder moves them into the graph, their bytes and place in the file stay, so the next snapshot still appends
only rows that are new. (An SQ8 graph's pending rows are written as the codes the graph will give them, and read
back decoded: quantizing those again gives the same codes.)

rows.codes is hard-linked from the previous snapshot when that snapshot's file holds this graph's first rows,
and only the rows added since are written after them. Linked files share one inode, so the previous snapshot's
file grows too; it stays valid, because graph.json names how many leading rows belong to it and a reader (or a
snapshot archive) reads only those. A "lineage" names one such chain of links: it is born with a fresh file
(a new graph, a compaction) and the writer keeps it with the count of rows it knows the file holds (RowsFile).
Where the previous snapshot is of another lineage, or hard links fail, the file is written whole.

By hand on faiss's own reader and writer: FAISS has no incremental snapshot (its on-disk formats are whole
indexes or mmap'ed whole indexes), and LlamaIndex's FaissVectorStore persists through write_index.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from searchsvc.errors import DataLoss
from searchsvc.storage.embedded.pending import BLOCK_ROWS, PendingRows

GRAPH_FILE = "graph.faiss"
STORAGE_FILE = "storage.faiss"
IDS_FILE = "ids.i64"
ROWS_FILE = "rows.codes"
LAYOUT_FILE = "graph.json"
# A failed hard link that only means "this filesystem can't": write the file whole instead.
_NO_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
_READ_BLOCK = 1 << 30  # a single read(2) returns at most ~2 GiB on Linux


@dataclass(frozen=True)
class RowsFile:
    """What a writer knows of its rows file: its lineage, and how many leading rows hold the graph's own."""

    lineage: str
    rows: int


def appendable(index: Any) -> bool:
    """True for an IndexIDMap over an HNSW graph whose storage this module can write row by row."""
    inner = faiss.downcast_index(index.index)
    return isinstance(inner, faiss.IndexHNSW) and _empty_like(faiss.downcast_index(inner.storage)) is not None


def is_graph_snapshot(directory: Path) -> bool:
    return (directory / LAYOUT_FILE).exists()


def write(index: Any, directory: Path, previous: Path | None, known: RowsFile | None, pending: PendingRows | None = None) -> RowsFile:
    """Write `index` (appendable) and the `pending` rows after its own into `directory`; `previous`: the snapshot
    directory to link the rows file from, `known`: what the caller learnt of its rows file by the last read or
    write. Returns what it knows now. The caller fsyncs the directory and makes it live (the collection's
    docstore commit)."""
    inner = faiss.downcast_index(index.index)
    storage = faiss.downcast_index(inner.storage)
    g, size = index.ntotal, storage.code_size
    waiting = len(pending) if pending is not None else 0
    n = g + waiting
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ROWS_FILE
    target.unlink(missing_ok=True)  # a leftover link: opening it "wb" would truncate the file it shares
    lineage, start = _link_previous(previous, target, known, size)
    codes = faiss.rev_swig_ptr(storage.codes.data(), g * size) if g else np.empty(0, dtype=np.uint8)
    with open(target, "r+b" if start else "wb") as f:
        f.seek(start * size)
        f.write(memoryview(codes[min(start, g) * size:]))
        if waiting:
            skip = max(start - g, 0)  # pending rows the file already holds
            for block_ids, block in pending.blocks():
                if skip >= len(block_ids):
                    skip -= len(block_ids)
                    continue
                f.write(memoryview(storage.sa_encode(np.ascontiguousarray(block[skip:]))))
                skip = 0
        f.truncate(n * size)  # rows past n: a failed attempt's, which no graph.json names
        f.flush()
        os.fsync(f.fileno())
    faiss.write_index(inner, str(directory / GRAPH_FILE), faiss.IO_FLAG_SKIP_STORAGE)
    faiss.write_index(_empty_like(storage), str(directory / STORAGE_FILE))
    ids = faiss.rev_swig_ptr(index.id_map.data(), g) if g else np.empty(0, dtype=np.int64)
    if waiting:
        ids = np.concatenate([ids, pending.ids()])
    ids.tofile(directory / IDS_FILE)
    layout = {"rows": n, "graph_rows": g, "code_size": size, "lineage": lineage}
    (directory / LAYOUT_FILE).write_text(json.dumps(layout), encoding="utf-8")
    return RowsFile(lineage, n)


def read(directory: Path) -> tuple[Any, RowsFile, PendingRows]:
    """The IndexIDMap over the HNSW graph that `directory` holds, what is known of its rows file, and its pending
    rows. DataLoss when a file holds less than graph.json names."""
    layout = _layout(directory)
    rows, size = int(layout["rows"]), int(layout["code_size"])
    g = int(layout.get("graph_rows", rows))  # snapshots from before pending rows: the graph held every row
    graph = faiss.read_index(str(directory / GRAPH_FILE), faiss.IO_FLAG_SKIP_STORAGE)
    storage = faiss.read_index(str(directory / STORAGE_FILE))
    if graph.ntotal != g or storage.code_size != size:
        raise DataLoss(f"{directory.name}: its graph holds {graph.ntotal} rows of {storage.code_size} bytes, "
                       f"its {LAYOUT_FILE} names {g} of {size}")
    ids = np.fromfile(directory / IDS_FILE, dtype=np.int64)
    if len(ids) != rows:
        raise DataLoss(f"{directory.name}/{IDS_FILE} holds {len(ids)} ids for {rows} rows")
    # Read straight into the storage's own buffer: reading into numpy first would hold the vectors twice.
    storage.codes.resize(g * size)
    pending = PendingRows(storage.d)
    with open(directory / ROWS_FILE, "rb", buffering=0) as f:
        if g:
            _read_exactly(f, faiss.rev_swig_ptr(storage.codes.data(), g * size), directory)
        for start in range(g, rows, BLOCK_ROWS):  # pending rows a block at a time, decoded into `pending`
            codes = np.empty((min(BLOCK_ROWS, rows - start), size), dtype=np.uint8)
            _read_exactly(f, codes.reshape(-1), directory)
            pending.append(ids[start:start + len(codes)], storage.sa_decode(codes))
    storage.ntotal = g
    graph.storage, graph.own_fields = storage, True
    storage.this.disown()  # the graph deletes it now
    index = id_map_over(graph, ids[:g])
    graph.this.disown()  # the IDMap deletes it now
    return index, RowsFile(str(layout["lineage"]), rows), pending


def _read_exactly(f: Any, view: np.ndarray, directory: Path) -> None:
    got = 0
    while got < len(view) and (n := f.readinto(memoryview(view[got:got + _READ_BLOCK]))):
        got += n
    if got < len(view):
        raise DataLoss(f"{directory.name}/{ROWS_FILE} holds fewer rows than its {LAYOUT_FILE} names")


def id_map_over(inner: Any, ids: np.ndarray) -> Any:
    """An IndexIDMap over `inner` (which it deletes in the end: the caller gives up its own ownership) with these
    ids, one per row. IndexIDMap's constructor takes only an empty index: wrap an empty stand-in, then point it at
    the real one."""
    index = faiss.IndexIDMap(faiss.IndexFlat(inner.d, inner.metric_type))
    index.index, index.ntotal, index.is_trained, index.own_fields = inner, inner.ntotal, inner.is_trained, True
    faiss.copy_array_to_vector(np.ascontiguousarray(ids, dtype=np.int64), index.id_map)
    return index


def committed_sizes(directory: Path) -> dict[str, int]:
    """{file name: bytes} for the files of `directory` that may be longer than what it names (the rows file,
    shared with later snapshots): what a copy of this snapshot must take of them."""
    if not is_graph_snapshot(directory):
        return {}
    layout = _layout(directory)
    return {ROWS_FILE: int(layout["rows"]) * int(layout["code_size"])}


def _link_previous(previous: Path | None, target: Path, known: RowsFile | None, size: int) -> tuple[str, int]:
    """(lineage, rows already in `target`): the previous snapshot's rows file linked at `target` when it is the
    file `known` describes; else a new lineage and nothing there."""
    fresh = secrets.token_hex(8), 0
    if known is None or previous is None or not is_graph_snapshot(previous):
        return fresh
    layout = _layout(previous)
    source = previous / ROWS_FILE
    if layout.get("lineage") != known.lineage or int(layout["code_size"]) != size or source.stat().st_size < known.rows * size:
        return fresh
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return fresh
        raise
    return known.lineage, known.rows


def _layout(directory: Path) -> dict:
    return json.loads((directory / LAYOUT_FILE).read_text(encoding="utf-8"))


def _empty_like(storage: Any) -> Any | None:
    """An empty index with `storage`'s parameters (an SQ8 quantizer's trained ranges), or None for a kind of
    storage whose rows this module does not write."""
    if isinstance(storage, faiss.IndexScalarQuantizer):
        empty = faiss.IndexScalarQuantizer(storage.d, storage.sq.qtype, storage.metric_type)
        faiss.copy_array_to_vector(faiss.vector_to_array(storage.sq.trained), empty.sq.trained)
        empty.is_trained = storage.is_trained
        return empty
    if isinstance(storage, faiss.IndexFlat):
        return faiss.IndexFlat(storage.d, storage.metric_type)
    return None
