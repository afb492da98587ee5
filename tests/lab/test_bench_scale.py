"""The bare FAISS graph of the HNSW insert bench: the collection's graph, fed outside the service."""

import faiss

from searchsvc.lab.bench.faiss_hnsw_insert import BareGraph
from searchsvc.lab.bench.workload import ClusteredVectors
from searchsvc.storage.embedded.dense import DenseIndexSpec


def test_the_bare_graph_is_the_collections_graph_and_numbers_rows_across_steps():
    vectors = ClusteredVectors(32, seed=1)
    graph = BareGraph(DenseIndexSpec(m=8, ef_construction=40))
    first, second = vectors.sample(1500), vectors.sample(700)
    rate, cpu_ms = graph.add(first)
    graph.add(second)
    assert rate > 0 and cpu_ms > 0
    assert graph.index.ntotal == 2200
    inner = faiss.downcast_index(graph.index.index)
    assert isinstance(inner, faiss.IndexHNSWFlat) and inner.hnsw.efConstruction == 40
    _, ids = graph.index.search(second[:5], 1)  # each vector is its own nearest neighbour, under its row number
    assert ids[:, 0].tolist() == list(range(1500, 1505))


def test_an_sq8_bare_graph_learns_its_ranges_from_the_first_vectors():
    graph = BareGraph(DenseIndexSpec(quantization="sq8"))
    graph.add(ClusteredVectors(16, seed=2).sample(300))
    assert isinstance(faiss.downcast_index(graph.index.index), faiss.IndexHNSWSQ)
