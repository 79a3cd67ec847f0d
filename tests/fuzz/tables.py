"""Random tables for the query fuzzer: typed columns, skewed and unique keys, NULLs, Parquet files.

A *world* is the set of tables one stretch of queries runs over. Every value comes from a seeded
``random.Random``, so a seed names the same tables on every machine. Values are chosen to make
distribution bugs visible and answers exact: integer keys from small shared domains (joins and
groups match across tables, some keys are heavily skewed), floats that are multiples of 1/4 (sums
are exact in any order), NULLs, all-NULL columns, empty tables, NaN / infinities / -0.0 now and then.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["TYPES", "Column", "Table", "World", "arrow_type", "make_world"]

#: Every column type the generator uses: its name in a case file -> (Arrow type, expression kind).
#: Kinds are what the query generator reasons about: int, float, dec, bool, str, date, ts, tstz,
#: list (of int), lstr (list of string), struct (a: int, b: string).
TYPES: dict[str, tuple[pa.DataType, str]] = {
    "int8": (pa.int8(), "int"),
    "int16": (pa.int16(), "int"),
    "int32": (pa.int32(), "int"),
    "int64": (pa.int64(), "int"),
    "uint32": (pa.uint32(), "int"),
    "float32": (pa.float32(), "float"),
    "float64": (pa.float64(), "float"),
    "decimal(9,2)": (pa.decimal128(9, 2), "dec"),
    "decimal(20,4)": (pa.decimal128(20, 4), "dec"),
    "bool": (pa.bool_(), "bool"),
    "string": (pa.string(), "str"),
    "large_string": (pa.large_string(), "str"),
    "date32": (pa.date32(), "date"),
    "timestamp[us]": (pa.timestamp("us"), "ts"),
    "timestamp[ms]": (pa.timestamp("ms"), "ts"),
    "timestamp[us, tz=UTC]": (pa.timestamp("us", tz="UTC"), "tstz"),
    "timestamp[ms, tz=+05:30]": (pa.timestamp("ms", tz="+05:30"), "tstz"),
    "list<int32>": (pa.list_(pa.int32()), "list"),
    "list<string>": (pa.list_(pa.string()), "lstr"),
    "struct<a:int32,b:string>": (pa.struct([("a", pa.int32()), ("b", pa.string())]), "struct"),
}

STRINGS = ["", "a", "A", "ab", "abc", "b", "ba", "zz", "é", " a", "a%", "x_y", "NULL", "ß"]
EPOCH_2024 = dt.datetime(2024, 1, 1)
DAY_US = 86_400_000_000


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type of a type name of ``TYPES``."""
    return TYPES[name][0]


@dataclass
class Column:
    """One column: its type name (a key of ``TYPES``) and Python values (None is NULL)."""

    name: str
    type: str
    values: list[Any]
    unique: bool = False  # no two rows equal and no NULL: a row identity

    @property
    def kind(self) -> str:
        """The expression kind of the column's type."""
        return TYPES[self.type][1]

    @property
    def multiplicity(self) -> int:
        """How often the most frequent non-NULL value occurs (bounds the rows an equi-join adds)."""
        counts = Counter(_hashable(v) for v in self.values if v is not None)
        return max(counts.values(), default=0)

    def array(self) -> pa.Array:
        """The values as an Arrow array of the column's type."""
        t = arrow_type(self.type)
        if pa.types.is_timestamp(t):
            return pa.array(self.values, pa.int64()).cast(t)
        return pa.array(self.values, t)


@dataclass
class Table:
    """A table: columns of equal length, written as ``files`` Parquet files of consecutive rows."""

    name: str
    columns: list[Column]
    files: int = 1

    @property
    def rows(self) -> int:
        """The row count."""
        return len(self.columns[0].values) if self.columns else 0

    def arrow(self) -> pa.Table:
        """The table as Arrow."""
        return pa.table({c.name: c.array() for c in self.columns})

    def write(self, folder: Path) -> Path:
        """Write the table as a folder of ``files`` Parquet files (one empty file for an empty table)."""
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        data = self.arrow()
        parts = max(1, min(self.files, data.num_rows))
        size = -(-data.num_rows // parts) if data.num_rows else 0
        for i in range(parts):
            pq.write_table(data.slice(i * size, size), folder / f"part-{i}.parquet")
        return folder


@dataclass
class World:
    """The tables of one stretch of queries."""

    seed: int
    tables: list[Table] = field(default_factory=list)

    def table(self, name: str) -> Table:
        """The table called ``name``."""
        return next(t for t in self.tables if t.name == name)

    def write(self, folder: Path) -> dict[str, Path]:
        """Write every table under ``folder``; their paths by name."""
        return {t.name: t.write(folder / t.name) for t in self.tables}


# ----------------------------------------------------------------------------------------- values
def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _skewed(rng: random.Random, domain: int) -> int:
    """A key from 0..domain-1 where 0 is very common, 1 common, and so on (a Zipf-like skew)."""
    return min(int(rng.paretovariate(1.2)) - 1, domain - 1)


def _value_maker(rng: random.Random, type_name: str, rows: int) -> Callable[[], Any]:
    kind = TYPES[type_name][1]
    domain = rng.choice([3, 8, 20, max(2, min(rows, 100))])  # 100: int8 holds it
    skewed = rng.random() < 0.4

    def small_int() -> int:
        return _skewed(rng, domain) if skewed else rng.randrange(domain)

    def float_value() -> float:
        r = rng.random()
        if r < 0.02:
            return rng.choice([float("nan"), float("inf"), float("-inf")])
        if r < 0.04:
            return -0.0
        return small_int() / 4 - (domain // 8)

    def timestamp() -> int:
        unit = 1000 if "ms" in type_name else 1
        us = rng.choice([0, 1, 2]) * DAY_US + small_int() * 3_600_000_000 + rng.choice([0, 0, 1_500_000])
        return (int((EPOCH_2024 - dt.datetime(1970, 1, 1)).total_seconds()) * 1_000_000 + us) // unit

    makers: dict[str, Callable[[], Any]] = {
        "int": lambda: small_int() - (5 if type_name in ("int8", "int16") and rng.random() < 0.2 else 0),
        "float": float_value,
        "dec": lambda: Decimal(small_int() * 25 - 100) / 100,
        "bool": lambda: rng.random() < 0.5,
        "str": lambda: STRINGS[small_int() % len(STRINGS)],
        "date": lambda: dt.date(2024, 1, 1) + dt.timedelta(days=small_int()),
        "ts": timestamp,
        "tstz": timestamp,
        "list": lambda: [rng.randrange(4) for _ in range(rng.randrange(4))],
        "lstr": lambda: [rng.choice(STRINGS[:5]) for _ in range(rng.randrange(3))],
        "struct": lambda: {"a": small_int(), "b": rng.choice(STRINGS[:6])},
    }
    return makers[kind]


def _column(rng: random.Random, name: str, type_name: str, rows: int) -> Column:
    null_rate = rng.choice([0.0, 0.0, 0.1, 0.1, 0.3, 0.7, 1.0])  # 1.0: an all-NULL column
    make = _value_maker(rng, type_name, rows)
    return Column(name, type_name, [None if rng.random() < null_rate else make() for _ in range(rows)])


def make_world(seed: int, tables: int | None = None) -> World:
    """Tables ``t0``.. for ``seed``: each has a unique ``id``, a skewed key ``k`` and random columns.

    ``t0`` is the largest (up to 200 rows); the others are smaller, and one in five is empty.
    """
    rng = random.Random(seed)
    world = World(seed)
    count = tables if tables is not None else rng.choice([3, 4, 4])
    names = list(TYPES)
    for i in range(count):
        if i == 0:
            rows = rng.choice([30, 80, 150, 200])
        else:
            rows = rng.choice([0, 1, 5, 12, 30, 60])
        ids = list(range(rows))
        rng.shuffle(ids)
        columns = [
            Column("id", "int64", ids, unique=True),
            Column("k", "int32", [None if rng.random() < 0.1 else _skewed(rng, 8) for _ in range(rows)]),
        ]
        for j in range(1, rng.randint(3, 7)):
            columns.append(_column(rng, f"c{j}", rng.choice(names), rows))
        world.tables.append(Table(f"t{i}", columns, files=rng.choice([1, 2, 3, 4, 4])))
    return world
