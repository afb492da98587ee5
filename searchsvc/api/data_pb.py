"""proto <-> domain for managing data (issue 19): stored documents, aliases, snapshots."""

from __future__ import annotations

from typing import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from searchsvc.api import metadata_pb
from searchsvc.collections.aliases import AliasAction
from searchsvc.collections.snapshots import SnapshotInfo
from searchsvc.domain.documents import DocumentView, StoredDocument
from searchsvc.domain.types import CollectionConfig
from searchsvc.errors import InvalidArgument, ResourceExhausted
from searchsvc.v1 import searchsvc_pb2 as pb

_VIEWS = {
    pb.DOCUMENT_VIEW_BASIC: DocumentView.BASIC,
    pb.DOCUMENT_VIEW_FULL: DocumentView.FULL,
    pb.DOCUMENT_VIEW_FULL_WITH_VECTORS: DocumentView.FULL_WITH_VECTORS,
}


def view_from_pb(view: int, default: DocumentView) -> DocumentView:
    if view == pb.DOCUMENT_VIEW_UNSPECIFIED:
        return default
    if view not in _VIEWS:
        raise InvalidArgument("view", f"unknown document view {view}")
    return _VIEWS[view]


def document_to_pb(d: StoredDocument, view: DocumentView) -> pb.StoredDocument:
    out = pb.StoredDocument(id=d.id, title=d.title, text=d.text if view is not DocumentView.BASIC else "",
                            metadata={k: v for k, v in d.metadata.items() if isinstance(v, str)})
    for key, value in d.metadata.items():
        if not isinstance(value, str):
            out.typed_metadata[key].CopyFrom(metadata_pb.value_to_pb(value))
    for c in d.chunks:
        out.chunks.add(id=c.id, index=c.index, start_char=c.start_char, end_char=c.end_char,
                       vector=d.vectors[c.id].tolist() if c.id in d.vectors else [])
    return out


def documents_to_pb(ids: Sequence[str], found: dict[str, StoredDocument], view: DocumentView, max_bytes: int,
                    response) -> int:
    """Append the documents of `ids` that were found to `response.documents`, in order, while the response stays
    within `max_bytes`. Returns how many of `ids` were handled (all, unless the budget ran out)."""
    size = response.ByteSize()
    for i, doc_id in enumerate(ids):
        if doc_id not in found:
            continue
        document = document_to_pb(found[doc_id], view)
        size += document.ByteSize() + 6  # the field's tag and length prefix
        if size > max_bytes:
            return i
        response.documents.append(document)
    return len(ids)


def get_documents_response(ids: Sequence[str], found: dict[str, StoredDocument], view: DocumentView,
                           max_bytes: int) -> pb.GetDocumentsResponse:
    response = pb.GetDocumentsResponse(not_found_ids=[i for i in ids if i not in found])
    if documents_to_pb(ids, found, view, max_bytes, response) < len(ids):
        raise ResourceExhausted(f"the {len(found)} documents exceed the response size limit ({max_bytes} bytes): "
                                "ask for fewer ids, or for view BASIC")
    return response


def alias_actions_from_pb(actions: Sequence[pb.AliasAction]) -> list[AliasAction]:
    out = []
    for i, a in enumerate(actions):
        kind = a.WhichOneof("action")
        if kind == "delete":
            out.append(AliasAction("delete", a.delete))
        elif kind in ("create", "repoint"):
            target = getattr(a, kind)
            out.append(AliasAction(kind, target.alias, target.collection))
        else:
            raise InvalidArgument(f"actions[{i}]", "must set create, delete or repoint")
    return out


def aliases_to_pb(aliases: dict[str, tuple[str, str]]) -> list[pb.Alias]:
    """alias -> (collection, where the alias is kept)."""
    return [pb.Alias(alias=a, collection=c, backend=b) for a, (c, b) in sorted(aliases.items())]


def snapshot_to_pb(s: SnapshotInfo) -> pb.Snapshot:
    m = s.manifest
    created = Timestamp()
    created.FromNanoseconds(int(m.created * 1e9))
    out = pb.Snapshot(name=s.name, collection=m.collection, size_bytes=s.size_bytes, create_time=created,
                      sequence=m.sequence, format_version=m.format_version, document_count=m.document_count,
                      chunk_count=m.chunk_count, sha256=s.sha256)
    out.config.CopyFrom(config_to_pb(CollectionConfig(**m.config)))
    return out


def config_to_pb(cfg: CollectionConfig) -> pb.CollectionConfig:
    return pb.CollectionConfig(
        embedding_model=cfg.embedding_model,
        analyzer=cfg.analyzer,
        chunk_size=cfg.chunk_size,
        chunk_overlap=cfg.chunk_overlap,
        reranker_model=cfg.reranker_model,
        refresh_interval_ms=cfg.refresh_interval_ms,
        language=cfg.language,
        dimension=cfg.dimension,
        dense_index=pb.DenseIndexConfig(
            kind=cfg.dense_index, m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, ef_search=cfg.hnsw_ef_search,
            quantization=cfg.dense_quantization, target_recall=cfg.hnsw_target_recall,
        ),
        backend=cfg.backend,
        keyword_avg_terms=cfg.keyword_avg_terms,
    )
