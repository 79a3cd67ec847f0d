"""A DuckDB database file as a target: the rows go in straight from Arrow (no Python rows)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa

from ematix_flow.pipelines.targets.session import STAGE, Session, TableName, database_file
from ematix_flow.pipelines.targets.sql import SQLTarget

#: Arrow categories (see ``sql.category``) to DuckDB types.
DUCKDB_TYPES: dict[str, str] = {
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "float32": "REAL",
    "float64": "DOUBLE",
    "decimal": "DECIMAL({precision},{scale})",
    "decimal_max": "38",
    "string": "VARCHAR",
    "binary": "BLOB",
    "bool": "BOOLEAN",
    "date": "DATE",
    "time": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "null": "VARCHAR",
    "text": "VARCHAR",
    "bigint": "BIGINT",
    "boolean": "BOOLEAN",
}


class DuckDBTarget(SQLTarget):
    """A table in a DuckDB file (created with its folders when missing).

    ``table`` is ``"table"`` (schema ``main``) or ``"schema.table"`` (the schema is created when
    missing). Run history is the table ``ematix_flow.run_history`` of the same file.
    """

    kind: ClassVar[str] = "duckdb"
    type_names: ClassVar[dict[str, str]] = DUCKDB_TYPES

    def __init__(self, path: Path, table: str) -> None:
        super().__init__(table)
        self.path = Path(path)

    def describe(self) -> str:
        """E.g. ``duckdb warehouse.duckdb table analytics.orders``."""
        return f"duckdb {self.path} table {self.table}"

    def _open(self, *, create: bool) -> Session | None:
        if not database_file(self.path, create):
            return None
        return _DuckDBSession(duckdb.connect(str(self.path)))


class _DuckDBSession(Session):
    """A DuckDB connection; the stage is the Arrow table itself, registered as a view."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn = conn
        self._staged = False

    def begin(self) -> None:
        self._conn.execute("BEGIN TRANSACTION")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        self._conn.execute("ROLLBACK")

    def close(self) -> None:
        if self._staged:
            self._conn.unregister(STAGE)
        self._conn.close()

    def execute(self, sql: str, params: Sequence[object] | None = None) -> None:
        self._conn.execute(sql, params)

    def count(self, sql: str) -> int:
        row = self._conn.execute(sql).fetchone()
        return int(row[0]) if row else 0

    def fetch(self, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def columns(self, table: TableName) -> list[str]:
        rows = self._conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
            "AND table_schema = coalesce(?, current_schema()) AND table_name = ? ORDER BY ordinal_position",
            [table.schema, table.name],
        ).fetchall()
        return [str(row[0]) for row in rows]

    def arrow_types(self, table: TableName) -> dict[str, pa.DataType]:
        result = self._conn.execute(f"SELECT * FROM {table.sql()} LIMIT 0").arrow()
        return {f.name: f.type for f in result.schema}

    def stage(self, data: pa.Table, types: Sequence[str]) -> None:
        self._conn.register(STAGE, data)
        self._staged = True
