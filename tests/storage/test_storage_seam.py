"""The storage seam (searchsvc/storage/base.py).

The search pipeline reads a collection only through it: run against a stand-in that exposes nothing else, every
kind of search gives the same hits as on the collection itself. And the Qdrant backend (qdrant-client's local
mode) answers the same searches on the same chunks as the embedded one: equal dense scores, and BM25 scores equal
to tantivy's."""

from __future__ import annotations

import numpy as np
import pytest

from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.filters import from_pairs
from searchsvc.domain.types import CollectionConfig, Document, Fusion, SearchMode, SearchParams
from searchsvc.ingest.batch import DocumentLimits
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.pipeline import SearchPipeline
from searchsvc.storage import CollectionStorage

# Local mode says so where a setting has no effect in it (payload indexes, HNSW parameters): expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning",
                                        "ignore:Local mode performs exact:UserWarning")
DIM = 4
TEXTS = {
    "a": ("alpha particles and helium nuclei", {"kind": "physics"}),
    "b": ("beta decay emits electrons", {"kind": "physics"}),
    "c": ("gamma rays are photons", {"kind": "light"}),
    "d": ("alpha beta gamma are Greek letters", {"kind": "letters"}),
}
SEAM = {n for n in dir(CollectionStorage) if not n.startswith("_")} | set(CollectionStorage.__annotations__)


class SeamOnly:
    """A collection seen through the seam alone: any other attribute is an error."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        if name not in SEAM:
            raise AssertionError(f"the pipeline reached around the storage seam: .{name}")
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    settings = load_settings(index_dir=tmp_path_factory.mktemp("seam"), default_language="en")
    catalog = Catalog(settings, ModelRegistry())
    catalog.open_all()
    coll = catalog.create("c", CollectionConfig("external", "", 0, 0, refresh_interval_ms=-1, dimension=DIM))
    rng = np.random.default_rng(5)
    coll.index_documents([Document(i, t, title=f"title {i}", metadata=m, vector=rng.standard_normal(DIM).tolist())
                          for i, (t, m) in TEXTS.items()])
    yield coll
    catalog.close()


QUERY = [0.5, -0.2, 0.1, 0.9]
CASES = {
    "hybrid rrf": SearchParams("alpha gamma", query_vector=QUERY),
    "hybrid relative score": SearchParams("alpha gamma", query_vector=QUERY, fusion=Fusion.RELATIVE_SCORE),
    "hybrid mmr": SearchParams("alpha gamma", query_vector=QUERY, top_k=3, mmr_lambda=0.5, mmr_candidates=10),
    "dense": SearchParams("", mode=SearchMode.DENSE, query_vector=QUERY),
    "dense exact": SearchParams("", mode=SearchMode.DENSE, query_vector=QUERY, exact=True),
    "keyword": SearchParams("beta electrons", mode=SearchMode.KEYWORD),
    "filtered": SearchParams("alpha gamma", query_vector=QUERY, filter=from_pairs({"kind": "physics"})),
    "filter matching nothing": SearchParams("alpha", query_vector=QUERY, filter=from_pairs({"kind": "none"})),
    "cutoff": SearchParams("alpha gamma", query_vector=QUERY, similarity_cutoff=-0.5),
    "keyword with cutoff": SearchParams("alpha", mode=SearchMode.KEYWORD, query_vector=QUERY, similarity_cutoff=-1.0),
}


@pytest.mark.parametrize("case", CASES)
def test_every_search_reads_only_through_the_seam(collection, case):
    params = CASES[case]
    pipeline = SearchPipeline(ModelRegistry())
    direct = pipeline.search(collection, params)
    seen = pipeline.search(SeamOnly(collection), params)
    found = [(h.chunk_id, h.score, h.text, h.title, h.metadata, h.similarity) for h in direct.hits]
    assert found == [(h.chunk_id, h.score, h.text, h.title, h.metadata, h.similarity) for h in seen.hits]
    assert bool(found) == (case != "filter matching nothing")
    if case == "filtered":
        assert {h.chunk_id for h in direct.hits} == {"a#0", "b#0"}
    if found:
        hit = direct.hits[0]
        assert hit.document_id == hit.chunk_id[0] and hit.title == f"title {hit.document_id}"
        assert hit.metadata == {**TEXTS[hit.document_id][1], "chunk_index": "0", "start_char": "0",
                                "end_char": str(len(TEXTS[hit.document_id][0]))}


def test_the_embedded_collection_implements_the_seam(collection):
    assert isinstance(collection, CollectionStorage)
    assert collection.may_match(from_pairs({"kind": "light"})) and not collection.may_match(from_pairs({"kind": "light", "x": "y"}))
    assert collection.may_match(None) and not collection.may_match(from_pairs({"kind": "nothing"}))
    assert collection.get_chunks(["c#0", "gone#0"]).keys() == {"c#0"}


def test_writes_go_through_the_seam_prepared_by_the_service(collection):
    """Ingest checks, chunks and embeds on the service side (BatchPreparer); the storage takes chunks with
    vectors (upsert) and deletes by document id, and the next search sees both."""
    from searchsvc.ingest.batch import BatchPreparer
    from searchsvc.ingest.chunking import Chunker

    seam = SeamOnly(collection)
    preparer = BatchPreparer(Chunker(512, 0), None, DIM, DocumentLimits(10_000))
    batch = preparer.prepare([
        Document("e", "epsilon is a small number", vector=[0.0, 0.0, 1.0, 0.0]),
        Document("", "no id"),
        Document("f", "needs a vector"),
    ])
    assert [(e.index, e.field) for e in batch.errors] == [(1, "documents[1].id"), (2, "documents[2].vector")]
    assert seam.upsert(batch.document_ids, batch.chunks, batch.vectors) == 0
    pipeline = SearchPipeline(ModelRegistry())
    hits = pipeline.search(seam, SearchParams("", mode=SearchMode.DENSE, query_vector=[0, 0, 1, 0], top_k=1)).hits
    assert [h.chunk_id for h in hits] == ["e#0"] and hits[0].text == "epsilon is a small number"
    assert seam.delete_documents(["e", "nothing"]) == (1, 1)
    hits = pipeline.search(seam, SearchParams("epsilon", mode=SearchMode.KEYWORD)).hits
    assert "e#0" not in [h.chunk_id for h in hits]


@pytest.fixture(scope="module")
def qdrant(collection):
    """The same documents in a Qdrant collection (local mode, in memory), with the embedded one's analyzer."""
    from qdrant_client import QdrantClient

    from searchsvc.storage.qdrant.collection import QdrantCollection

    client = QdrantClient(":memory:")
    coll = QdrantCollection.create(client, "c", collection.config, None, DIM, collection.keyword.analyzer, limits=DocumentLimits(10_000))
    chunks = collection.get_chunks([f"{i}#0" for i in TEXTS])
    ordered = [chunks[f"{i}#0"] for i in TEXTS]
    vectors = np.stack([collection.dense.store.vectors([c.id])[0] for c in ordered])
    assert coll.upsert(list(TEXTS), ordered, vectors) == 0
    yield coll
    client.close()


@pytest.mark.parametrize("case", CASES)
def test_qdrant_answers_like_the_embedded_backend(collection, qdrant, case):
    params = CASES[case]
    pipeline = SearchPipeline(ModelRegistry())
    embedded = pipeline.search(collection, params).hits
    on_qdrant = pipeline.search(SeamOnly(qdrant), params).hits
    assert [h.chunk_id for h in on_qdrant] == [h.chunk_id for h in embedded]
    for ours, theirs in zip(on_qdrant, embedded):
        assert (ours.text, ours.title, ours.metadata, ours.document_id) == (theirs.text, theirs.title, theirs.metadata, theirs.document_id)
        assert ours.score == pytest.approx(theirs.score, rel=1e-4, abs=1e-6)
        for leg in ("dense", "keyword"):
            a, b = getattr(ours, leg), getattr(theirs, leg)
            assert (a is None) == (b is None) and (a is None or (a.rank, round(a.score, 4)) == (b.rank, round(b.score, 4))), leg


def test_qdrant_replaces_and_deletes_whole_documents(qdrant):
    """Re-sending a document replaces its chunks (none of the old ones stay); deletes remove every chunk."""
    from searchsvc.domain.types import Chunk

    before = qdrant.chunk_count
    two = [Chunk("z#0", "z", 0, "zeta one", "", {"kind": "x"}, 0, 8), Chunk("z#1", "z", 1, "zeta two", "", {"kind": "x"}, 9, 17)]
    assert qdrant.upsert(["z"], two, np.eye(2, DIM, dtype=np.float32)) == 0
    assert qdrant.chunk_count == before + 2 and qdrant.document_count == len(TEXTS) + 1
    one = [Chunk("z#0", "z", 0, "zeta again", "", {}, 0, 10)]
    assert qdrant.upsert(["z"], one, np.eye(1, DIM, dtype=np.float32)) == 1
    assert qdrant.get_chunks(["z#0", "z#1"]).keys() == {"z#0"} and qdrant.get_chunks(["z#0"])["z#0"].text == "zeta again"
    assert [s.chunk_id for s in qdrant.keyword_search(qdrant.analyze_query("zeta"), 5)] == ["z#0"]
    assert qdrant.keyword_search(qdrant.analyze_query("zeta"), 5, from_pairs({"kind": "x"})) == []
    assert qdrant.delete_documents(["z", "nothing"]) == (1, 1)
    assert qdrant.chunk_count == before and qdrant.get_chunks(["z#0"]) == {}


def test_qdrant_external_collections_refuse_text_queries_and_count_writes(tmp_path):
    """An external-vector collection on Qdrant answers a query without a vector as the embedded one does
    (INVALID_ARGUMENT on query_vector), chunks of stopwords only are indexed, and every write bumps the version
    kept in Qdrant (answers are cached per version, across servers and restarts)."""
    from qdrant_client import QdrantClient

    from searchsvc.domain.types import Chunk
    from searchsvc.errors import InvalidArgument
    from searchsvc.retrieve.analyzers import get_analyzer
    from searchsvc.retrieve.external import ExternalEmbedding
    from searchsvc.storage.qdrant.collection import QdrantCollection

    config = CollectionConfig("external", "english", 512, 0, dimension=DIM, backend="qdrant")
    client = QdrantClient(":memory:")
    coll = QdrantCollection.create(client, "x", config, ExternalEmbedding(dimension=DIM), DIM, get_analyzer("english"),
                                   limits=DocumentLimits(10_000))
    with pytest.raises(InvalidArgument) as err:
        SearchPipeline(ModelRegistry()).search(SeamOnly(coll), SearchParams("words only"))
    assert err.value.field == "query_vector"
    assert coll.version == 0
    coll.upsert(["s"], [Chunk("s#0", "s", 0, "the of and", "", {}, 0, 10)], np.eye(1, DIM, dtype=np.float32))
    # a write marks its start and its end (odd while under way: storage/qdrant/collection.py), so it adds 2
    assert coll.version == 2 and coll.chunk_count == 1 and coll.writes_in_progress == 0
    report = coll.index_documents([Document("t", "no vector here")])
    assert report.errors[0].field == "documents[0].vector" and coll.version == 4  # a batch is a write, as in the embedded log
    coll.delete_documents(["s"])
    assert coll.version == 6 and coll.chunk_count == 0
