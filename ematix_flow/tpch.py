"""TPC-H data and queries: generate Parquet with ``tpchgen-cli``, read the 22 query texts, register tables.

Example:
    >>> from ematix_flow import tpch
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
from typing import Protocol

from ematix_flow.errors import ConfigError

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


class ParquetRegistrar(Protocol):
    """Anything tables can be registered on: a DataFusion ``SessionContext`` or a ``Mesh``."""

    def register_parquet(self, name: str, path: str, /) -> object:
        """Register the Parquet file or folder ``path`` as table ``name``."""
        ...


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


def query_dir() -> Path:
    """The folder holding ``q01.sql`` ... ``q22.sql`` (``bench/tpch/queries`` in the source tree).

    Raises:
        ConfigError: the folder is absent (an installed package without the source tree).
    """
    folder = Path(__file__).resolve().parents[1] / "bench" / "tpch" / "queries"
    if not folder.is_dir():
        raise ConfigError(f"TPC-H query texts not found at {folder}: run from a source checkout")
    return folder


def _name(n: int) -> str:
    return f"q{n:02d}"


def query(n: int) -> str:
    """The SQL text of TPC-H query ``n`` (1..22), without the trailing ``;``.

    Raises:
        ConfigError: ``n`` is not a TPC-H query number or its file is missing.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= QUERY_COUNT:
        raise ConfigError(f"no TPC-H query {n!r}: choose 1..{QUERY_COUNT}")
    path = query_dir() / f"{_name(n)}.sql"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return text.strip().rstrip(";").rstrip()


def queries() -> dict[str, str]:
    """All 22 query texts keyed ``"q01"`` ... ``"q22"``, in order."""
    return {_name(n): query(n) for n in range(1, QUERY_COUNT + 1)}


def parse_query_name(spec: str | int) -> int:
    """Turn ``5``, ``"5"``, ``"q5"`` or ``"Q05"`` into the query number 5.

    Raises:
        ConfigError: ``spec`` names no TPC-H query.
    """
    text = str(spec).strip().lower().removeprefix("q")
    if not text.isdigit() or not 1 <= int(text) <= QUERY_COUNT:
        raise ConfigError(f"no TPC-H query {str(spec)!r}: use q01..q{QUERY_COUNT} or 1..{QUERY_COUNT}")
    return int(text)


def select_queries(spec: str | None) -> dict[str, str]:
    """The queries named in a comma-separated ``spec`` such as ``"q01,q3,5"`` (all 22 when empty).

    Raises:
        ConfigError: a name is not a TPC-H query.
    """
    if spec is None or not spec.strip():
        return queries()
    numbers = [parse_query_name(part) for part in spec.split(",") if part.strip()]
    return {_name(n): query(n) for n in dict.fromkeys(numbers)}


def register_all(target: ParquetRegistrar, data_dir: str | Path) -> dict[str, Path]:
    """Register the eight tables of ``data_dir`` on ``target`` (a ``SessionContext`` or a ``Mesh``).

    Returns:
        The path registered for each table.

    Raises:
        ConfigError: a table is missing from ``data_dir``.
    """
    registered: dict[str, Path] = {}
    for name in TABLES:
        path = table_path(data_dir, name)
        if path is None:
            raise ConfigError(f"table {name} missing from {data_dir}: run `flow tpch gen --out {data_dir}`")
        target.register_parquet(name, str(path))
        registered[name] = path
    return registered
