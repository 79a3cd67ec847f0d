"""TPC-DS data and queries: generate Parquet with DuckDB's tpcds extension, read the 99 query texts.

The extension ships as a file inside the ``duckdb-extension-tpcds`` package and is loaded by path,
with DuckDB's extension auto-install and auto-load off: nothing is ever downloaded at run time.

Example:
    >>> from ematix_flow.workloads import tpcds
    >>> data = tpcds.generate(0.1, "data/tpcds-sf0.1")  # doctest: +SKIP
    >>> ctx = datafusion.SessionContext()  # doctest: +SKIP
    >>> tpcds.register_all(ctx, data)  # doctest: +SKIP
    >>> ctx.sql(tpcds.query(3)).to_arrow_table()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import duckdb

from ematix_flow.errors import ConfigError, first_line
from ematix_flow.workloads.querysets import QuerySet, table_path

__all__ = [
    "TABLES",
    "connect_duckdb",
    "default_data_dir",
    "duckdb_extension",
    "generate",
    "is_generated",
    "parse_query_name",
    "queries",
    "query",
    "query_dir",
    "register_all",
    "select_queries",
    "table_path",
]

logger = logging.getLogger(__name__)

TABLES: tuple[str, ...] = (
    "call_center",
    "catalog_page",
    "catalog_returns",
    "catalog_sales",
    "customer",
    "customer_address",
    "customer_demographics",
    "date_dim",
    "household_demographics",
    "income_band",
    "inventory",
    "item",
    "promotion",
    "reason",
    "ship_mode",
    "store",
    "store_returns",
    "store_sales",
    "time_dim",
    "warehouse",
    "web_page",
    "web_returns",
    "web_sales",
    "web_site",
)
"""The 24 TPC-DS tables (7 fact tables, 17 dimensions), in alphabetical order."""

QUERY_COUNT = 99

_NO_DOWNLOADS = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}


def duckdb_extension(name: str) -> Path:
    """The ``NAME.duckdb_extension`` file shipped by the ``duckdb-extension-NAME`` package.

    The file for the running DuckDB version is preferred; the package pins that version anyway.

    Raises:
        ConfigError: the package is not installed or holds no extension file.
    """
    package = f"duckdb_extension_{name}"
    hint = f"install it: pip install duckdb-extension-{name}=={duckdb.__version__}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"DuckDB's {name} extension is missing: {hint}")
    root = Path(next(iter(spec.submodule_search_locations))) / "extensions"
    exact = root / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if exact.is_file():
        return exact
    found = sorted(root.glob(f"*/{name}.duckdb_extension"))
    if not found:
        raise ConfigError(f"no {name}.duckdb_extension under {root}: {hint}")
    return found[-1]


def connect_duckdb(*extensions: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never downloads anything, with ``extensions`` loaded from their files.

    Raises:
        ConfigError: an extension is not installed or DuckDB refuses to load it.
    """
    con = duckdb.connect(":memory:", config=dict(_NO_DOWNLOADS))
    try:
        for name in extensions:
            path = duckdb_extension(name)
            try:
                con.execute(f"LOAD {_quote(str(path))}")
            except duckdb.Error as exc:
                raise ConfigError(f"DuckDB cannot load {path}: {first_line(exc)}") from exc
    except BaseException:
        con.close()
        raise
    return con


def _quote(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def default_data_dir(sf: float) -> Path:
    """The conventional data folder for scale factor ``sf``: ``data/tpcds-sf{sf}`` under the cwd."""
    return Path("data") / f"tpcds-sf{sf:g}"


def is_generated(data_dir: str | Path) -> bool:
    """Whether all 24 tables are present in ``data_dir``."""
    return all(table_path(data_dir, name) is not None for name in TABLES)


def generate(sf: float, out: str | Path, *, force: bool = False) -> Path:
    """Write TPC-DS at scale factor ``sf`` as one Parquet file per table into ``out``.

    DuckDB's ``dsdgen`` builds the tables in memory, then each is copied to ``TABLE.parquet``. Nothing
    is done when all 24 tables already exist, unless ``force``. The files are written to a temporary
    folder beside ``out`` and moved in only once every table is written, so an interrupted run leaves
    no half-written table behind.

    Args:
        sf: The scale factor (1 is about 1 GB of CSV; 0.01 is tiny).
        out: The folder to write ``call_center.parquet`` ... ``web_site.parquet`` into.
        force: Regenerate even when the data already exists.

    Returns:
        The ``out`` folder.

    Raises:
        ConfigError: ``sf`` is not positive, the tpcds extension is missing or generation failed.
    """
    out = Path(out)
    if not sf > 0:
        raise ConfigError(f"scale factor must be positive, got {sf}")
    if not force and is_generated(out):
        logger.info("TPC-DS data already in %s: reusing it", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _run_dsdgen(sf, tmp)
        missing = [name for name in TABLES if not (tmp / f"{name}.parquet").is_file()]
        if missing:
            raise ConfigError(f"dsdgen did not write {', '.join(missing)} into {tmp}")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("TPC-DS SF %g written to %s", sf, out)
    return out


def _run_dsdgen(sf: float, dest: Path) -> None:
    con = connect_duckdb("tpcds")
    try:
        con.execute(f"CALL dsdgen(sf={sf!r})")
        for name in TABLES:
            target = dest / f"{name}.parquet"
            logger.debug("writing %s", target)
            con.execute(f"COPY {name} TO {_quote(str(target))} (FORMAT parquet)")
    except duckdb.Error as exc:
        raise ConfigError(f"TPC-DS generation at SF {sf:g} failed: {first_line(exc)}") from exc
    finally:
        con.close()


def _move_into_place(tmp: Path, out: Path) -> None:
    """Move the generated files from ``tmp`` to ``out`` (one rename if ``out`` does not exist yet)."""
    if not out.exists():
        tmp.rename(out)
        return
    if not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    for name in TABLES:
        folder = out / name
        if folder.is_dir():  # a multi-part layout would be registered instead of the new file
            shutil.rmtree(folder)
        os.replace(tmp / f"{name}.parquet", out / f"{name}.parquet")


_SET = QuerySet("TPC-DS", "tpcds", QUERY_COUNT, TABLES)
query_dir = _SET.query_dir
query = _SET.query
queries = _SET.queries
parse_query_name = _SET.parse_query_name
select_queries = _SET.select_queries
register_all = _SET.register_all
