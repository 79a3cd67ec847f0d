"""A SQLite database file as a target.

SQLite has few types, so values are stored in forms that keep them exact and sortable: decimals
as TEXT (``"12.50"``, never a lossy REAL), dates and times as ISO text, timestamps as fixed-width
text (``2024-05-01 12:00:00.000000``; timezone-aware ones in UTC with ``+00:00``), booleans as
0/1.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from ematix_flow.pipelines.targets.rows import python_rows
from ematix_flow.pipelines.targets.session import (
    STAGE,
    Session,
    TableName,
    database_file,
    quote,
    utc_text,
)
from ematix_flow.pipelines.targets.sql import SQLTarget

BUSY_TIMEOUT = 30.0  # seconds to wait for another writer's lock
#: Arrow categories (see ``sql.category``) to SQLite declared types (their affinity is what counts).
SQLITE_TYPES: dict[str, str] = {
    **dict.fromkeys(["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"], "INTEGER"),
    "float32": "REAL",
    "float64": "REAL",
    "decimal": "TEXT",
    "string": "TEXT",
    "binary": "BLOB",
    "bool": "BOOLEAN",
    "date": "DATE",
    "time": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "null": "TEXT",
    "text": "TEXT",
    "bigint": "INTEGER",
    "boolean": "BOOLEAN",
}


class SQLiteTarget(SQLTarget):
    """A table in a SQLite file (created with its folders when missing).

    ``table`` is a bare table name: SQLite has no schemas, so ``"schema.table"`` is refused. Run
    history is the table ``ematix_flow_run_history`` of the same file.
    """

    kind: ClassVar[str] = "sqlite"
    type_names: ClassVar[dict[str, str]] = SQLITE_TYPES
    history: ClassVar[TableName] = TableName(None, "ematix_flow_run_history")

    def __init__(self, path: Path, table: str) -> None:
        super().__init__(table, schemas=False)
        self.path = Path(path)

    def describe(self) -> str:
        """E.g. ``sqlite out/shop.sqlite table orders``."""
        return f"sqlite {self.path} table {self.table}"

    def _open(self, *, create: bool) -> Session | None:
        if not database_file(self.path, create):
            return None
        return _SQLiteSession(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None))

    def _timestamp_literal(self, moment: datetime) -> str:
        return f"'{utc_text(moment)}'"

    def _distinct(self, left: str, right: str) -> str:
        return f"{left} IS NOT {right}"


def to_sqlite(value: object) -> object:
    """A Python value in the form this target stores it (see the module docstring)."""
    if isinstance(value, datetime):
        return utc_text(value) if value.tzinfo else value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


class _SQLiteSession(Session):
    """A SQLite connection in autocommit mode, with explicit BEGIN IMMEDIATE ... COMMIT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()

    def execute(self, sql: str, params: Sequence[object] | None = None) -> None:
        self._conn.execute(sql, [to_sqlite(v) for v in params or ()])

    def count(self, sql: str) -> int:
        return self._conn.execute(sql).rowcount

    def fetch(self, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, [to_sqlite(v) for v in params or ()]).fetchall()

    def columns(self, table: TableName) -> list[str]:
        rows = self._conn.execute("SELECT name FROM pragma_table_info(?, 'main')", [table.name]).fetchall()
        return [str(row[0]) for row in rows]

    def stage(self, data: pa.Table, types: Sequence[str]) -> None:
        columns = ", ".join(f"{quote(name)} {t}" for name, t in zip(data.column_names, types, strict=True))
        self._conn.execute(f"CREATE TEMP TABLE {quote(STAGE)} ({columns})")
        params = ", ".join("?" * data.num_columns)
        self._conn.executemany(
            f"INSERT INTO {quote(STAGE)} VALUES ({params})",
            ([to_sqlite(v) for v in row] for row in python_rows(data)),
        )
