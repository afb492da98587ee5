"""Typed metadata and the filter language (issue 18): what a filter means, independent of any index.

Metadata values are strings, integers, floats, booleans, timestamps or lists of strings. A filter is Qdrant's
and Elasticsearch's boolean shape: every `must` clause holds, at least one `should` clause holds (when there are
any), and no `must_not` clause holds; a clause is a condition on one key or a nested filter. LlamaIndex's
MetadataFilters map onto it (AND -> must, OR -> should, NOT -> must_not; EQ, NE, IN, NIN, GT, GTE, LT, LTE,
CONTAINS, TEXT_MATCH, IS_EMPTY onto the operators below).

Conditions, with the kinds they compare (types are strict, as in Qdrant: the string "5" never equals 5):
- eq / ne / any_of / none_of (LlamaIndex EQ, NE, IN, NIN): strings, integers, booleans. A list of strings matches when any element does
  (Elasticsearch's and Qdrant's array semantics); `contains` is LlamaIndex's name for that test. ne and none_of
  are the negations, so a chunk without the key passes them.
- range (gt, gte, lt, lte): numbers (integers and floats compared as numbers) or timestamps, never both.
- exists: the key holds something other than an empty list (false: LlamaIndex's IS_EMPTY).
- text_match: the key's string value, analyzed by the collection's analyzer, holds every term of the text
  (strings only, not lists: Korean morphemes, English stems); a text without terms (stopwords) matches nothing.

`matches` is the definition; every index (embedded postings, tantivy, Qdrant) must agree with it, and the tests
check them against it on the same documents.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Mapping, Union

from searchsvc.errors import InvalidArgument

MAX_DEPTH = 8  # nested filters, counting the top one
MAX_CLAUSES = 256  # conditions and nested filters in one filter, all levels together
MAX_VALUES = 1024  # values in one any_of / none_of
# Keys of typed metadata (anything but a string map value) and of every filter condition: they become tantivy
# JSON paths and Qdrant payload paths, where dots and quotes have a meaning.
TYPED_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
TYPED_KEY_RULE = "must be 1-64 characters of [A-Za-z0-9_-] starting with a letter, digit or '_'"
MAX_SAFE_INTEGER = 2**53  # integers compare as numbers in ranges: exact as doubles up to here


@dataclass(frozen=True, order=True)
class Timestamp:
    """A point in time, microseconds since the Unix epoch (UTC)."""

    micros: int


Scalar = Union[str, int, float, bool, Timestamp]
MetadataValue = Union[Scalar, tuple[str, ...]]
Metadata = Mapping[str, MetadataValue]

Kind = Literal["string", "integer", "float", "bool", "timestamp", "list"]


def kind_of(value: MetadataValue) -> Kind:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, tuple):
        return "list"
    raise TypeError(f"not a metadata value: {value!r}")


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Condition:
    key: str
    op: Literal["eq", "ne", "any_of", "none_of", "range", "exists", "text_match"]
    values: tuple[Scalar, ...] = ()  # eq / ne: one; any_of / none_of: several
    gt: float | Timestamp | None = None
    gte: float | Timestamp | None = None
    lt: float | Timestamp | None = None
    lte: float | Timestamp | None = None
    exists: bool = True
    text: str = ""

    @property
    def negated(self) -> bool:
        return self.op in ("ne", "none_of")


@dataclass(frozen=True)
class Filter:
    must: tuple[Clause, ...] = ()
    should: tuple[Clause, ...] = ()
    must_not: tuple[Clause, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.must or self.should or self.must_not)

    def conditions(self) -> Iterator[Condition]:
        for clause in (*self.must, *self.should, *self.must_not):
            if isinstance(clause, Filter):
                yield from clause.conditions()
            else:
                yield clause


Clause = Union[Condition, Filter]


def from_pairs(pairs: Mapping[str, str]) -> Filter | None:
    """The original filter (exact string pairs, all required) in the language."""
    return Filter(must=tuple(Condition(k, "eq", (v,)) for k, v in sorted(pairs.items()))) if pairs else None


def both(a: Filter | None, b: Filter | None) -> Filter | None:
    if a and b:
        return Filter(must=(a, b))
    return a or b or None


# --- checks (the service maps the proto into these types, then calls `check` with the field path)


def check(f: Filter, path: str = "where") -> Filter:
    """Raise InvalidArgument naming the first bad field (`where.must[1].range.gte`)."""
    count = [0]
    _check_filter(f, path, 1, count)
    return f


def _check_filter(f: Filter, path: str, depth: int, count: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise InvalidArgument(path, f"filters nest at most {MAX_DEPTH} deep")
    for name, clauses in (("must", f.must), ("should", f.should), ("must_not", f.must_not)):
        for i, clause in enumerate(clauses):
            count[0] += 1
            where = f"{path}.{name}[{i}]"
            if count[0] > MAX_CLAUSES:
                raise InvalidArgument(where, f"a filter holds at most {MAX_CLAUSES} clauses")
            if isinstance(clause, Filter):
                _check_filter(clause, f"{where}.filter", depth + 1, count)
            else:
                _check_condition(clause, where)


def _check_condition(c: Condition, path: str) -> None:
    if not TYPED_KEY.match(c.key):
        raise InvalidArgument(f"{path}.key", TYPED_KEY_RULE)
    if c.op in ("eq", "ne", "any_of", "none_of"):
        if c.op in ("any_of", "none_of") and not 1 <= len(c.values) <= MAX_VALUES:
            raise InvalidArgument(f"{path}.{c.op}.values", f"needs 1 to {MAX_VALUES} values")
        for i, v in enumerate(c.values):
            where = f"{path}.{c.op}" if c.op in ("eq", "ne") else f"{path}.{c.op}.values[{i}]"
            if kind_of(v) not in ("string", "integer", "bool"):
                raise InvalidArgument(where, f"compares strings, integers or booleans, not a {kind_of(v)} (use range)")
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_SAFE_INTEGER:
                raise InvalidArgument(where, "integers must be within ±2^53")
    elif c.op == "range":
        bounds = {n: getattr(c, n) for n in ("gt", "gte", "lt", "lte") if getattr(c, n) is not None}
        if not bounds:
            raise InvalidArgument(f"{path}.range", "needs at least one of gt, gte, lt, lte")
        kinds = {"timestamp" if isinstance(b, Timestamp) else "number" for b in bounds.values()}
        for name, b in bounds.items():
            if not (isinstance(b, Timestamp) or (is_number(b) and math.isfinite(b))):
                raise InvalidArgument(f"{path}.range.{name}", "must be a finite number or a timestamp")
            if len(kinds) > 1:
                raise InvalidArgument(f"{path}.range.{name}", "bounds of one range are all numbers or all timestamps")
        if "gt" in bounds and "gte" in bounds:
            raise InvalidArgument(f"{path}.range.gte", "set gt or gte, not both")
        if "lt" in bounds and "lte" in bounds:
            raise InvalidArgument(f"{path}.range.lte", "set lt or lte, not both")
    elif c.op == "text_match":
        if not c.text.strip():
            raise InvalidArgument(f"{path}.text_match", "must not be empty")


# --- the definition


def matches(f: Filter | None, metadata: Metadata, analyze: Callable[[str], Iterable[str]] = str.split) -> bool:
    """Whether a chunk with `metadata` passes `f` (None passes everything)."""
    if not f:
        return True
    clause = lambda c: matches(c, metadata, analyze) if isinstance(c, Filter) else _holds(c, metadata, analyze)  # noqa: E731
    return (all(clause(c) for c in f.must) and (not f.should or any(clause(c) for c in f.should))
            and not any(clause(c) for c in f.must_not))


def _holds(c: Condition, metadata: Metadata, analyze: Callable[[str], Iterable[str]]) -> bool:
    value = metadata.get(c.key)
    if c.op in ("eq", "ne", "any_of", "none_of"):
        found = any(same_value(v, value) for v in c.values)
        return not found if c.negated else found
    if c.op == "exists":
        present = value is not None and value != ()
        return present == c.exists
    if c.op == "range":
        bound = next(b for b in (c.gt, c.gte, c.lt, c.lte) if b is not None)
        if isinstance(bound, Timestamp) != isinstance(value, Timestamp) or not (isinstance(value, Timestamp) or is_number(value)):
            return False
        return ((c.gt is None or value > c.gt) and (c.gte is None or value >= c.gte)
                and (c.lt is None or value < c.lt) and (c.lte is None or value <= c.lte))
    if c.op == "text_match":
        wanted = set(analyze(c.text))
        return isinstance(value, str) and bool(wanted) and wanted <= set(analyze(value))
    raise ValueError(c.op)


def same_value(wanted: Scalar, value: MetadataValue | None) -> bool:
    """eq's test: the same kind and value, or a list holding the string."""
    if isinstance(value, tuple):
        return isinstance(wanted, str) and wanted in value
    return value is not None and kind_of(wanted) == kind_of(value) and wanted == value


# --- exact-match terms: how eq / any_of / exists reach an inverted index (tantivy's `meta` field, Qdrant's `meta`
# payload array, the embedded postings). One term per string (or list element), integer and boolean value, plus
# one per present key. The separator says the kind, so "5" and 5 never meet; strings keep the original
# "key\x1fvalue" form, which older collections already hold.

_SEPARATOR = {"string": "\x1f", "integer": "\x1d", "bool": "\x1e"}
_PRESENT = "\x1c"


def value_term(key: str, value: Scalar) -> str:
    kind = kind_of(value)
    text = ("true" if value else "false") if kind == "bool" else str(value)
    return f"{key}{_SEPARATOR[kind]}{text}"


def present_term(key: str) -> str:
    return f"{key}{_PRESENT}"


def exact_terms(metadata: Metadata) -> list[str]:
    terms = []
    for key, value in metadata.items():
        if isinstance(value, tuple):
            terms.extend(value_term(key, v) for v in value)
        elif kind_of(value) in _SEPARATOR:
            terms.append(value_term(key, value))
        if value != ():
            terms.append(present_term(key))
    return terms


def range_values(metadata: Metadata) -> Iterator[tuple[str, str, float]]:
    """(kind "number" or "timestamp", key, value as a float: timestamps in microseconds, exact below 2^53)."""
    for key, value in metadata.items():
        if is_number(value):
            yield "number", key, float(value)
        elif isinstance(value, Timestamp):
            yield "timestamp", key, float(value.micros)


# --- JSON: how typed metadata is stored (WAL records, the docstore, Qdrant payloads). JSON keeps strings,
# integers, floats, booleans and lists apart; a timestamp is {"$timestamp": microseconds}.


def to_json(metadata: Metadata) -> dict:
    return {k: _json_value(v) for k, v in metadata.items()}


def _json_value(v: MetadataValue):
    if isinstance(v, Timestamp):
        return {"$timestamp": v.micros}
    if isinstance(v, tuple):
        return list(v)
    return v


def from_json(stored: Mapping) -> dict[str, MetadataValue]:
    return {k: _value_from_json(v) for k, v in stored.items()}


def _value_from_json(v) -> MetadataValue:
    if isinstance(v, dict):
        return Timestamp(int(v["$timestamp"]))
    if isinstance(v, list):
        return tuple(v)
    return v


def has_typed_values(metadata: Metadata) -> bool:
    return any(not isinstance(v, str) for v in metadata.values())
