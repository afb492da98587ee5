"""Similarity cutoff with LlamaIndex SimilarityPostprocessor semantics (keep score >= cutoff; no score: drop)."""

from __future__ import annotations

from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.schema import NodeWithScore, TextNode

from searchsvc.domain.types import Hit


def cutoff_score(hit: Hit) -> float | None:
    """The score a cutoff compares: the rerank score when reranking ran, else the query-chunk cosine."""
    return hit.rerank_score if hit.rerank_score is not None else hit.similarity


def apply_similarity_cutoff(hits: list[Hit], cutoff: float) -> list[Hit]:
    """Keep hits whose `cutoff_score` passes, in order. Never applied to RRF scores."""
    wrapped = [NodeWithScore(node=TextNode(id_=h.chunk_id, text=""), score=cutoff_score(h)) for h in hits]
    kept = {n.node.node_id for n in SimilarityPostprocessor(similarity_cutoff=cutoff).postprocess_nodes(wrapped)}
    return [h for h in hits if h.chunk_id in kept]
