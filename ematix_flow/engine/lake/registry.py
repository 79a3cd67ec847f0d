"""Lake tables on a planning context: template tables registered, and each query's scans.

A snapshot is registered as a hidden Parquet table over *template* files: as many empty Parquet
files as its scan has partitions (:func:`scan_partitions`), with the table's data columns (by
their physical names) and its partition columns last. A view under the table's name gives the
columns their SQL names and the table's order (for Iceberg, the UNION ALL of one template per file
layout). A query reading one is planned without file statistics (:func:`without_statistics`: the
templates' would say 0 rows, and DataFusion would answer ``count(*)`` from them). At planning,
:func:`lake_scans` says which files of each snapshot the query needs (its filters,
:mod:`.pruning`) and ``planner/lake.py`` puts them in the template scans.
"""

from __future__ import annotations

import atexit
import itertools
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import datafusion.expr as dfx
import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import DataFrame, SessionContext

from ematix_flow.engine.lake.pruning import keep
from ematix_flow.engine.lake.snapshot import Snapshot, SnapshotFile
from ematix_flow.errors import ConfigError, QueryError
from ematix_flow.planner.lake import MIN_SPLIT_BYTES, LakeFile, LakeScan
from ematix_flow.planner.paths import file_accesses
from ematix_flow.planner.scalars import scalar
from ematix_flow.urls import is_url, parse_url

#: Prefix of the hidden template tables (never shown as a table of the mesh).
HIDDEN_PREFIX = "__flow_lake_"
_COLLECT_STATISTICS = "datafusion.execution.collect_statistics"
_counter = itertools.count(1)


@dataclass(frozen=True)
class LakeTable:
    """One registered snapshot."""

    name: str  # as SQL names it
    hidden: str  # the template table's name
    template: str  # the template folder (absolute path, ending in "/")
    snapshot: Snapshot
    read_types: dict[str, pa.DataType]  # column (physical) -> the type DataFusion plans it as


@dataclass
class LakeRegistry:
    """The lake tables of one planning context (and of the contexts made from it)."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flow-lake-")))
    tables: dict[str, LakeTable] = field(default_factory=dict)  # hidden name -> table
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        atexit.register(shutil.rmtree, self.folder, True)
        weakref.finalize(self, shutil.rmtree, self.folder, True)

    def by_name(self, name: str) -> list[LakeTable]:
        """The template tables of the lake table SQL calls ``name`` (one per branch)."""
        return [t for t in self.tables.values() if t.name == name]


_REGISTRIES: weakref.WeakKeyDictionary[SessionContext, LakeRegistry] = weakref.WeakKeyDictionary()


def registry(ctx: SessionContext) -> LakeRegistry | None:
    """The lake tables registered on ``ctx`` (None: none ever were)."""
    return _REGISTRIES.get(ctx)


def release(ctx: SessionContext) -> None:
    """Forget every lake table of ``ctx`` and remove their template files (a closed Mesh)."""
    reg = _REGISTRIES.pop(ctx, None)
    if reg is not None:
        shutil.rmtree(reg.folder, ignore_errors=True)


def inherit(ctx: SessionContext, parent: SessionContext) -> None:
    """Share ``parent``'s lake tables with ``ctx`` (a context made from it, sharing its catalogs)."""
    reg = _REGISTRIES.get(parent)
    if reg is not None:
        _REGISTRIES[ctx] = reg


def register_snapshot(
    ctx: SessionContext,
    name: str,
    snap: Snapshot,
    partitions: int,
    branches: list[Snapshot] | None = None,
) -> None:
    """Register ``snap`` on ``ctx`` as table ``name`` (replacing a lake table of that name).

    ``branches``: when the data files do not all name their columns alike (Iceberg after a rename,
    files written before a column was added), one snapshot per layout, each with its files; the
    table is then their UNION ALL, each branch's columns renamed, cast or null-filled to ``snap``'s.

    Raises:
        ConfigError: the snapshot's files are in more than one store.
    """
    parts = branches or [snap]
    for branch in parts:
        _store_of(branch)  # refused before anything is registered
    reg = _REGISTRIES.setdefault(ctx, LakeRegistry())
    with reg.lock:
        deregister(ctx, name)
        tables = [_register_template(ctx, reg, name, branch, partitions) for branch in parts]
        if len(tables) == 1 and _plain(snap, tables[0]):
            only = tables[0]
            ctx.deregister_table(only.hidden)
            ctx.register_parquet(name, only.template)
            tables = [LakeTable(name, name, only.template, only.snapshot, only.read_types)]
        else:
            ctx.register_view(name, ctx.sql(_union(ctx, snap, tables)))
        for table in tables:
            reg.tables[table.hidden] = table


def _register_template(
    ctx: SessionContext, reg: LakeRegistry, name: str, branch: Snapshot, partitions: int
) -> LakeTable:
    """A hidden template table for ``branch``: its data columns, then its partition columns."""
    hidden = f"{HIDDEN_PREFIX}{name}_{next(_counter)}"
    folder = reg.folder / hidden
    folder.mkdir()
    fields = [pa.field(c.physical, c.type) for c in branch.columns if not c.partition]
    fields += [pa.field(c.physical, c.type) for c in branch.partition_columns]
    empty = pa.schema(fields).empty_table()
    for i in range(scan_partitions(branch, partitions)):
        pq.write_table(empty, folder / f"part-{i}.parquet")
    template = f"{folder}/"
    ctx.register_parquet(hidden, template)
    planned = ctx.table(hidden).schema()
    read_types = {c.physical: planned.field(c.physical).type for c in branch.columns}
    return LakeTable(name, hidden, template, branch, read_types)


def scan_partitions(snap: Snapshot, partitions: int) -> int:
    """How many partitions a scan of ``snap`` has: as DataFusion splits Parquet files into ranges.

    One per ``MIN_SPLIT_BYTES`` of data, at most ``partitions``: a small table is one partition, as
    it would be read from Parquet directly (fewer, larger tasks; DataFusion plans around it).
    """
    total = sum(f.size for f in snap.files)
    return max(1, min(partitions, -(-total // MIN_SPLIT_BYTES)))


def _plain(snap: Snapshot, table: LakeTable) -> bool:
    """Whether the template reads the table's columns as they are: names, order (no view needed)."""
    order = [c for c in table.snapshot.columns if not c.partition] + table.snapshot.partition_columns
    same = [(c.name, c.physical) for c in order] == [(c.name, c.name) for c in snap.columns]
    return same and all(c.name == c.physical for c in table.snapshot.columns)


def _union(ctx: SessionContext, snap: Snapshot, tables: list[LakeTable]) -> str:
    """The view over the branches: each projects the table's columns, in its order and types."""
    selects = []
    for table in tables:
        by_name = {c.name: c for c in table.snapshot.columns}
        exprs = []
        for column in snap.columns:
            want = read_type(column.type)
            mine = by_name.get(column.name)
            if mine is None:
                expr = f"arrow_cast(NULL, '{type_name(want)}')"
            elif table.read_types[mine.physical] != want:
                expr = f"arrow_cast({_q(mine.physical)}, '{type_name(want)}')"
            else:
                expr = _q(mine.physical)
            exprs.append(f"{expr} AS {_q(column.name)}")
        selects.append(f"SELECT {', '.join(exprs)} FROM {_q(table.hidden)}")
    return " UNION ALL ".join(selects)


def read_type(t: pa.DataType) -> pa.DataType:
    """The type DataFusion reads a Parquet column of Arrow type ``t`` as (strings and binaries as views)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string_view()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.binary_view()
    return t


def type_name(t: pa.DataType) -> str:
    """``t`` as DataFusion's ``arrow_cast`` names it.

    Raises:
        ConfigError: a type the lake tables' union views do not cast.
    """
    simple = {
        pa.bool_(): "Boolean", pa.int8(): "Int8", pa.int16(): "Int16", pa.int32(): "Int32",
        pa.int64(): "Int64", pa.uint8(): "UInt8", pa.uint16(): "UInt16", pa.uint32(): "UInt32",
        pa.uint64(): "UInt64", pa.float32(): "Float32", pa.float64(): "Float64", pa.string(): "Utf8",
        pa.large_string(): "LargeUtf8", pa.string_view(): "Utf8View", pa.binary(): "Binary",
        pa.binary_view(): "BinaryView", pa.date32(): "Date32",
    }  # fmt: skip
    if t in simple:
        return simple[t]
    if pa.types.is_decimal128(t):
        return f"Decimal128({t.precision}, {t.scale})"
    if pa.types.is_timestamp(t):
        unit = {"s": "Second", "ms": "Millisecond", "us": "Microsecond", "ns": "Nanosecond"}[t.unit]
        return f'Timestamp({unit}, Some("{t.tz}"))' if t.tz else f"Timestamp({unit}, None)"
    raise ConfigError(f"a column of type {t} cannot be read across files of different layouts yet")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def deregister(ctx: SessionContext, name: str) -> bool:
    """Forget the lake table ``name`` on ``ctx``; False when it is not one."""
    reg = _REGISTRIES.get(ctx)
    tables = reg.by_name(name) if reg else []
    if reg is None or not tables:
        return False
    ctx.deregister_table(name)
    for table in tables:
        if table.hidden != name:
            ctx.deregister_table(table.hidden)
        del reg.tables[table.hidden]
        shutil.rmtree(table.template, ignore_errors=True)
    return True


def reads_lake(ctx: SessionContext, df: DataFrame) -> bool:
    """Whether ``df`` (planned in ``ctx``) reads a lake table (its subqueries included)."""
    reg = _REGISTRIES.get(ctx)
    if reg is None or not reg.tables:
        return False
    text = df.logical_plan().display_indent()
    return any(re.search(rf"TableScan: {re.escape(hidden)}(\s|$)", text, re.M) for hidden in reg.tables)


@contextmanager
def without_statistics(ctx: SessionContext) -> Iterator[None]:
    """Plan with file statistics off: the template files' (0 rows) would answer ``count(*)`` wrongly.

    DataFusion reads the setting when a DataFrame is made (``ctx.sql``), so the query is made inside.
    Queries of other threads planned meanwhile plan without statistics too (right answers, other plans).
    """
    reg = _REGISTRIES.setdefault(ctx, LakeRegistry())
    with reg.lock:
        before = _setting(ctx, _COLLECT_STATISTICS, "true")
        ctx.sql(f"SET {_COLLECT_STATISTICS} = false").collect()
        try:
            yield
        finally:
            ctx.sql(f"SET {_COLLECT_STATISTICS} = {before}").collect()


def _setting(ctx: SessionContext, name: str, default: str) -> str:
    """A DataFusion setting's value (``default`` when the context has no information schema)."""
    try:
        rows = ctx.sql(f"SELECT value FROM information_schema.df_settings WHERE name = '{name}'").to_pylist()
    except Exception:  # a context made without information_schema
        return default
    return str(rows[0]["value"]) if rows and rows[0]["value"] is not None else default


def _store_of(snap: Snapshot) -> str:
    stores = {parse_url(f.url).store_url if is_url(f.url) else "file://" for f in snap.files}
    if len(stores) > 1:
        raise ConfigError(f"{snap.describe}: its files are in {len(stores)} stores; one is supported")
    return stores.pop() if stores else "file://"


def _object_path(f: SnapshotFile) -> str:
    return parse_url(f.url).key if is_url(f.url) else f.url.lstrip("/")


def check_no_writes(ctx: SessionContext, plan: bytes) -> None:
    """Refuse a plan that writes into a lake table (its rows would go to the template files).

    Raises:
        QueryError: ``plan`` has a sink into a lake table's template folder.
    """
    reg = _REGISTRIES.get(ctx)
    if reg is None or not reg.tables:
        return
    for access in file_accesses(plan):
        path = access.path.removeprefix("file://").lstrip("/")
        for table in reg.tables.values():
            folder = table.template.lstrip("/")
            if access.write and (path.startswith(folder) or path == folder.rstrip("/")):
                raise QueryError(
                    f"{table.name} is a {table.snapshot.kind} table, read-only in SQL here: load it with a "
                    'pipeline ([target] kind = "delta") or the table\'s own tools'
                )


def lake_scans(ctx: SessionContext, df: DataFrame, plan: bytes) -> list[LakeScan]:
    """The lake-table scans of ``plan`` (``df``'s physical plan), each with the files it may need.

    A table's files are pruned with the filters of its scans in ``df``'s logical plan; a table
    scanned where that walk does not reach (a subquery expression) reads all its files.
    """
    reg = _REGISTRIES.get(ctx)
    if reg is None or not reg.tables:
        return []
    read = {a.path.lstrip("/") for a in file_accesses(plan) if not a.write and a.store.startswith("file:")}
    used = [t for t in reg.tables.values() if any(p.startswith(t.template.lstrip("/")) for p in read)]
    if not used:
        return []
    filters: dict[str, list[Sequence[dfx.Expr]]] = {}
    _collect(df.optimized_logical_plan(), reg, filters)
    out = []
    for table in used:
        snap = table.snapshot
        per_scan = filters.get(table.hidden, [[]])
        chosen = [f for f in snap.files if any(keep(f.facts, fs) for fs in per_scan)]
        types = table.read_types
        files = tuple(
            LakeFile(
                _object_path(f),
                f.size,
                tuple(
                    scalar(f.facts.partition.get(c.physical), types[c.physical])
                    for c in snap.partition_columns
                ),
            )
            for f in chosen
        )
        label = f"{snap.describe}: {len(chosen)} of {len(snap.files)} files"
        parts = tuple(c.physical for c in snap.partition_columns)
        out.append(LakeScan(table.template, _store_of(snap), parts, files, label))
    return out


def _collect(plan: object, reg: LakeRegistry, out: dict[str, list[Sequence[dfx.Expr]]]) -> None:
    variant = plan.to_variant()  # type: ignore[attr-defined]
    if isinstance(variant, dfx.TableScan):
        name = str(variant.table_name()).rsplit(".", 1)[-1].strip('"')
        if name in reg.tables:
            out.setdefault(name, []).append(list(variant.filters()))
    for child in plan.inputs():  # type: ignore[attr-defined]
        _collect(child, reg, out)
