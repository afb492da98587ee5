"""Typed metadata and filters: proto <-> domain (searchsvc/domain/filters.py). Every error names the field path."""

from __future__ import annotations

import math

from searchsvc.domain import filters
from searchsvc.domain.filters import Condition, Filter, MetadataValue, Timestamp
from searchsvc.domain.types import RESERVED_METADATA
from searchsvc.errors import InvalidArgument
from searchsvc.v1 import searchsvc_pb2 as pb


def value_from_pb(v: pb.MetadataValue, path: str) -> MetadataValue:
    kind = v.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(path, "a value needs one of string_value, int_value, double_value, bool_value, "
                                    "timestamp_value, string_list_value")
    if kind == "double_value" and not math.isfinite(v.double_value):
        raise InvalidArgument(f"{path}.double_value", "must be finite")
    if kind == "int_value" and abs(v.int_value) > filters.MAX_SAFE_INTEGER:
        raise InvalidArgument(f"{path}.int_value", "must be within ±2^53 (integers compare as numbers in ranges)")
    if kind == "timestamp_value":
        try:
            return Timestamp(v.timestamp_value.ToMicroseconds())  # checks protobuf's range
        except ValueError:
            raise InvalidArgument(f"{path}.timestamp_value", "outside 0001-01-01..9999-12-31") from None
    if kind == "string_list_value":
        return tuple(v.string_list_value.values)
    return getattr(v, kind)


def value_to_pb(value: MetadataValue) -> pb.MetadataValue:
    if isinstance(value, bool):
        return pb.MetadataValue(bool_value=value)
    if isinstance(value, str):
        return pb.MetadataValue(string_value=value)
    if isinstance(value, int):
        return pb.MetadataValue(int_value=value)
    if isinstance(value, float):
        return pb.MetadataValue(double_value=value)
    if isinstance(value, Timestamp):
        out = pb.MetadataValue()
        out.timestamp_value.FromMicroseconds(value.micros)
        return out
    return pb.MetadataValue(string_list_value=pb.StringList(values=list(value)))


def document_metadata(d: pb.Document, path: str) -> dict[str, MetadataValue]:
    """`metadata` (strings) and `typed_metadata` of one document, as one map."""
    merged: dict[str, MetadataValue] = dict(d.metadata)
    for key in sorted(d.typed_metadata):
        where = f"{path}.typed_metadata[{key!r}]"
        if not filters.TYPED_KEY.match(key):
            raise InvalidArgument(where, f"key {filters.TYPED_KEY_RULE}")
        if key in merged:
            raise InvalidArgument(where, "the key is also in metadata")
        if key in RESERVED_METADATA:
            raise InvalidArgument(where, f"reserved key (the service sets {', '.join(RESERVED_METADATA)})")
        merged[key] = value_from_pb(d.typed_metadata[key], where)
    return merged


def metadata_to_pb(metadata: filters.Metadata, hit: pb.Hit) -> None:
    for key, value in metadata.items():
        hit.typed_metadata[key].CopyFrom(value_to_pb(value))


def filter_from_pb(f: pb.Filter, path: str = "where") -> Filter:
    out = Filter(
        must=tuple(_clause(c, f"{path}.must[{i}]") for i, c in enumerate(f.must)),
        should=tuple(_clause(c, f"{path}.should[{i}]") for i, c in enumerate(f.should)),
        must_not=tuple(_clause(c, f"{path}.must_not[{i}]") for i, c in enumerate(f.must_not)),
    )
    return out


def _clause(c: pb.FilterClause, path: str) -> filters.Clause:
    which = c.WhichOneof("condition")
    if which is None:
        raise InvalidArgument(path, "a clause needs a condition (eq, ne, any_of, none_of, range, exists, text_match, "
                                    "contains) or a nested filter")
    if which == "filter":
        if path.count(".filter") + 1 >= filters.MAX_DEPTH:  # checked here too: recursion must stop before Python's
            raise InvalidArgument(f"{path}.filter", f"filters nest at most {filters.MAX_DEPTH} deep")
        return filter_from_pb(c.filter, f"{path}.filter")
    if which in ("eq", "ne"):
        return Condition(c.key, which, (value_from_pb(getattr(c, which), f"{path}.{which}"),))
    if which in ("any_of", "none_of"):
        values = getattr(c, which).values
        return Condition(c.key, which, tuple(value_from_pb(v, f"{path}.{which}.values[{i}]") for i, v in enumerate(values)))
    if which == "contains":
        return Condition(c.key, "eq", (c.contains,))
    if which == "range":
        bounds = {n: value_from_pb(getattr(c.range, n), f"{path}.range.{n}") for n in ("gt", "gte", "lt", "lte")
                  if c.range.HasField(n)}
        for name, b in bounds.items():
            if not (isinstance(b, Timestamp) or filters.is_number(b)):
                raise InvalidArgument(f"{path}.range.{name}", f"a range bound is a number or a timestamp, not a {filters.kind_of(b)}")
        return Condition(c.key, "range", **bounds)
    if which == "exists":
        return Condition(c.key, "exists", exists=c.exists)
    return Condition(c.key, "text_match", text=c.text_match)
