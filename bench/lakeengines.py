"""Engines over the tables as lake tables: ``mesh-delta``, ``mesh-iceberg`` and ``datafusion-delta``.

The Parquet tables are converted once, beside the data folder (``<data>-delta/``, ``<data>-iceberg/``,
kept for later runs): each table one Delta table (``deltalake``) or one Iceberg table in a SQL
catalog on SQLite (``pyiceberg``). ``mesh-delta`` / ``mesh-iceberg`` read them as the mesh reads
lake tables (a snapshot planned here, data files read by the peers); ``datafusion-delta`` is
single-process DataFusion over deltalake's own table provider, the reference for Delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.engines import DataFusionEngine, EngineOptions, MeshEngine, _table

CATALOG = "bench"


def delta_copy(data_dir: Path, tables: Sequence[str]) -> Path:
    """Each table of ``data_dir`` as a Delta table under ``<data_dir>-delta/`` (made once)."""
    from deltalake import write_deltalake

    out = data_dir.parent / f"{data_dir.name}-delta"
    for name in tables:
        if not (out / name / "_delta_log").is_dir():
            write_deltalake(out / name, pq.read_table(_table(data_dir, name)), mode="overwrite")
    return out


def iceberg_copy(data_dir: Path, tables: Sequence[str]) -> dict[str, str]:
    """Each table as an Iceberg table of a SQL catalog under ``<data_dir>-iceberg/`` (made once)."""
    from pyiceberg.catalog import load_catalog

    out = data_dir.resolve().parent / f"{data_dir.name}-iceberg"
    (out / "wh").mkdir(parents=True, exist_ok=True)
    props = {
        "name": CATALOG,
        "type": "sql",
        "uri": f"sqlite:///{out}/catalog.db",
        "warehouse": f"file://{out}/wh",
    }
    catalog = load_catalog(**props)
    if ("tpc",) not in catalog.list_namespaces():
        catalog.create_namespace("tpc")
    for name in tables:
        if not catalog.table_exists(f"tpc.{name}"):
            data = pq.read_table(_table(data_dir, name))
            plain = pa.schema(
                [pa.field(f.name, pa.string()) if f.type == pa.string_view() else f for f in data.schema]
            )
            data = data.cast(plain)
            catalog.create_table(f"tpc.{name}", schema=data.schema).append(data)
    return props


class MeshDeltaEngine(MeshEngine):
    """The mesh over the Delta copies (``Mesh.register_delta``)."""

    def __init__(self, options: EngineOptions, *, name: str = "mesh-delta") -> None:
        super().__init__(options, name=name)

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        from ematix_flow import Mesh

        lake = delta_copy(data_dir, tables)
        self._mesh = Mesh.local(workers=self.workers, **self.options)
        for name in tables:
            self._mesh.register_delta(name, lake / name)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "storage": "Delta tables (deltalake), local disk"}


class MeshIcebergEngine(MeshEngine):
    """The mesh over the Iceberg copies (``Mesh.register_iceberg``)."""

    def __init__(self, options: EngineOptions, *, name: str = "mesh-iceberg") -> None:
        super().__init__(options, name=name)

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        from ematix_flow import Mesh

        catalog = iceberg_copy(data_dir, tables)
        self._mesh = Mesh.local(workers=self.workers, **self.options)
        for name in tables:
            self._mesh.register_iceberg(name, f"tpc.{name}", catalog=catalog)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "storage": "Iceberg tables (pyiceberg SQL catalog), local disk"}


class DataFusionDeltaEngine(DataFusionEngine):
    """Single-process DataFusion over deltalake's table provider (the Delta reference)."""

    def __init__(self, options: EngineOptions, *, name: str = "datafusion-delta") -> None:
        super().__init__(options, name=name)

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        from deltalake import DeltaTable

        lake = delta_copy(data_dir, tables)
        super().start(data_dir, [])
        for name in tables:
            self._ctx.register_table(name, DeltaTable(str(lake / name)))

    def info(self) -> dict[str, Any]:
        return {**super().info(), "storage": "Delta tables (deltalake's DataFusion table provider)"}
