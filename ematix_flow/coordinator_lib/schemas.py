"""Output schemas of plan nodes from ``EXPLAIN`` (only needed when a whole stage produced no rows).

Producers report the schema of the batches they write; a stage whose every partition is empty has
none to report, and the Python API exposes no schema on physical plan nodes. So, only then, the
submitter asks DataFusion for ``EXPLAIN`` with ``show_schema`` and parses the node's schema text.
"""

from __future__ import annotations

import re

import pyarrow as pa
from datafusion import SessionContext

from ematix_flow.errors import PlanningError

_SIMPLE: dict[str, pa.DataType] = {
    "Null": pa.null(),
    "Boolean": pa.bool_(),
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Float16": pa.float16(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Utf8": pa.string(),
    "LargeUtf8": pa.large_string(),
    "Utf8View": pa.string_view(),
    "Binary": pa.binary(),
    "LargeBinary": pa.large_binary(),
    "BinaryView": pa.binary_view(),
    "Date32": pa.date32(),
    "Date64": pa.date64(),
}
_UNITS = {"Second": "s", "Millisecond": "ms", "Microsecond": "us", "Nanosecond": "ns"}


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesised group opening at ``text[start] == '('``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    raise PlanningError(f"unbalanced type text: {text[start : start + 60]}")


def _type_at(text: str, i: int) -> tuple[pa.DataType, bool, int] | None:
    """Parse ``Type[;N]`` at ``i``: (type, nullable, end) or None when no type starts there."""
    m = re.match(r"[A-Z][A-Za-z0-9]*", text[i:])
    if not m:
        return None
    name, j = m.group(0), i + m.end()
    args = ""
    if j < len(text) and text[j] == "(":
        end = _balanced(text, j)
        args, j = text[j + 1 : end - 1], end
    dtype = _make(name, args)
    if dtype is None:
        return None
    nullable = text.startswith(";N", j)
    return dtype, nullable, j + (2 if nullable else 0)


def _make(name: str, args: str) -> pa.DataType | None:
    if not args:
        return _SIMPLE.get(name)
    if name in ("Decimal128", "Decimal256"):
        p, s = (int(x) for x in args.split(","))
        return pa.decimal128(p, s) if name == "Decimal128" else pa.decimal256(p, s)
    if name in ("List", "LargeList"):
        inner = _type_at(args, 0)
        if inner is None:
            return None
        item = pa.field("item", inner[0], True)
        return pa.list_(item) if name == "List" else pa.large_list(item)
    if name == "Timestamp":
        unit, _, tz = args.partition(",")
        tz = tz.strip()
        zone = None if tz in ("", "None") else tz.removeprefix('Some("').removesuffix('")')
        return pa.timestamp(_UNITS.get(unit.strip(), "ns"), zone)
    return None


def parse_schema(text: str) -> pa.Schema:
    """Parse the body of ``schema=[...]`` (``name:Type;N`` items joined by ``, ``)."""
    fields: list[pa.Field] = []
    pos = 0
    while pos < len(text):
        # the name runs to the first ':' followed by a parseable type ending at ', ' or the end
        k = pos
        while True:
            k = text.find(":", k)
            if k < 0:
                raise PlanningError(f"cannot parse schema text near: {text[pos : pos + 60]}")
            got = _type_at(text, k + 1)
            if got and (got[2] == len(text) or text.startswith(", ", got[2])):
                break
            k += 1
        dtype, nullable, end = got
        fields.append(pa.field(text[pos:k], dtype, nullable))
        pos = end + 2
    return pa.schema(fields)


def explain_schemas(ctx: SessionContext, sql: str) -> list[pa.Schema]:
    """Every physical node's output schema, in pre-order."""
    ctx.sql("SET datafusion.explain.show_schema = true").collect()
    try:
        rows = ctx.sql("EXPLAIN " + sql).to_arrow_table().to_pylist()
    finally:
        ctx.sql("SET datafusion.explain.show_schema = false").collect()
    text = next(r["plan"] for r in rows if r["plan_type"] == "physical_plan")
    out = []
    for line in text.splitlines():
        m = re.search(r", schema=\[(.*)\]\s*$", line)
        out.append(parse_schema(m.group(1)) if m and m.group(1) else pa.schema([]))
    return out
