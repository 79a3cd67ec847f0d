"""Check a mesh's TPC-H or TPC-DS answers against single-process DataFusion, DuckDB as a third opinion.

For every query the mesh's answer is compared with single-process DataFusion's (that decides "equal");
separately, DataFusion's answer is compared with DuckDB's, which only informs: the two engines may
legitimately differ (decimal precision, NULL ordering), and the mesh is meant to equal DataFusion.
A query single-process DataFusion cannot run is skipped and not counted against the mesh.

Example:
    >>> from ematix_flow import Mesh
    >>> from ematix_flow.workloads import check
    >>> data = check.prepare_data("tpch", 0.1)  # doctest: +SKIP
    >>> with Mesh.local(workers=3) as mesh:  # doctest: +SKIP
    ...     results = check.run_check("tpch", mesh, data, check.select("tpch", "q01,q06"))
    >>> for line in check.summary_lines(results):  # doctest: +SKIP
    ...     print(line)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
from datafusion import SessionConfig, SessionContext

from ematix_flow.engine.tables import ParquetRegistrar
from ematix_flow.errors import ConfigError, FlowError, first_line
from ematix_flow.workloads import tpcds, tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

__all__ = [
    "BENCHMARKS",
    "QueryCheck",
    "benchmark",
    "exit_code",
    "prepare_data",
    "run_check",
    "select",
    "summary_lines",
    "write_json",
]

logger = logging.getLogger(__name__)

EQUAL = "equal"
DIFFERS = "differs"
ERROR = "error"
SKIP = "skip"

AGREES = "agrees"
OFF = "off"

_MAX_MESSAGE = 300
# DataFusion keeps 6 decimal places where DuckDB computes doubles (avg of decimals, decimal division):
# against DuckDB, values within 1e-6 absolute or 1e-5 relative count as equal
_DUCKDB_REL_TOL = 1e-5
_DUCKDB_ABS_TOL = 1e-6
_REFERENCE_PARTITIONS = 2


class _Benchmark(Protocol):
    """What :mod:`ematix_flow.workloads.tpch` and :mod:`ematix_flow.workloads.tpcds` both offer."""

    @property
    def TABLES(self) -> tuple[str, ...]:  # noqa: N802 - the module constant
        """The table names."""
        ...

    def default_data_dir(self, sf: float) -> Path:
        """The conventional data folder for scale factor ``sf``."""
        ...

    def is_generated(self, data_dir: str | Path) -> bool:
        """Whether every table is present."""
        ...

    def generate(self, sf: float, out: str | Path, *, force: bool = False) -> Path:
        """Write the tables as Parquet."""
        ...

    def select_queries(self, spec: str | None) -> dict[str, str]:
        """The queries named in a comma-separated list (all when empty)."""
        ...

    def table_path(self, data_dir: str | Path, name: str) -> Path | None:
        """The file or folder of a table."""
        ...

    def register_all(self, target: ParquetRegistrar, data_dir: str | Path) -> dict[str, str]:
        """Register every table on ``target``."""
        ...


BENCHMARKS: dict[str, _Benchmark] = {"tpch": tpch, "tpcds": tpcds}
"""The benchmarks ``flow check`` knows, by name."""


class QueryRunner(Protocol):
    """What the check needs of a mesh: table registration and a query returning a whole table."""

    def register_parquet(self, name: str, path: str, /) -> object:
        """Register the Parquet file or folder ``path`` as table ``name``."""
        ...

    def sql(self, sql: str) -> pa.Table:
        """Run ``sql`` and return its answer."""
        ...


@dataclass
class QueryCheck:
    """The verdict on one query.

    ``status`` is ``equal``, ``differs`` or ``error`` (the mesh against DataFusion), or ``skip`` when
    single-process DataFusion itself failed. ``duckdb`` is ``agrees``, ``differs``, ``error`` (DataFusion
    against DuckDB) or ``off``.
    """

    query: str
    status: str
    message: str | None = None
    mesh_seconds: float | None = None
    datafusion_seconds: float | None = None
    rows: int | None = None
    peers_used: int | None = None
    duckdb: str = OFF
    duckdb_message: str | None = None
    duckdb_seconds: float | None = None

    @property
    def counted(self) -> bool:
        """Whether the query counts for the mesh (DataFusion could run it)."""
        return self.status != SKIP

    @property
    def failed(self) -> bool:
        """Whether the mesh answered differently from DataFusion or failed."""
        return self.status in (DIFFERS, ERROR)

    def line(self) -> str:
        """One line for the terminal, e.g. ``q05  equal  0.41s  rows=100  duckdb=agrees``.

        The ``duckdb=`` column is left out when DuckDB was not asked.
        """
        if self.status == SKIP:
            return f"{self.query}  SKIP: DataFusion cannot run it: {self.message}"
        if self.status == EQUAL:
            head = f"{self.query}  equal  {self.mesh_seconds or 0.0:.2f}s  rows={self.rows}"
        elif self.status == DIFFERS:
            head = f"{self.query}  DIFFERS: {self.message}"
        else:
            head = f"{self.query}  ERROR (mesh): {self.message}"
        return head if self.duckdb == OFF else f"{head}  duckdb={self.duckdb_verdict()}"

    def duckdb_verdict(self) -> str:
        """``agrees``, ``off``, ``differs: <first difference>`` or ``error: <message>``."""
        if self.duckdb_message is None:
            return self.duckdb
        return f"{self.duckdb}: {self.duckdb_message}"


def _one_line(exc: BaseException, *, with_type: bool = True) -> str:
    text = first_line(exc)
    if with_type and text != type(exc).__name__:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def benchmark(name: str) -> _Benchmark:
    """The module of benchmark ``name`` (``tpch`` or ``tpcds``).

    Raises:
        ConfigError: ``name`` is no known benchmark.
    """
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ConfigError(f"no benchmark {name!r}: choose {' or '.join(BENCHMARKS)}") from None


def select(name: str, spec: str | None) -> dict[str, str]:
    """The queries of benchmark ``name`` named in ``spec`` (``"q01,q05"``; all when empty).

    Raises:
        ConfigError: the benchmark or a query name is unknown.
    """
    return benchmark(name).select_queries(spec)


def prepare_data(name: str, sf: float, data_dir: str | Path | None = None) -> Path:
    """The data folder of benchmark ``name`` at scale factor ``sf``, generated if a table is missing.

    Args:
        name: ``tpch`` or ``tpcds``.
        sf: The scale factor.
        data_dir: The folder [default: ``data/{name}-sf{sf}`` under the cwd].

    Raises:
        ConfigError: the benchmark is unknown or generation failed.
    """
    bench = benchmark(name)
    folder = Path(data_dir) if data_dir is not None else bench.default_data_dir(sf)
    if not bench.is_generated(folder):
        logger.info("generating %s SF %g into %s", name, sf, folder)
        bench.generate(sf, folder)
    return folder


def _reference_context(bench: _Benchmark, data_dir: Path) -> SessionContext:
    ctx = SessionContext(SessionConfig().with_target_partitions(_REFERENCE_PARTITIONS))
    bench.register_all(ctx, data_dir)
    return ctx


def _duckdb_connection(bench: _Benchmark, data_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table over its Parquet file(s)."""
    con = tpcds.connect_duckdb()  # Parquet support is built in: no extension to load
    for name in bench.TABLES:
        path = bench.table_path(data_dir, name)
        if path is None:
            con.close()
            raise ConfigError(f"table {name} missing from {data_dir}")
        source = str(path / "*.parquet") if path.is_dir() else str(path)
        literal = "'" + source.replace("'", "''") + "'"
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet({literal})')
    return con


def _run_duckdb(con: duckdb.DuckDBPyConnection, sql: str, timeout: float | None) -> pa.Table:
    """Run ``sql`` on DuckDB, interrupting it after ``timeout`` seconds."""
    timer = threading.Timer(timeout, con.interrupt) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        if timer is not None:
            timer.cancel()


def run_check(
    name: str,
    mesh: QueryRunner,
    data_dir: str | Path,
    queries: Mapping[str, str],
    *,
    use_duckdb: bool = True,
    timeout: float | None = None,
    on_result: Callable[[QueryCheck], None] | None = None,
) -> list[QueryCheck]:
    """Run every query on the mesh, on single-process DataFusion and on DuckDB, and compare.

    The tables of ``data_dir`` are registered on the mesh first. Each query's mesh failure is
    recorded (``error``), never raised; a query DataFusion cannot run is recorded as ``skip``.

    Args:
        name: ``tpch`` or ``tpcds``.
        mesh: The mesh (or anything with ``register_parquet`` and ``sql``).
        data_dir: The folder holding the benchmark's Parquet files.
        queries: Query texts by name, e.g. from :func:`select`.
        use_duckdb: Also ask DuckDB (informational).
        timeout: Interrupt a DuckDB query after this many seconds.
        on_result: Called with each verdict as soon as it is known (progress output).

    Returns:
        One :class:`QueryCheck` per query, in the order of ``queries``.

    Raises:
        ConfigError: the benchmark is unknown or a table is missing.
    """
    bench = benchmark(name)
    data_dir = Path(data_dir)
    bench.register_all(mesh, data_dir)
    ctx = _reference_context(bench, data_dir)
    con = _duckdb_connection(bench, data_dir) if use_duckdb else None
    results: list[QueryCheck] = []
    try:
        for query_name, sql in queries.items():
            result = _check_one(query_name, sql, mesh, ctx, con, timeout)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if con is not None:
            con.close()
    return results


def _check_one(
    name: str,
    sql: str,
    mesh: QueryRunner,
    ctx: SessionContext,
    con: duckdb.DuckDBPyConnection | None,
    timeout: float | None,
) -> QueryCheck:
    ordered = query_is_ordered(sql)
    started = time.perf_counter()
    try:
        expected = ctx.sql(sql).to_arrow_table()
    except Exception as exc:  # DataFusion's own limits are not the mesh's fault
        return QueryCheck(name, SKIP, _one_line(exc, with_type=False))
    result = QueryCheck(name, ERROR, datafusion_seconds=time.perf_counter() - started)
    started = time.perf_counter()
    try:
        actual = mesh.sql(sql)
    except FlowError as exc:
        result.message = _one_line(exc)
    except Exception as exc:  # an engine bug that escaped translation: record it, go on
        result.message = f"untranslated {_one_line(exc)}"
    else:
        result.mesh_seconds = time.perf_counter() - started
        result.rows = actual.num_rows
        run = getattr(mesh, "last_run", None)
        if run is not None:
            result.peers_used = len(run.peers_used)
        result.message = compare_tables(actual, expected, ordered=ordered)
        result.status = EQUAL if result.message is None else DIFFERS
    if con is not None:
        _ask_duckdb(result, sql, expected, con, ordered, timeout)
    logger.info("%s: %s", name, result.line())
    return result


def _ask_duckdb(
    result: QueryCheck,
    sql: str,
    expected: pa.Table,
    con: duckdb.DuckDBPyConnection,
    ordered: bool,
    timeout: float | None,
) -> None:
    """Record whether DataFusion's answer (``actual`` in the message) equals DuckDB's (``expected``)."""
    started = time.perf_counter()
    try:
        other = _run_duckdb(con, sql, timeout)
    except Exception as exc:  # DuckDB is informational: any failure is recorded, never raised
        result.duckdb, result.duckdb_message = ERROR, _one_line(exc)
        return
    result.duckdb_seconds = time.perf_counter() - started
    # engines name unaliased expressions differently (count(*) vs count_star()): compare values only
    diff = compare_tables(
        expected,
        other,
        ordered=ordered,
        rel_tol=_DUCKDB_REL_TOL,
        abs_tol=_DUCKDB_ABS_TOL,
        check_names=False,
    )
    result.duckdb = AGREES if diff is None else DIFFERS
    result.duckdb_message = diff


def exit_code(results: list[QueryCheck]) -> int:
    """1 when the mesh answered any query differently from DataFusion or failed it, else 0."""
    return 1 if any(r.failed for r in results) else 0


def summary_lines(results: list[QueryCheck]) -> list[str]:
    """``N/M equal`` (M: queries DataFusion can run), then the DataFusion-vs-DuckDB disagreements."""
    counted = [r for r in results if r.counted]
    equal = sum(r.status == EQUAL for r in counted)
    errors = sum(r.status == ERROR for r in counted)
    differs = sum(r.status == DIFFERS for r in counted)
    skipped = len(results) - len(counted)
    head = f"{equal}/{len(counted)} equal"
    details = [f"{n} {what}" for n, what in ((differs, "differ"), (errors, "mesh errors")) if n]
    if skipped:
        details.append(f"{skipped} skipped (DataFusion cannot run them)")
    lines = [head + (f" ({', '.join(details)})" if details else "")]
    asked = [r for r in counted if r.duckdb != OFF]
    if asked:
        disagree = [r for r in asked if r.duckdb != AGREES]
        lines.append(
            f"DataFusion vs DuckDB: {len(asked) - len(disagree)}/{len(asked)} agree"
            + (" (in messages: actual = DataFusion, expected = DuckDB)" if disagree else "")
        )
        lines += [f"  {r.query}  {r.duckdb_verdict()}" for r in disagree]
    return lines


def write_json(path: str | Path, results: list[QueryCheck], **meta: Any) -> None:
    """Write every verdict and the summary (plus ``meta``, e.g. benchmark and sf) as JSON."""
    counted = [r for r in results if r.counted]
    document = {
        **meta,
        "summary": {
            "queries": len(results),
            "counted": len(counted),
            "equal": sum(r.status == EQUAL for r in counted),
            "differs": [r.query for r in results if r.status == DIFFERS],
            "errors": [r.query for r in results if r.status == ERROR],
            "skipped": [r.query for r in results if r.status == SKIP],
            "duckdb_disagrees": [r.query for r in counted if r.duckdb not in (AGREES, OFF)],
        },
        "queries": [asdict(r) for r in results],
    }
    try:
        Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
