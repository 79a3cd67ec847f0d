"""A benchmark's query texts and tables (TPC-H, TPC-DS): one implementation for both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ematix_flow.engine.tables import ParquetRegistrar
from ematix_flow.errors import ConfigError
from ematix_flow.urls import folder_url, is_url


def table_path(data_dir: str | Path, name: str) -> Path | None:
    """The Parquet file (``name.parquet``) or folder (``name/``) of table ``name``, or None if absent."""
    base = Path(data_dir)
    single = base / f"{name}.parquet"
    if single.is_file():
        return single
    folder = base / name
    if folder.is_dir() and any(folder.glob("*.parquet")):
        return folder
    return None


@dataclass(frozen=True)
class QuerySet:
    """The numbered queries (``bench/<key>/queries/qNN.sql``) and the tables of one benchmark."""

    title: str  # "TPC-H"
    key: str  # "tpch": the query folder and the CLI group
    count: int
    tables: tuple[str, ...]

    def query_dir(self) -> Path:
        """The folder of the query texts (in the source tree).

        Raises:
            ConfigError: the folder is absent (an installed package without the source tree).
        """
        folder = Path(__file__).resolve().parents[2] / "bench" / self.key / "queries"
        if not folder.is_dir():
            raise ConfigError(f"{self.title} query texts not found at {folder}: run from a source checkout")
        return folder

    def query(self, n: int) -> str:
        """The SQL text of query ``n`` (1..count), without the trailing ``;``.

        Raises:
            ConfigError: ``n`` is not a query number of this benchmark or its file is missing.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.count:
            raise ConfigError(f"no {self.title} query {n!r}: choose 1..{self.count}")
        path = self.query_dir() / f"{_name(n)}.sql"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        return text.strip().rstrip(";").rstrip()

    def queries(self) -> dict[str, str]:
        """All query texts keyed ``"q01"``, ``"q02"``, ... in order."""
        return {_name(n): self.query(n) for n in range(1, self.count + 1)}

    def parse_query_name(self, spec: str | int) -> int:
        """Turn ``5``, ``"5"``, ``"q5"`` or ``"Q05"`` into the query number 5.

        Raises:
            ConfigError: ``spec`` names no query of this benchmark.
        """
        text = str(spec).strip().lower().removeprefix("q")
        if not text.isdigit() or not 1 <= int(text) <= self.count:
            raise ConfigError(
                f"no {self.title} query {str(spec)!r}: use q01..q{self.count} or 1..{self.count}"
            )
        return int(text)

    def select_queries(self, spec: str | None) -> dict[str, str]:
        """The queries named in a comma-separated ``spec`` such as ``"q01,q3,5"`` (all when empty).

        Raises:
            ConfigError: a name is not a query of this benchmark.
        """
        if spec is None or not spec.strip():
            return self.queries()
        numbers = [self.parse_query_name(part) for part in spec.split(",") if part.strip()]
        return {_name(n): self.query(n) for n in dict.fromkeys(numbers)}

    def register_all(self, target: ParquetRegistrar, data_dir: str | Path) -> dict[str, str]:
        """Register every table of ``data_dir`` on ``target``; returns the path of each.

        ``data_dir`` may be a URL prefix holding ``<table>.parquet`` files (``flow tpch gen --out URL``).

        Raises:
            ConfigError: a table is missing from ``data_dir``.
        """
        registered: dict[str, str] = {}
        if is_url(data_dir):
            for name in self.tables:
                registered[name] = f"{folder_url(str(data_dir))}{name}.parquet"
                target.register_parquet(name, registered[name])
            return registered
        for name in self.tables:
            path = table_path(data_dir, name)
            if path is None:
                raise ConfigError(
                    f"table {name} missing from {data_dir}: run `flow {self.key} gen --out {data_dir}`"
                )
            target.register_parquet(name, str(path))
            registered[name] = str(path)
        return registered


def _name(n: int) -> str:
    return f"q{n:02d}"
