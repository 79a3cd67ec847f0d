"""A PostgreSQL table as a target (psycopg 3): rows are staged with COPY into a temporary table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
import pyarrow as pa
from psycopg.conninfo import conninfo_to_dict

from ematix_flow.errors import ConfigError
from ematix_flow.pipelines.targets.rows import python_rows
from ematix_flow.pipelines.targets.session import STAGE, Session, TableName, quote
from ematix_flow.pipelines.targets.sql import SQLTarget

CONNECT_TIMEOUT = 10  # seconds, unless the DSN sets connect_timeout
#: Arrow categories (see ``sql.category``) to PostgreSQL types (unsigned ones widened to fit).
POSTGRES_TYPES: dict[str, str] = {
    "int8": "SMALLINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "SMALLINT",
    "uint16": "INTEGER",
    "uint32": "BIGINT",
    "uint64": "NUMERIC(20,0)",
    "float32": "REAL",
    "float64": "DOUBLE PRECISION",
    "decimal": "NUMERIC({precision},{scale})",
    "decimal_max": "1000",
    "string": "TEXT",
    "binary": "BYTEA",
    "bool": "BOOLEAN",
    "date": "DATE",
    "time": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "null": "TEXT",
    "text": "TEXT",
    "bigint": "BIGINT",
    "boolean": "BOOLEAN",
}
#: The DSN parts describe() shows (never the password).
_SHOWN = ("host", "port", "dbname", "user")


class PostgresTarget(SQLTarget):
    """A table in a PostgreSQL database, reached with a libpq ``dsn`` (key=value or URI).

    ``table`` is ``"table"`` (the connection's current schema) or ``"schema.table"`` (the schema is
    created when missing). Run history is the table ``ematix_flow.run_history`` of the database.
    """

    kind: ClassVar[str] = "postgres"
    type_names: ClassVar[dict[str, str]] = POSTGRES_TYPES

    def __init__(self, dsn: str, table: str) -> None:
        super().__init__(table)
        try:
            self._params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(  # libpq's message may quote part of the DSN, password included: not shown
                "postgres target dsn is not a valid connection string "
                '(use "postgresql://user@host:5432/db" or "host=... dbname=...")'
            ) from exc
        self.dsn = dsn

    def describe(self) -> str:
        """E.g. ``postgres host=db port=5432 dbname=shop user=etl table analytics.orders``."""
        shown = " ".join(f"{k}={self._params[k]}" for k in _SHOWN if self._params.get(k) is not None)
        return f"postgres {shown or '(libpq defaults)'} table {self.table}"

    def _lock(self, session: Session) -> None:
        # self-conflicting, and readers still read: a second run waits for the first one's commit
        session.execute(f"LOCK TABLE {self.table.sql()} IN SHARE ROW EXCLUSIVE MODE")

    def _open(self, *, create: bool) -> Session | None:
        extra: dict[str, Any] = {"application_name": "ematix-flow"}
        if "connect_timeout" not in self._params:
            extra["connect_timeout"] = CONNECT_TIMEOUT
        return _PostgresSession(psycopg.connect(self.dsn, **extra))


class _PostgresSession(Session):
    """A psycopg connection: its transaction starts with the first statement."""

    param: ClassVar[str] = "%s"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def begin(self) -> None:
        """Nothing to do: psycopg opens a transaction at the first statement."""

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()

    def execute(self, sql: str, params: Sequence[object] | None = None) -> None:
        # no parameters: psycopg then reads no %-placeholders, so identifiers may hold any character
        self._conn.execute(sql, params or None)

    def count(self, sql: str) -> int:
        return self._conn.execute(sql).rowcount

    def fetch(self, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params or None).fetchall()

    def columns(self, table: TableName) -> list[str]:
        rows = self._conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = coalesce(%s::text, current_schema()) AND table_name = %s "
            "ORDER BY ordinal_position",
            [table.schema, table.name],
        ).fetchall()
        return [str(row[0]) for row in rows]

    def arrow_types(self, table: TableName) -> dict[str, pa.DataType]:
        from ematix_flow.pipelines.sources import postgres_arrow_type

        cursor = self._conn.execute(f"SELECT * FROM {table.sql()} LIMIT 0")
        found = {
            c.name: postgres_arrow_type(c.type_code, c.precision, c.scale) for c in cursor.description or ()
        }
        return {name: kind for name, kind in found.items() if kind is not None}

    def stage(self, data: pa.Table, types: Sequence[str]) -> None:
        names = data.column_names
        columns = ", ".join(f"{quote(name)} {t}" for name, t in zip(names, types, strict=True))
        self._conn.execute(f"CREATE TEMP TABLE {quote(STAGE)} ({columns}) ON COMMIT DROP")
        listed = ", ".join(quote(name) for name in names)
        with self._conn.cursor() as cursor, cursor.copy(f"COPY {quote(STAGE)} ({listed}) FROM STDIN") as copy:
            for row in python_rows(data):
                copy.write_row(row)
