"""Collection storage without the server: checkpoints plus WAL replay, on real files."""

from searchsvc.collections.catalog import Catalog
from searchsvc.config import load_settings
from searchsvc.domain.types import CollectionConfig, Document, SearchParams
from searchsvc.retrieve.models import ModelRegistry
from searchsvc.search.pipeline import SearchPipeline


def test_snapshot_plus_newer_wal_records_recover_after_a_crash(tmp_path):
    # A tiny WAL threshold: every batch checkpoints, so the state is split between snapshots and the WAL.
    settings = load_settings(index_dir=tmp_path, checkpoint_wal_bytes=1, default_language="en")
    models = ModelRegistry()
    catalog = Catalog(settings, models)
    catalog.open_all()
    coll = catalog.create("c", CollectionConfig("", "", 0, 0, refresh_interval_ms=-1))
    coll.index_documents([Document("a", "alpha particles"), Document("b", "beta decay")])
    assert (tmp_path / "c" / "CURRENT").read_text() == "snap-000000000001"
    assert coll.wal.size() == 0
    coll.checkpoint_wal_bytes = 10**9  # later writes stay in the WAL only
    coll.index_documents([Document("c", "gamma rays")])
    coll.delete_documents(["a"])
    assert coll.wal.size() > 0
    expected = [h.chunk_id for h in SearchPipeline(models).search(coll, SearchParams("alpha beta gamma")).hits]
    # Crash: no close(), no checkpoint. Stop the refresher thread and release the WAL's fd (and its lock), as a
    # dying process does; the files stay as they are.
    coll.keyword.close()  # uncommitted keyword writes are lost, as in a crash
    coll.wal.close()
    coll.dense.kvstore.close()  # its open transaction is rolled back, as in a crash

    reopened = Catalog(settings, models)
    reopened.open_all()
    again = reopened.get("c")
    assert again.document_count == 2 and again.chunk_count == 2
    assert [h.chunk_id for h in SearchPipeline(models).search(again, SearchParams("alpha beta gamma")).hits] == expected
    assert sorted(p.name for p in (tmp_path / "c").glob("snap-*")) == ["snap-000000000001"]
    reopened.close()
