"""Parquet targets: a folder of Parquet files, loaded by append or truncate, committed by one rename.

A target ``out/sales`` is laid out as::

    out/sales/                          the dataset: readers register this folder
        part-<run_id>.parquet           the rows of one run (append adds one, truncate leaves one)
        _ematix_flow/run_history        the run history (Parquet, one row per run)
        _ematix_flow/pending-<run_id>   an append's history row, until folded into run_history
    out/.sales.lock                     held (flock) while a load or a failure record writes
    out/.sales.new-<run_id>/            a truncate's next contents, before and after the swap
    out/.sales.old-<run_id>/            the contents a truncate replaced (two-rename fallback only)

No side file ends in ``.parquet``: DataFusion reads every ``*.parquet`` of the folder, ``_`` and
``.`` prefixed ones included (pyarrow skips those), and with
``listing_table_ignore_subdirectory = false`` it also reads the ``*.parquet`` of subfolders.

**Commit points.** *truncate* builds the new contents (its part file, and the history carried over
with this run's row added) in ``.sales.new-<run_id>``, then swaps it with the folder in one
``renameat2(RENAME_EXCHANGE)``: at every moment ``out/sales`` holds the complete old or the
complete new contents, data and history together. Where the exchange is not available (not
Linux, or a file system without it) it takes two renames, folder -> ``.old-<run_id>`` then
``.new-<run_id>`` -> folder, and the folder is missing between them. *append* first writes its
history row as ``pending-<run_id>``, then renames its part file from a hidden temporary name to
``part-<run_id>.parquet``: that rename is the commit. The pending row is folded into
``run_history`` afterwards. A run with no rows writes no part file: its row goes straight into
``run_history`` (one rename), as there is no data to be consistent with.

**The history read** (:meth:`ParquetTarget.history`, hence ``last_watermark``) is ``run_history``
plus each ``pending-<run_id>`` whose ``part-<run_id>.parquet`` exists. So a run's watermark is
visible exactly when its rows are: never ahead of the data (no gaps), never behind it (no
duplicates on the next run).

**Recovery rule**, applied under the lock before every write (and, read-only, by the history read):

1. the folder is missing and a ``.old-<run_id>`` sibling exists: a two-rename swap died between its
   renames; that run never committed (its history row was only in the new contents), so the
   ``.old`` folder is renamed back;
2. every other ``.new-*`` and ``.old-*`` sibling is an unpublished or a retired copy: removed;
3. pending rows whose part file exists are folded into ``run_history``; the others (their run
   died before its commit) are removed, with leftover temporary files.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ematix_flow.errors import ConfigError, FlowError, LoadError
from ematix_flow.pipelines.targets.base import (
    LoadMode,
    RunRecord,
    Watermark,
    adopt,
    failed_record,
    newest_watermark,
)

_log = logging.getLogger(__name__)

META_DIR = "_ematix_flow"
HISTORY_FILE = "run_history"
PENDING_PREFIX = "pending-"
PART_PREFIX = "part-"
MODES = ("append", "truncate")
HISTORY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("target_table", pa.string()),
        ("mode", pa.string()),
        ("started", pa.timestamp("us", tz="UTC")),
        ("ended", pa.timestamp("us", tz="UTC")),
        ("rows_read", pa.int64()),
        ("rows_written", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("watermark_column", pa.string()),
        ("watermark", pa.string()),
        ("watermark_type", pa.string()),
        ("extra", pa.string()),  # JSON object
    ]
)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class ParquetTarget:
    """A folder of Parquet files loaded by append or truncate (see the module docstring).

    Example:
        >>> from pathlib import Path
        >>> ParquetTarget(Path("out/sales")).describe()
        'parquet out/sales'
    """

    def __init__(self, path: Path) -> None:
        """Target the folder ``path`` (created by the first load; its parent too)."""
        self.path = Path(path)
        folder = Path(os.path.abspath(self.path))
        if not folder.name:
            raise ConfigError(f"parquet target {path}: name a folder, e.g. out/sales")
        self._folder = folder
        self._parent = folder.parent

    # ---------------------------------------------------------------------- the Target protocol
    def describe(self) -> str:
        """One line for --dry-run and messages: ``parquet out/sales``."""
        return f"parquet {self.path}"

    def check(self, mode: LoadMode, keys: list[str]) -> None:
        """Raise ConfigError unless ``mode`` is append or truncate, or the path is a file."""
        check_mode(mode, self.describe())
        if self._folder.exists() and not self._folder.is_dir():
            raise ConfigError(f"{self.describe()}: is a file; a parquet target is a folder (fix the path)")

    def last_watermark(self, pipeline: str, column: str) -> Watermark | None:
        """The watermark of the newest successful run of ``pipeline`` on ``column``; None if none."""
        return newest_watermark(self.history(), pipeline, column)

    def load(self, data: pa.Table, mode: LoadMode, keys: list[str], run: RunRecord) -> RunRecord:
        """Write ``data`` by ``mode`` and record ``run`` with it, committed by one rename.

        Fills in ``run.target_table`` (this folder), ``rows_written``, ``extra`` (``inserted``;
        ``deleted`` for truncate) and ``ended``; returns ``run``. On error nothing is published
        and a FlowError is raised.
        """
        self.check(mode, keys)
        _check_columns(data, self.describe())
        try:
            with self._locked():
                self._recover()
                if mode == "append":
                    done = self._append(data, run)
                else:
                    done = self._truncate(data, run)
        except FlowError:
            raise
        except OSError as exc:
            raise LoadError(
                f"{self.describe()}: {mode} failed: {exc.strerror or exc} ({exc.filename}); nothing was "
                "written (fix the path, permissions or free space and run again)"
            ) from exc
        return adopt(run, done)

    def record_failure(self, run: RunRecord) -> None:
        """Append ``run`` as failed to the history (creating the folder if needed); never raises."""
        failed = failed_record(run, str(self.path))
        try:
            with self._locked():
                self._recover()
                meta = self._folder / META_DIR
                meta.mkdir(parents=True, exist_ok=True)
                _write_history(meta, [*_read_rows(meta / HISTORY_FILE), _history_row(failed)])
        except Exception as exc:  # best effort: the run's own error is the one the user must see
            _log.warning("%s: could not record failed run %s: %s", self.describe(), run.run_id, exc)

    # ---------------------------------------------------------------------- history
    def history(self) -> list[dict[str, Any]]:
        """The committed runs, oldest first, as dicts of the ``run_history`` columns (read-only)."""
        folder = self._folder if self._folder.is_dir() else self._retired()
        if folder is None:
            return []
        meta = folder / META_DIR
        pending = []
        for file in sorted(meta.glob(PENDING_PREFIX + "*")):  # before run_history: see _fold_pending
            if (folder / _part_name(file.name.removeprefix(PENDING_PREFIX))).exists():
                pending += _read_rows(file)
        rows = _read_rows(meta / HISTORY_FILE)
        known = {r["run_id"] for r in rows}
        rows += [r for r in pending if r["run_id"] not in known]
        return sorted(rows, key=lambda r: r["started"])

    # ---------------------------------------------------------------------- modes
    def _append(self, data: pa.Table, run: RunRecord) -> RunRecord:
        done = _succeeded(run, self.path, data.num_rows, {"inserted": data.num_rows})
        meta = self._folder / META_DIR
        meta.mkdir(parents=True, exist_ok=True)
        if data.num_rows == 0:
            _write_history(meta, [*_read_rows(meta / HISTORY_FILE), _history_row(done)])
            return done
        self._check_same_columns(data)
        part = self._folder / _part_name(run.run_id)
        pending = meta / (PENDING_PREFIX + run.run_id)
        staged = _temporary(part)
        try:
            _write_parquet(pa.Table.from_pylist([_history_row(done)], HISTORY_SCHEMA), pending)
            _write_file(data, staged)
            os.replace(staged, part)  # the commit point
        except BaseException:
            staged.unlink(missing_ok=True)
            pending.unlink(missing_ok=True)
            raise
        _after_commit(_fsync_dir, self._folder)
        _after_commit(self._fold_pending)  # until folded, the history read takes the pending row
        return done

    def _truncate(self, data: pa.Table, run: RunRecord) -> RunRecord:
        deleted = self._row_count()
        done = _succeeded(run, self.path, data.num_rows, {"inserted": data.num_rows, "deleted": deleted})
        old_rows = _read_rows(self._folder / META_DIR / HISTORY_FILE)
        new = self._sibling("new", run.run_id)
        try:
            (new / META_DIR).mkdir(parents=True)
            _write_file(data, new / _part_name(run.run_id))
            _write_history(new / META_DIR, [*old_rows, _history_row(done)])
            _fsync_dir(new)
            retired = self._publish(new, run.run_id)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)  # _publish raises only before its commit
            raise
        _after_commit(_fsync_dir, self._parent)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        return done

    def _publish(self, new: Path, run_id: str, *, exchange: bool = True) -> Path | None:
        """Make ``new`` the folder in one step (the truncate's commit point).

        Returns where the old contents now are (None on a first load). Raises only before the
        commit, leaving the folder as it was. ``exchange=False`` takes the two-rename fallback.
        """
        if not self._folder.exists():
            os.rename(new, self._folder)
            return None
        if exchange and _exchange(new, self._folder):
            return new  # ``new`` now holds the old contents
        old = self._sibling("old", run_id)
        os.rename(self._folder, old)
        try:
            os.rename(new, self._folder)
        except BaseException:
            os.rename(old, self._folder)
            raise
        return old

    # ---------------------------------------------------------------------- recovery
    def _recover(self) -> None:
        """Apply the recovery rule of the module docstring (the caller holds the lock)."""
        retired = self._retired()
        if not self._folder.exists() and retired is not None:
            _log.warning("%s: restoring %s left by an interrupted truncate", self.describe(), retired.name)
            os.rename(retired, self._folder)
            _fsync_dir(self._parent)
        for kind in ("new", "old"):
            for leftover in self._parent.glob(f".{self._folder.name}.{kind}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        if self._folder.is_dir():
            for temporary in self._folder.glob(".*.tmp"):
                temporary.unlink(missing_ok=True)
            self._fold_pending()

    def _fold_pending(self) -> None:
        """Fold committed pending rows into run_history; drop those whose run never committed.

        run_history is rewritten before the pending files are removed, so a concurrent history
        read that lists pending files first never misses a row.
        """
        meta = self._folder / META_DIR
        committed: list[Path] = []
        abandoned: list[Path] = []
        for file in sorted(meta.glob(PENDING_PREFIX + "*")):
            part = self._folder / _part_name(file.name.removeprefix(PENDING_PREFIX))
            (committed if part.exists() else abandoned).append(file)
        for file in abandoned:
            file.unlink(missing_ok=True)
        if not committed:
            return
        rows = _read_rows(meta / HISTORY_FILE)
        known = {r["run_id"] for r in rows}
        for file in committed:
            rows += [r for r in _read_rows(file) if r["run_id"] not in known]
        _write_history(meta, rows)
        for file in committed:
            file.unlink(missing_ok=True)

    # ---------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``.<name>.lock`` beside the folder: one writer at a time (others wait)."""
        self._parent.mkdir(parents=True, exist_ok=True)
        with open(self._parent / f".{self._folder.name}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sibling(self, kind: str, run_id: str) -> Path:
        return self._parent / f".{self._folder.name}.{kind}-{run_id}"

    def _retired(self) -> Path | None:
        """The ``.old-*`` sibling a two-rename swap leaves when it dies between its renames."""
        found = sorted(self._parent.glob(f".{self._folder.name}.old-*"))
        return found[0] if found else None

    def _parts(self) -> list[Path]:
        return sorted(self._folder.glob(PART_PREFIX + "*.parquet")) if self._folder.is_dir() else []

    def _row_count(self) -> int:
        return sum(pq.read_metadata(part).num_rows for part in self._parts())

    def _check_same_columns(self, data: pa.Table) -> None:
        """An append must have the columns (names and types) of the files already there."""
        parts = self._parts()
        if parts:
            check_same_columns(data.schema, pq.read_schema(parts[-1]), self.describe())


# -------------------------------------------------------------------------- module helpers
def check_mode(mode: LoadMode, where: str) -> None:
    """Raise ConfigError unless ``mode`` is one a Parquet target loads by (append or truncate)."""
    if mode not in MODES:
        raise ConfigError(
            f"{where}: parquet targets support append and truncate, not {mode}; "
            "use duckdb/sqlite/postgres for merge/scd2"
        )


def check_same_columns(mine: pa.Schema, theirs: pa.Schema, where: str) -> None:
    """Raise ConfigError unless an append's columns (names and types) are those of the files there."""
    got = [(f.name, str(f.type)) for f in mine]
    want = [(f.name, str(f.type)) for f in theirs]
    if got != want:
        shown = ", ".join(f"{n} {t}" for n, t in got)
        there = ", ".join(f"{n} {t}" for n, t in want)
        raise ConfigError(
            f"{where}: append: the result's columns ({shown}) differ from the folder's "
            f"({there}): make the SQL produce the same columns and types, or use mode = truncate"
        )


def _check_columns(data: pa.Table, where: str) -> None:
    names = data.column_names
    if not names:
        raise ConfigError(f"{where}: the result has no columns: the SQL must select at least one")
    if "" in names:
        raise ConfigError(f"{where}: the result has a column without a name: name it in the SQL (AS name)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: the result has columns named twice: {', '.join(repeated)} (rename them)")


def _after_commit(step: Callable[..., object], *args: object) -> None:
    """Run a step after a commit: the run is committed whatever happens, so it must not raise."""
    try:
        step(*args)
    except OSError as exc:
        _log.warning("after a committed load: %s failed: %s", getattr(step, "__name__", step), exc)


def _succeeded(run: RunRecord, path: Path | str, rows: int, extra: dict[str, int]) -> RunRecord:
    return dataclasses.replace(
        run,
        target_table=str(path),
        ended=datetime.now(UTC),
        rows_written=rows,
        status="success",
        error=None,
        extra=extra,
    )


def _history_row(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "target_table": run.target_table,
        "mode": run.mode,
        "started": run.started,
        "ended": run.ended,
        "rows_read": run.rows_read,
        "rows_written": run.rows_written,
        "status": run.status,
        "error": run.error,
        "watermark_column": run.watermark_column,
        "watermark": run.watermark,
        "watermark_type": run.watermark_type,
        "extra": json.dumps(run.extra, sort_keys=True),
    }


def _part_name(run_id: str) -> str:
    return f"{PART_PREFIX}{run_id}.parquet"


def _temporary(final: Path) -> Path:
    """A hidden name beside ``final`` that no reader picks up (a ``.`` prefix, no .parquet suffix)."""
    return final.with_name(f".{final.name}.tmp")


def _read_rows(file: Path) -> list[dict[str, Any]]:
    """The rows of a history file; none when it does not exist."""
    try:
        rows: list[dict[str, Any]] = pq.read_table(file, schema=HISTORY_SCHEMA).to_pylist()
    except FileNotFoundError:
        return []
    return rows


def _write_history(meta: Path, rows: list[dict[str, Any]]) -> None:
    _write_parquet(pa.Table.from_pylist(rows, HISTORY_SCHEMA), meta / HISTORY_FILE)


def _write_parquet(table: pa.Table, final: Path) -> None:
    """Write ``table`` to ``final`` through a temporary name and a rename: never half a file."""
    staged = _temporary(final)
    try:
        _write_file(table, staged)
        os.replace(staged, final)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _write_file(table: pa.Table, file: Path) -> None:
    """Write a Parquet file and flush it to disk."""
    pq.write_table(table, file)
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the renames inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
