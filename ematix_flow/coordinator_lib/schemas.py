"""Schemas from their display in ``EXPLAIN`` (``stage_schemas.py`` says when they are needed).

``EXPLAIN`` with ``show_schema`` shows a node's schema as ``name:Type;N, ...`` where ``Type`` is
arrow-rs's ``DataType`` display (a small grammar, parsed by recursive descent below). A type it does
not know is an error, never a guess.
"""

from __future__ import annotations

import re

import pyarrow as pa

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
