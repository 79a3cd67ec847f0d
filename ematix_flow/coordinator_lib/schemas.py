"""Output schemas of plan nodes from ``EXPLAIN`` (only needed when a whole stage produced no rows).

Producers report the schema of the batches they write; a stage whose every partition is empty has
none to report, and the Python API exposes no schema on physical plan nodes. So, only then, the
submitter asks DataFusion for ``EXPLAIN`` with ``show_schema`` and parses the node's schema text:
``name:Type;N, ...`` where ``Type`` is arrow-rs's ``DataType`` display (a small grammar, parsed by
recursive descent below). A type it does not know is an error, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
_UNITS = {
    "s": "s",
    "Second": "s",
    "ms": "ms",
    "Millisecond": "ms",
    "µs": "us",
    "us": "us",
    "Microsecond": "us",
    "ns": "ns",
    "Nanosecond": "ns",
}
_INTERVALS = {"MonthDayNano": pa.month_day_nano_interval()}  # pyarrow has no YearMonth / DayTime types
_PARAMETRIC = frozenset(
    {
        "Timestamp",
        "Time32",
        "Time64",
        "Duration",
        "Interval",
        "Decimal32",
        "Decimal64",
        "Decimal128",
        "Decimal256",
        "FixedSizeBinary",
        "List",
        "LargeList",
        "ListView",
        "LargeListView",
        "FixedSizeList",
        "Struct",
        "Dictionary",
        "Map",
    }
)


#: What a type looks like where one starts: a capitalised name followed by '(', ';N', ', ' or the end.
_TYPE_START = re.compile(r"[A-Z][A-Za-z0-9]*(\(|;N|, |$)")


class _Parser:
    """Recursive-descent parser over one type text."""

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def fail(self, what: str) -> PlanningError:
        near = self.text[self.pos : self.pos + 50]
        return PlanningError(f"cannot read the schema of an empty stage ({what} near {near!r})")

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def eat(self, s: str) -> None:
        if not self.peek(s):
            raise self.fail(f"expected {s!r}")
        self.pos += len(s)

    def ident(self) -> str:
        m = re.compile(r"[A-Za-zµ][A-Za-z0-9_µ]*").match(self.text, self.pos)
        if not m:
            raise self.fail("expected a name")
        self.pos = m.end()
        return m.group(0)

    def number(self) -> int:
        m = re.compile(r"-?\d+").match(self.text, self.pos)
        if not m:
            raise self.fail("expected a number")
        self.pos = m.end()
        return int(m.group(0))

    def quoted(self, quote: str) -> str:
        self.eat(quote)
        end = self.text.find(quote, self.pos)
        if end < 0:
            raise self.fail("unterminated quote")
        value, self.pos = self.text[self.pos : end], end + 1
        return value

    def field(self, default_name: str) -> pa.Field:
        """``[non-null ]Type`` as a child field."""
        nullable = True
        if self.peek("non-null "):
            self.eat("non-null ")
            nullable = False
        return pa.field(default_name, self.dtype(), nullable)

    def list_child(self) -> pa.Field:
        """``T`` or ``T, field: 'name'`` inside List(...)."""
        child = self.field("item")
        if self.peek(", field: "):
            self.eat(", field: ")
            child = child.with_name(self.quoted("'"))
            while self.peek(", "):  # metadata or other trailing details we do not need
                self.eat(", ")
                self.ident()
                self.eat(": ")
                self.quoted("'") if self.peek("'") else self.number()
        return child

    def dtype(self) -> pa.DataType:
        name = self.ident()
        if name in _SIMPLE and not self.peek("("):
            return _SIMPLE[name]
        if name not in _PARAMETRIC or not self.peek("("):
            raise self.fail(f"unsupported type {name}")
        self.eat("(")
        out = self._parametric(name)
        self.eat(")")
        return out

    def _parametric(self, name: str) -> pa.DataType:
        if name == "Timestamp":
            unit = _UNITS.get(self.ident())
            tz = None
            if self.peek(", "):
                self.eat(", ")
                if self.peek('"'):
                    tz = self.quoted('"')
                elif self.peek("Some("):
                    self.eat("Some(")
                    tz = self.quoted('"')
                    self.eat(")")
                else:
                    self.ident()  # None
            if unit is None:
                raise self.fail("unknown time unit")
            return pa.timestamp(unit, tz)
        if name in ("Time32", "Time64", "Duration"):
            unit = _UNITS.get(self.ident())
            if unit is None:
                raise self.fail("unknown time unit")
            if name == "Duration":
                return pa.duration(unit)
            return pa.time32(unit) if name == "Time32" else pa.time64(unit)
        if name == "Interval":
            kind = self.ident()
            if kind not in _INTERVALS:
                raise self.fail("unknown interval")
            return _INTERVALS[kind]
        if name.startswith("Decimal"):
            p = self.number()
            self.eat(", ")
            s = self.number()
            makers = {"Decimal32": pa.decimal32, "Decimal64": pa.decimal64, "Decimal128": pa.decimal128}
            return makers.get(name, pa.decimal256)(p, s)
        if name == "FixedSizeBinary":
            return pa.binary(self.number())
        if name in ("List", "LargeList", "ListView", "LargeListView"):
            child = self.list_child()
            makers = {"List": pa.list_, "LargeList": pa.large_list, "ListView": pa.list_view}
            return makers.get(name, pa.large_list_view)(child)
        if name == "FixedSizeList":
            size = self.number()
            self.eat(" x ")
            return pa.list_(self.list_child(), size)
        if name == "Struct":
            fields = []
            while not self.peek(")"):
                fname = self.quoted('"')
                self.eat(": ")
                fields.append(self.field(fname))
                if self.peek(", "):
                    self.eat(", ")
            return pa.struct(fields)
        if name == "Dictionary":
            key = self.dtype()
            self.eat(", ")
            return pa.dictionary(key, self.dtype())
        # Map("entries": non-null Struct("key": non-null K, "value": V), sorted|unsorted)
        self.quoted('"')
        self.eat(": ")
        entries = self.field("entries")
        self.eat(", ")
        keys_sorted = self.ident() == "sorted"
        struct = entries.type
        if not pa.types.is_struct(struct) or struct.num_fields != 2:
            raise self.fail("a map's entries must be a struct of key and value")
        return pa.map_(struct.field(0), struct.field(1), keys_sorted=keys_sorted)


def parse_schema(text: str) -> pa.Schema:
    """Parse the body of ``schema=[...]`` (``name:Type[;N]`` items joined by ``, ``)."""
    fields: list[pa.Field] = []
    pos = 0
    while pos < len(text):
        # a field name may itself contain ':' and ', ': the name ends at the first ':' after which a
        # whole type parses and is followed by ', ' or the end of the text
        k = text.find(":", pos)
        while k >= 0:
            parser = _Parser(text, k + 1)
            try:
                dtype = parser.dtype()
                nullable = parser.peek(";N")
                end = parser.pos + (2 if nullable else 0)
                if end == len(text) or text.startswith(", ", end):
                    break
            except PlanningError:
                if _TYPE_START.match(text, k + 1):
                    raise  # a type we cannot read: fail rather than fold it into a name
            k = text.find(":", k + 1)
        if k < 0:
            raise PlanningError(f"cannot read the schema of an empty stage near {text[pos : pos + 50]!r}")
        fields.append(pa.field(text[pos:k], dtype, nullable))
        pos = end + 2
    return pa.schema(fields)


#: EXPLAIN tries before giving up on a plan that keeps coming out unlike the one that ran.
EXPLAIN_TRIES = 30


def explain_schemas(ctx: SessionContext, sql: str) -> list[pa.Schema]:
    """Every physical node's output schema, in pre-order, of the plan EXPLAIN makes."""
    return [node.schema for node in _explain(ctx, sql)]


def schemas_at(
    ctx: SessionContext, sql: str, lines: Sequence[str], sites: Iterable[int]
) -> dict[int, pa.Schema]:
    """The output schema of each node in ``sites`` (pre-order indices) of the plan that runs.

    ``lines``: the display line of every node of that plan. EXPLAIN plans the query again, and
    DataFusion does not always plan it alike: the columns a projection adds for join keys come in
    hash-set order. A site's schema is EXPLAIN's where EXPLAIN shows the same lines at the site and
    below it; a projection that differs from the plan's only in the order of its expressions has
    its schema reordered to match (and nodes that pass their input's schema through follow it).
    EXPLAIN is asked again while a site has neither.
    """
    wanted, found = set(sites), dict[int, pa.Schema]()
    for _ in range(EXPLAIN_TRIES):
        nodes = _explain(ctx, sql)
        same_shape = len(nodes) == len(lines) and all(
            _kind(n.line) == _kind(line) for n, line in zip(nodes, lines, strict=True)
        )
        if same_shape:
            for site in wanted - found.keys():
                schema = _reconciled(nodes, lines, site)
                if schema is not None:
                    found[site] = schema
        if len(found) == len(wanted):
            return found
    raise PlanningError(
        f"EXPLAIN planned the query unlike the plan that ran, {EXPLAIN_TRIES} times: the schema of a "
        "stage that produced no rows is unknown (run the query again)"
    )


@dataclass(frozen=True)
class _Node:
    depth: int
    line: str
    schema: pa.Schema


#: Nodes whose output schema is their one input's.
_PASS_THROUGH = frozenset(
    {
        "RepartitionExec",
        "CoalescePartitionsExec",
        "CoalesceBatchesExec",
        "SortExec",
        "SortPreservingMergeExec",
        "GlobalLimitExec",
        "LocalLimitExec",
        "CooperativeExec",
    }
)
_PROJECTION = "ProjectionExec: expr=["


def _kind(line: str) -> str:
    return line.split(":", 1)[0]


def _children(nodes: list[_Node], i: int) -> list[int]:
    """Pre-order indices of node ``i``'s children (EXPLAIN indents a level by two spaces)."""
    end = _subtree_end(nodes, i)
    return [j for j in range(i + 1, end) if nodes[j].depth == nodes[i].depth + 2]


def _subtree_end(nodes: list[_Node], i: int) -> int:
    end = i + 1
    while end < len(nodes) and nodes[end].depth > nodes[i].depth:
        end += 1
    return end


def _reconciled(nodes: list[_Node], lines: Sequence[str], i: int) -> pa.Schema | None:
    """Node ``i``'s schema in the plan that ran (``lines``), from EXPLAIN's ``nodes``, or None."""
    end = _subtree_end(nodes, i)
    if [n.line for n in nodes[i:end]] == list(lines[i:end]):
        return nodes[i].schema
    children = _children(nodes, i)
    kind = _kind(lines[i])
    passes = kind in _PASS_THROUGH or (kind == "FilterExec" and "projection=[" not in lines[i])
    if (passes and len(children) == 1) or (kind == "ScalarSubqueryExec" and children):
        return _reconciled(nodes, lines, children[0])  # a ScalarSubqueryExec outputs its first input
    if kind == "HashJoinExec" and len(children) == 2:
        sides = [_reconciled(nodes, lines, c) for c in children]
        if sides[0] is None or sides[1] is None:
            return None
        names = _join_output_names(lines[i], sides[0].names, sides[1].names)
        return None if names is None else _by_names(nodes[i].schema, names)
    if not lines[i].startswith(_PROJECTION) or len(children) != 1:
        return None
    below = children[0]
    if [n.line for n in nodes[below:end]] != list(lines[below:end]):
        return None  # the projection's input differs too
    ran, explained = _items(lines[i]), _items(nodes[i].line)
    if ran is None or explained is None or sorted(ran) != sorted(explained) or len(set(ran)) != len(ran):
        return None
    schema = nodes[i].schema
    return pa.schema([schema.field(explained.index(item)) for item in ran])


_JOIN_SIDES = {"Inner": "lr", "Left": "lr", "Right": "lr", "Full": "lr"}
_JOIN_SIDES.update({"LeftSemi": "l", "LeftAnti": "l", "RightSemi": "r", "RightAnti": "r"})


def _join_output_names(line: str, left: list[str], right: list[str]) -> list[str] | None:
    """The column names a hash join outputs, in order (its ``projection=[name@i, ..]`` if any)."""
    kind = re.search(r"join_type=(\w+)", line)
    sides = _JOIN_SIDES.get(kind.group(1)) if kind else None
    if sides is None:
        return None
    start = line.find(", projection=[")
    if start < 0:
        return (left if "l" in sides else []) + (right if "r" in sides else [])
    opening = start + len(", projection=")
    depth, end = 0, opening
    while end < len(line):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(line[end], 0)
        if depth == 0:
            break
        end += 1
    items = _split_list(line[opening + 1 : end])
    return None if items is None else [item.rsplit("@", 1)[0] for item in items]


def _by_names(schema: pa.Schema, names: list[str]) -> pa.Schema | None:
    """``schema``'s fields in the order of ``names`` (None unless both hold the same unique names)."""
    if len(set(schema.names)) != len(schema.names) or sorted(names) != sorted(schema.names):
        return None
    return pa.schema([schema.field(name) for name in names])


def _items(line: str) -> list[str] | None:
    """The expressions of a ``ProjectionExec`` line (``expr AS name`` each), None if not one list."""
    if not line.startswith(_PROJECTION) or not line.endswith("]"):
        return None
    return _split_list(line[len(_PROJECTION) : -1])


def _split_list(body: str) -> list[str] | None:
    """The ``, ``-separated items of a display list, split outside brackets (None: unbalanced)."""
    items, depth, start = [], 0, 0
    for k, ch in enumerate(body):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if depth < 0:
            return None
        if depth == 0 and body.startswith(", ", k):
            items.append(body[start:k])
            start = k + 2
    items.append(body[start:])
    return items if depth == 0 else None


def _explain(ctx: SessionContext, sql: str) -> list[_Node]:
    """Depth, display line and output schema of every node of EXPLAIN's physical plan, pre-order."""
    ctx.sql("SET datafusion.explain.show_schema = true").collect()
    try:
        rows = ctx.sql("EXPLAIN " + sql).to_arrow_table().to_pylist()
    finally:
        ctx.sql("SET datafusion.explain.show_schema = false").collect()
    text = next(r["plan"] for r in rows if r["plan_type"] == "physical_plan")
    out = []
    for line in text.splitlines():
        m = re.search(r", schema=\[(.*)\]\s*$", line)
        shown = line[: m.start()] if m else line
        schema = parse_schema(m.group(1)) if m and m.group(1) else pa.schema([])
        out.append(_Node(len(shown) - len(shown.lstrip(" ")), shown.strip(), schema))
    return out
