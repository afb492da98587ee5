"""The Qdrant backend (issue 16): a collection as one Qdrant collection, through qdrant-client (a cluster, or
local mode for tests and single-process use)."""
