"""A SQL database as a load sees it: a :class:`Session` on one connection, table names, quoting.

DuckDB, SQLite and PostgreSQL each implement :class:`Session`; :mod:`~ematix_flow.pipelines.targets.sql`
runs a load over it, :mod:`~ematix_flow.pipelines.targets.modes` writes the SQL of each mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from ematix_flow.errors import ConfigError

#: The temporary table (DuckDB: the registered Arrow table) holding a load's rows.
STAGE = "_ematix_flow_stage"


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier (``a "b`` -> ``"a ""b"``), the same in all three databases."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableName:
    """A table, in a schema or in the connection's default schema (``schema`` None)."""

    schema: str | None
    name: str

    @classmethod
    def parse(cls, text: str, *, kind: str, schemas: bool = True) -> TableName:
        """``"table"`` or ``"schema.table"`` (identifiers cannot contain a dot); ConfigError otherwise."""
        parts = text.split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f'{kind} target table {text!r}: use "table" or "schema.table"')
        if len(parts) == 2 and not schemas:
            raise ConfigError(
                f"{kind} target table {text!r}: {kind} has no schemas, use a bare table name "
                f'(e.g. table = "{parts[0]}_{parts[1]}")'
            )
        return cls(parts[0], parts[1]) if len(parts) == 2 else cls(None, parts[0])

    def sql(self) -> str:
        """The quoted, qualified name for SQL text."""
        return f"{quote(self.schema)}.{quote(self.name)}" if self.schema else quote(self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def database_file(path: Path, create: bool) -> bool:
    """Whether a file database may be opened at ``path``: it exists, or may be made (its folder is)."""
    if path.exists():
        return True
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return create


def utc_text(moment: datetime) -> str:
    """A moment as fixed-width UTC text, ``2024-05-01 12:00:00.000000+00:00`` (sorts as it orders)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


class Session(ABC):
    """One open connection to a SQL database: the few operations a load needs."""

    #: The placeholder of a query parameter: ``?`` (DuckDB, SQLite) or ``%s`` (psycopg).
    param: ClassVar[str] = "?"

    @abstractmethod
    def begin(self) -> None:
        """Start the transaction."""

    @abstractmethod
    def commit(self) -> None:
        """Commit the transaction."""

    @abstractmethod
    def rollback(self) -> None:
        """Roll the transaction back."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (an open transaction is rolled back)."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[object] | None = None) -> None:
        """Run one statement (parameters only with fixed SQL text: never with user identifiers)."""

    @abstractmethod
    def count(self, sql: str) -> int:
        """Run one INSERT, UPDATE or DELETE; return the number of rows it changed."""

    @abstractmethod
    def fetch(self, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        """Run one query; return its rows."""

    @abstractmethod
    def columns(self, table: TableName) -> list[str]:
        """The column names of ``table`` in order; empty when it does not exist."""

    @abstractmethod
    def stage(self, data: pa.Table, types: Sequence[str]) -> None:
        """Make ``data`` readable as the table :data:`STAGE` (of SQL ``types``) in this transaction."""

    def arrow_types(self, table: TableName) -> dict[str, pa.DataType]:
        """The Arrow type of each column of an existing ``table``, where the database says (else none)."""
        return {}
