"""A worker's catalog: the tables ``--table NAME=PATH`` and ``--tables-dir DIR`` register at start.

The options follow ``flow sql``'s rules (:func:`ematix_flow.engine.tables.register_all`): a file's format
comes from its extension, a folder holds files of one format, ``--tables-dir`` registers each entry by
its name without extension. Paths are made absolute at start (peers read files by path), so peers
started with the same options agree on the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ematix_flow.engine.tables import Registrar, register_format
from ematix_flow.urls import is_url
from ematix_flow.worker.policy import AccessPolicy


@dataclass(frozen=True)
class Table:
    """One table: its name, format (parquet, csv, json, delta, iceberg) and absolute path or URL."""

    name: str
    kind: str
    path: str

    def register(self, target: Registrar) -> None:
        """Register this table on ``target``."""
        register_format(target, self.kind, self.name, self.path)


@dataclass
class Catalog:
    """The tables a worker serves to Flight SQL clients and ``flow sql --via``, by name."""

    tables: dict[str, Table] = field(default_factory=dict)

    # the Registrar methods: register_all() records each table here
    def register_parquet(self, name: str, path: str) -> None:  # noqa: D102
        self._add(name, "parquet", path)

    def register_csv(self, name: str, path: str) -> None:  # noqa: D102
        self._add(name, "csv", path)

    def register_json(self, name: str, path: str) -> None:  # noqa: D102
        self._add(name, "json", path)

    def register_delta(self, name: str, path: str) -> None:  # noqa: D102
        self._add(name, "delta", path)

    def register_iceberg(self, name: str, table: str, *, catalog: str) -> None:  # noqa: D102
        self.tables[name] = Table(name, "iceberg", f"iceberg://{catalog}/{table}")

    def _add(self, name: str, kind: str, path: str) -> None:
        where = path if is_url(path) else str(Path(path).expanduser().resolve())
        self.tables[name] = Table(name, kind, where)

    def check(self, policy: AccessPolicy) -> None:
        """Refuse tables outside the worker's ``--data-root`` directories (AccessDeniedError)."""
        for table in self.tables.values():
            if table.kind != "iceberg":  # its files are checked when a plan reads them
                policy.check_path(table.path, f"table {table.name}")

    def register(self, target: Registrar) -> None:
        """Register every table on ``target``."""
        for table in self.tables.values():
            table.register(target)

    @property
    def names(self) -> list[str]:
        """The table names, sorted."""
        return sorted(self.tables)
