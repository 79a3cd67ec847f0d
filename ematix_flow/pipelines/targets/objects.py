"""Parquet targets in an object store (``path = "s3://lake/sales/"``): append or truncate, no rename.

An object store has no rename and no lock, but creating an object is atomic. A target
``s3://lake/sales/`` is laid out as::

    part-<run_id>.parquet               the rows of one run
    _ematix_flow/runs/<run_id>          a run's history row (Parquet, no .parquet suffix: never read as data)
    _ematix_flow/pending-<run_id>       a run's history row until its data is committed and folded

**Commit point**: a run with rows first writes its ``pending`` row, then its part file: the part file's
creation is the commit. Then it writes its ``runs/`` row and removes the pending one. The history read
(hence the watermark) is every ``runs/`` row plus each pending row whose part file exists: a run's
watermark is visible exactly when its rows are. *truncate* commits the same way, then deletes the
parts it replaces (listed in its pending row): readers may see old and new rows together until those
deletes finish (there is no atomic swap on an object store; a local folder target has one). Before
each load, pending rows are settled: a committed run's are folded (a truncate's leftover parts
deleted), the others removed. One run at a time per target: there is no lock.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.stores import filesystem, storage_failure
from ematix_flow.errors import FlowError, LoadError, first_line
from ematix_flow.pipelines.targets.base import (
    LoadMode,
    RunRecord,
    Watermark,
    adopt,
    failed_record,
    newest_watermark,
)
from ematix_flow.pipelines.targets.parquet import (
    HISTORY_SCHEMA,
    META_DIR,
    PART_PREFIX,
    PENDING_PREFIX,
    _check_columns,
    _history_row,
    _part_name,
    _succeeded,
    check_mode,
    check_same_columns,
)
from ematix_flow.urls import folder_url, parse_url

_log = logging.getLogger(__name__)
_RUNS = "runs"


class ObjectParquetTarget:
    """A folder of Parquet files under an object-store URL (see the module docstring)."""

    def __init__(self, url: str, storage: StorageConfig) -> None:
        """Target the folder URL ``url``; buckets resolve with ``storage`` (created by the first load)."""
        self.url = folder_url(url)
        self._fs, root = filesystem(parse_url(self.url), storage)
        self._root = root.rstrip("/")

    # ---------------------------------------------------------------------- the Target protocol
    def describe(self) -> str:
        """One line for --dry-run and messages: ``parquet s3://lake/sales/``."""
        return f"parquet {self.url}"

    def check(self, mode: LoadMode, keys: list[str]) -> None:
        """Raise ConfigError unless ``mode`` is append or truncate."""
        check_mode(mode, self.describe())

    def last_watermark(self, pipeline: str, column: str) -> Watermark | None:
        """The watermark of the newest successful run of ``pipeline`` on ``column``; None if none."""
        return newest_watermark(self.history(), pipeline, column)

    def load(self, data: pa.Table, mode: LoadMode, keys: list[str], run: RunRecord) -> RunRecord:
        """Write ``data`` by ``mode`` and record ``run`` with it (the part file's creation commits it)."""
        self.check(mode, keys)
        _check_columns(data, self.describe())
        try:
            self._settle()
            parts = self._parts()
            if mode == "append" and parts and data.num_rows:
                have = pq.read_schema(parts[-1], filesystem=self._fs)
                check_same_columns(data.schema, have, self.describe())
            replaced = parts if mode == "truncate" else []
            extra = {"inserted": data.num_rows}
            if mode == "truncate":
                extra["deleted"] = sum(pq.read_metadata(p, filesystem=self._fs).num_rows for p in replaced)
            done = _succeeded(run, self.url, data.num_rows, extra)
            row = _history_row(done)
            if mode == "append" and data.num_rows == 0:  # no data to be consistent with: the row alone
                self._put_rows([row], self._meta(f"{_RUNS}/{run.run_id}"))
                return adopt(run, done)
            pending = self._meta(PENDING_PREFIX + run.run_id)
            self._put_rows([{**row, "extra": json.dumps({**extra, "replaces": replaced})}], pending)
            try:
                pq.write_table(data, f"{self._root}/{_part_name(run.run_id)}", filesystem=self._fs)
            except BaseException:
                self._delete([pending])
                raise
            self._finish(run.run_id, row, replaced)  # committed: what follows only tidies
        except FlowError:
            raise
        except OSError as exc:
            raise storage_failure(str(exc), [parse_url(self.url).store_url]) or LoadError(
                f"{self.describe()}: {mode} failed: {first_line(exc, 200)}; nothing was committed"
            ) from exc
        return adopt(run, done)

    def record_failure(self, run: RunRecord) -> None:
        """Record ``run`` as failed in the history; never raises."""
        failed = failed_record(run, self.url)
        try:
            self._put_rows([_history_row(failed)], self._meta(f"{_RUNS}/{run.run_id}"))
        except Exception as exc:  # best effort: the run's own error is the one the user must see
            _log.warning("%s: could not record failed run %s: %s", self.describe(), run.run_id, exc)

    # ---------------------------------------------------------------------- history
    def history(self) -> list[dict[str, Any]]:
        """The committed runs, oldest first, as dicts of the ``run_history`` columns (read-only)."""
        rows = [r for path in self._list(self._meta(_RUNS)) for r in self._read_rows(path)]
        known = {r["run_id"] for r in rows}
        parts = set(self._parts())
        for path, run_id in self._pending():
            if f"{self._root}/{_part_name(run_id)}" in parts and run_id not in known:
                rows += self._read_rows(path)
        return sorted(rows, key=lambda r: r["started"])

    # ---------------------------------------------------------------------- steps
    def _finish(self, run_id: str, row: dict[str, Any], replaced: list[str]) -> None:
        """After the commit: delete what a truncate replaced, write the runs/ row, drop the pending one."""
        try:
            self._delete(replaced)
            self._put_rows([row], self._meta(f"{_RUNS}/{run_id}"))
            self._delete([self._meta(PENDING_PREFIX + run_id)])
        except Exception as exc:  # the run is committed: the next load settles what is left
            _log.warning(
                "%s: run %s committed; tidying left for the next run: %s", self.describe(), run_id, exc
            )

    def _settle(self) -> None:
        """Fold the pending rows of committed runs (finishing their truncates); drop the others."""
        parts = set(self._parts())
        for path, run_id in self._pending():
            if f"{self._root}/{_part_name(run_id)}" not in parts:
                self._delete([path])  # its run died before the commit
                continue
            (row,) = self._read_rows(path)
            replaced = json.loads(row["extra"] or "{}").get("replaces", [])
            extra = {k: v for k, v in json.loads(row["extra"] or "{}").items() if k != "replaces"}
            self._finish(run_id, {**row, "extra": json.dumps(extra)}, [p for p in replaced if p in parts])

    def _parts(self) -> list[str]:
        return [p for p in self._list(self._root) if p.rsplit("/", 1)[-1].startswith(PART_PREFIX)]

    def _pending(self) -> list[tuple[str, str]]:
        out = []
        for path in self._list(self._meta("")):
            name = path.rsplit("/", 1)[-1]
            if name.startswith(PENDING_PREFIX):
                out.append((path, name.removeprefix(PENDING_PREFIX)))
        return out

    # ---------------------------------------------------------------------- I/O
    def _meta(self, name: str) -> str:
        return f"{self._root}/{META_DIR}/{name}".rstrip("/")

    def _list(self, prefix: str) -> list[str]:
        selector = pafs.FileSelector(prefix, recursive=False, allow_not_found=True)
        infos = self._fs.get_file_info(selector)
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)

    def _read_rows(self, path: str) -> list[dict[str, Any]]:
        with self._fs.open_input_file(path) as f:
            rows: list[dict[str, Any]] = pq.read_table(f, schema=HISTORY_SCHEMA).to_pylist()
        return rows

    def _put_rows(self, rows: list[dict[str, Any]], path: str) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, HISTORY_SCHEMA), buffer)
        with self._fs.open_output_stream(path) as out:  # one PUT: the object appears whole
            out.write(buffer.getvalue())

    def _delete(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self._fs.delete_file(path)
            except FileNotFoundError:
                continue
