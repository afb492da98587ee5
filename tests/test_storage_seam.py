"""The search pipeline reads a collection only through the storage seam (searchsvc/storage/base.py): run against
a stand-in that exposes nothing else, every kind of search gives the same hits as on the collection itself."""

from __future__ import annotations

import numpy as np
import pytest

from searchsvc.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.models import ModelRegistry
from searchsvc.pipeline import SearchPipeline
from searchsvc.storage import CollectionStorage
from searchsvc.types import CollectionConfig, Document, Fusion, SearchMode, SearchParams

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
    "dense": SearchParams("", mode=SearchMode.DENSE, query_vector=QUERY),
    "dense exact": SearchParams("", mode=SearchMode.DENSE, query_vector=QUERY, exact=True),
    "keyword": SearchParams("beta electrons", mode=SearchMode.KEYWORD),
    "filtered": SearchParams("alpha gamma", query_vector=QUERY, filter={"kind": "physics"}),
    "filter matching nothing": SearchParams("alpha", query_vector=QUERY, filter={"kind": "none"}),
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
    assert collection.may_match({"kind": "light"}) and not collection.may_match({"kind": "light", "x": "y"})
    assert collection.may_match(None) and not collection.may_match({"kind": "nothing"})
    assert collection.get_chunks(["c#0", "gone#0"]).keys() == {"c#0"}


def test_writes_go_through_the_seam_prepared_by_the_service(collection):
    """Ingest checks, chunks and embeds on the service side (BatchPreparer); the storage takes chunks with
    vectors (upsert) and deletes by document id, and the next search sees both."""
    from searchsvc.ingest.batch import BatchPreparer
    from searchsvc.ingest.chunking import Chunker

    seam = SeamOnly(collection)
    preparer = BatchPreparer(Chunker(512, 0), None, DIM, 10_000)
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
