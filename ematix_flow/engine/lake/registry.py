"""Lake tables on a planning context: template tables registered, and each query's scans.

A snapshot is registered as a hidden Parquet table over *template* files: as many empty Parquet
files as the context's scans have partitions, with the table's data columns (by their physical
names) and its partition columns last. Statistics are not collected for it (they would say 0
rows: DataFusion would answer ``count(*)`` from them). A view under the table's name gives the
columns their SQL names and the table's order. At planning, :func:`lake_scans` says which files of
each snapshot the query needs (its filters, :mod:`.pruning`) and ``planner/lake.py`` puts them in
the template scans.
"""

from __future__ import annotations

import atexit
import itertools
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
from ematix_flow.errors import ConfigError
from ematix_flow.planner.lake import LakeFile, LakeScan
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
    read_types: dict[str, pa.DataType]  # partition column (physical) -> type as DataFusion plans it


@dataclass
class LakeRegistry:
    """The lake tables of one planning context (and of the contexts made from it)."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flow-lake-")))
    tables: dict[str, LakeTable] = field(default_factory=dict)  # hidden name -> table
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        atexit.register(shutil.rmtree, self.folder, True)
        weakref.finalize(self, shutil.rmtree, self.folder, True)

    def by_name(self, name: str) -> LakeTable | None:
        """The lake table SQL calls ``name``."""
        return next((t for t in self.tables.values() if t.name == name), None)


_REGISTRIES: weakref.WeakKeyDictionary[SessionContext, LakeRegistry] = weakref.WeakKeyDictionary()


def registry(ctx: SessionContext) -> LakeRegistry | None:
    """The lake tables registered on ``ctx`` (None: none ever were)."""
    return _REGISTRIES.get(ctx)


def inherit(ctx: SessionContext, parent: SessionContext) -> None:
    """Share ``parent``'s lake tables with ``ctx`` (a context made from it, sharing its catalogs)."""
    reg = _REGISTRIES.get(parent)
    if reg is not None:
        _REGISTRIES[ctx] = reg


def register_snapshot(ctx: SessionContext, name: str, snap: Snapshot, partitions: int) -> None:
    """Register ``snap`` on ``ctx`` as table ``name`` (replacing a lake table of that name).

    Raises:
        ConfigError: the snapshot's files are in more than one store, or a column type is not read.
    """
    _store_of(snap)  # refused before anything is registered
    reg = _REGISTRIES.setdefault(ctx, LakeRegistry())
    with reg.lock:
        old = reg.by_name(name)
        if old is not None:
            deregister(ctx, name)
        hidden = f"{HIDDEN_PREFIX}{name}_{next(_counter)}"
        folder = reg.folder / hidden
        folder.mkdir()
        data = [pa.field(c.physical, c.type) for c in snap.columns if not c.partition]
        parts = [pa.field(c.physical, c.type) for c in snap.partition_columns]
        empty = pa.schema(data + parts).empty_table()
        for i in range(max(partitions, 1)):
            pq.write_table(empty, folder / f"part-{i}.parquet")
        template = f"{folder}/"
        ctx.register_parquet(hidden, template)
        planned = ctx.table(hidden).schema()
        read_types = {c.physical: planned.field(c.physical).type for c in snap.partition_columns}
        plain = [c.name for c in snap.columns] == [f.name for f in data + parts] and all(
            c.name == c.physical for c in snap.columns
        )
        if plain:
            ctx.deregister_table(hidden)
            ctx.register_parquet(name, template)
            hidden = name
        else:
            select = ", ".join(f'"{c.physical}" AS "{c.name}"' for c in snap.columns)
            ctx.register_view(name, ctx.sql(f'SELECT {select} FROM "{hidden}"'))
        reg.tables[hidden] = LakeTable(name, hidden, template, snap, read_types)


def deregister(ctx: SessionContext, name: str) -> bool:
    """Forget the lake table ``name`` on ``ctx``; False when it is not one."""
    reg = _REGISTRIES.get(ctx)
    table = reg.by_name(name) if reg else None
    if reg is None or table is None:
        return False
    ctx.deregister_table(name)
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
    return any(hidden in text for hidden in reg.tables)


@contextmanager
def without_statistics(ctx: SessionContext) -> Iterator[None]:
    """Plan with file statistics off: the template files' (0 rows) would answer ``count(*)`` wrongly.

    DataFusion reads the setting when a DataFrame is made (``ctx.sql``), so the query is made inside.
    Queries of other threads planned meanwhile plan without statistics too (right answers, other plans).
    """
    reg = _REGISTRIES.setdefault(ctx, LakeRegistry())
    with reg.lock:
        ctx.sql(f"SET {_COLLECT_STATISTICS} = false").collect()
        try:
            yield
        finally:
            ctx.sql(f"SET {_COLLECT_STATISTICS} = true").collect()


def _store_of(snap: Snapshot) -> str:
    stores = {parse_url(f.url).store_url if is_url(f.url) else "file://" for f in snap.files}
    if len(stores) > 1:
        raise ConfigError(f"{snap.describe}: its files are in {len(stores)} stores; one is supported")
    return stores.pop() if stores else "file://"


def _object_path(f: SnapshotFile) -> str:
    return parse_url(f.url).key if is_url(f.url) else f.url.lstrip("/")


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
