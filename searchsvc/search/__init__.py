"""The search pipeline and its stages: legs, fusion, rerank, cutoff, MMR, highlights, several collections, deadlines."""
