"""Targets: where a pipeline's result is loaded (DuckDB, SQLite, PostgreSQL, Parquet, Delta Lake).

``open_target`` picks the implementation by kind and imports it only then, so a pipeline that
loads into DuckDB never imports psycopg.

Example:
    >>> from pathlib import Path
    >>> from ematix_flow.pipelines.targets import open_target
    >>> target = open_target(
    ...     "sqlite", path="out/shop.sqlite", table="orders", dsn=None, base_dir=Path("/data")
    ... )
    >>> target.describe()
    'sqlite /data/out/shop.sqlite table orders'
"""

from __future__ import annotations

import os
from pathlib import Path

from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError
from ematix_flow.pipelines.targets.base import Target
from ematix_flow.urls import is_url

KINDS = ("duckdb", "sqlite", "postgres", "parquet", "delta")

__all__ = ["KINDS", "open_target"]


def open_target(
    kind: str,
    *,
    path: str | None,
    table: str | None,
    dsn: str | None,
    base_dir: Path,
    storage: StorageConfig | None = None,
) -> Target:
    """The target of ``kind``; a relative ``path`` is resolved against ``base_dir`` (the pipeline's folder).

    A parquet ``path`` may be an object-store URL (``s3://lake/sales/``), its bucket resolved with
    ``storage`` (else the environment).

    Nothing is opened or created here: databases are connected to when a run reads its watermark
    or loads. Raises ConfigError when a setting the kind needs is missing or malformed.
    """
    if kind == "duckdb":
        from ematix_flow.pipelines.targets.duckdb import DuckDBTarget

        return DuckDBTarget(_file(kind, path, base_dir), _required(kind, "table", table, "analytics.orders"))
    if kind == "sqlite":
        from ematix_flow.pipelines.targets.sqlite import SQLiteTarget

        return SQLiteTarget(_file(kind, path, base_dir), _required(kind, "table", table, "orders"))
    if kind == "postgres":
        from ematix_flow.pipelines.targets.postgres import PostgresTarget

        url = _required(kind, "dsn", dsn, "postgresql://user@host/db")
        return PostgresTarget(url, _required(kind, "table", table, "analytics.orders"))
    if kind == "parquet" and path and is_url(path):
        from ematix_flow.pipelines.targets.objects import ObjectParquetTarget

        return ObjectParquetTarget(path, storage or StorageConfig())
    if kind == "delta":
        from ematix_flow.pipelines.targets.delta import DeltaTarget

        where = _required(kind, "path", path, "lake/orders")
        return DeltaTarget(where if is_url(where) else str(_file(kind, where, base_dir)), storage)
    if kind == "parquet":
        from ematix_flow.pipelines.targets.parquet import ParquetTarget

        return ParquetTarget(_file(kind, path, base_dir))
    raise ConfigError(f"target kind {kind!r} is not one of {', '.join(KINDS)}")


def _required(kind: str, key: str, value: str | None, example: str) -> str:
    if not value:
        raise ConfigError(f'a {kind} target needs {key} (e.g. {key} = "{example}")')
    return value


def _file(kind: str, path: str | None, base_dir: Path) -> Path:
    file = Path(os.path.expanduser(_required(kind, "path", path, f"out/target.{kind}")))
    return file if file.is_absolute() else base_dir / file
