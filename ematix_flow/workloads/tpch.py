"""TPC-H data and queries: generate Parquet with ``tpchgen-cli``, read the 22 query texts, register tables.

Example:
    >>> from ematix_flow.workloads import tpch
    >>> data = tpch.generate(0.1, "data/tpch-sf0.1")  # doctest: +SKIP
    >>> ctx = datafusion.SessionContext()  # doctest: +SKIP
    >>> tpch.register_all(ctx, data)  # doctest: +SKIP
    >>> ctx.sql(tpch.query(1)).to_arrow_table()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ematix_flow.errors import ConfigError
from ematix_flow.workloads.querysets import QuerySet, table_path

__all__ = [
    "TABLES",
    "default_data_dir",
    "find_tpchgen",
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
    "region",
    "nation",
    "supplier",
    "customer",
    "part",
    "partsupp",
    "orders",
    "lineitem",
)
"""The eight TPC-H tables, smallest first."""

QUERY_COUNT = 22
_EXECUTABLE = "tpchgen-cli"


def default_data_dir(sf: float) -> Path:
    """The conventional data folder for scale factor ``sf``: ``data/tpch-sf{sf}`` under the cwd."""
    return Path("data") / f"tpch-sf{sf:g}"


def find_tpchgen() -> Path:
    """Locate the ``tpchgen-cli`` executable: next to ``sys.executable`` first, then on PATH.

    Raises:
        ConfigError: it is in neither place.
    """
    beside = Path(sys.executable).parent
    for name in (_EXECUTABLE, _EXECUTABLE + ".exe"):
        candidate = beside / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(_EXECUTABLE)
    if found is not None:
        return Path(found)
    raise ConfigError(
        f"{_EXECUTABLE} not found next to {sys.executable} or on PATH: install it (pip install tpchgen-cli)"
    )


def is_generated(data_dir: str | Path) -> bool:
    """Whether all eight tables are present in ``data_dir``."""
    return all(table_path(data_dir, name) is not None for name in TABLES)


def generate(sf: float, out: str | Path, *, force: bool = False) -> Path:
    """Write TPC-H at scale factor ``sf`` as one Parquet file per table into ``out``.

    Nothing is done when all eight tables already exist, unless ``force``. The files are written to a
    temporary folder beside ``out`` and moved in only once ``tpchgen-cli`` succeeded, so an interrupted
    run leaves no half-written table behind.

    Args:
        sf: The scale factor (1 is about 1 GB of CSV; 0.01 is tiny).
        out: The folder to write ``region.parquet`` ... ``lineitem.parquet`` into.
        force: Regenerate even when the data already exists.

    Returns:
        The ``out`` folder.

    Raises:
        ConfigError: ``sf`` is not positive, ``tpchgen-cli`` is missing or it failed.
    """
    out = Path(out)
    if not sf > 0:
        raise ConfigError(f"scale factor must be positive, got {sf}")
    if not force and is_generated(out):
        logger.info("TPC-H data already in %s: reusing it", out)
        return out
    exe = find_tpchgen()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _run_tpchgen(exe, sf, tmp)
        missing = [name for name in TABLES if not (tmp / f"{name}.parquet").is_file()]
        if missing:
            raise ConfigError(f"{exe} did not write {', '.join(missing)} into {tmp}")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("TPC-H SF %g written to %s", sf, out)
    return out


def _run_tpchgen(exe: Path, sf: float, dest: Path) -> None:
    cmd = [str(exe), "parquet", "-s", f"{sf:g}", "--output-dir", str(dest), "--quiet"]
    logger.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ConfigError(f"could not run {exe}: {exc}") from exc
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        detail = lines[-1] if lines else "no output"
        raise ConfigError(f"{exe.name} failed with exit code {proc.returncode}: {detail}")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Move the generated files from ``tmp`` to ``out`` (one rename if ``out`` does not exist yet)."""
    if not out.exists():
        tmp.rename(out)
        return
    if not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    for name in TABLES:
        folder = out / name
        if folder.is_dir():  # a previous multi-part layout would shadow nothing but confuse readers
            shutil.rmtree(folder)
        os.replace(tmp / f"{name}.parquet", out / f"{name}.parquet")


_SET = QuerySet("TPC-H", "tpch", QUERY_COUNT, TABLES)
query_dir = _SET.query_dir
query = _SET.query
queries = _SET.queries
parse_query_name = _SET.parse_query_name
select_queries = _SET.select_queries
register_all = _SET.register_all
