"""A Delta Lake table as a pipeline target (``deltalake``): append, truncate, merge and scd2.

Each run is one Delta commit: its rows and its run record go together. The run record (the
``run_history`` row, with the advanced watermark) rides in the commit's metadata, under the key
``ematix_flow.run`` of ``commitInfo``; the table's history is the run history. A run that fails
leaves no data: its record is committed alone, as an empty append (best effort).

- append: ``write_deltalake(mode="append")``.
- truncate: ``mode="overwrite"`` (the old files stay for time travel until VACUUM).
- merge: ``MERGE`` on the keys (deltalake's DataFusion-backed merge): rows whose values differ are
  updated, rows of new keys inserted.
- scd2: one ``MERGE``: current versions whose ``row_hash`` changed are closed, and a new version
  is inserted for them and for new keys (the changed rows enter the source twice, once with null
  merge keys, so they cannot match).

A writer that committed in between (another run, another tool) makes deltalake refuse the commit:
the run fails with a LoadError saying so, and nothing of it is written.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ematix_flow.engine.lake.delta import storage_options
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError, FlowError, LoadError, first_line
from ematix_flow.pipelines.targets.base import (
    SCD2_COLUMNS,
    LoadMode,
    RunRecord,
    Watermark,
    adopt,
    failed_record,
    newest_watermark,
)
from ematix_flow.pipelines.targets.parquet import _history_row
from ematix_flow.pipelines.targets.rows import check_keys, prepare, row_hashes
from ematix_flow.urls import is_url

log = logging.getLogger(__name__)

#: The commitInfo key that holds a run's record.
RUN_KEY = "ematix_flow.run"
_MERGE_KEY = "__flow_merge_key_"
_NOW = "__flow_now"


class DeltaTarget:
    """A Delta table at a folder or an object-store URL (created by the first load)."""

    def __init__(self, location: str, storage: StorageConfig | None = None) -> None:
        """Target the Delta table at ``location`` (a folder path or a URL such as ``s3://lake/t``)."""
        self.location = location.rstrip("/") if is_url(location) else str(Path(location).resolve())
        self._options = storage_options(self.location, storage or StorageConfig())

    # ---------------------------------------------------------------------- the Target protocol
    def describe(self) -> str:
        """One line for --dry-run and messages: ``delta s3://lake/orders``."""
        return f"delta {self.location}"

    def check(self, mode: LoadMode, keys: list[str]) -> None:
        """Raise ConfigError when merge or scd2 has no keys, or the path is a file."""
        if mode in ("merge", "scd2") and not keys:
            raise ConfigError(f"{self.describe()}: {mode} needs keys")
        if not is_url(self.location) and Path(self.location).is_file():
            raise ConfigError(f"{self.describe()}: is a file; a Delta table is a folder (fix the path)")

    def last_watermark(self, pipeline: str, column: str) -> Watermark | None:
        """The watermark of the newest successful run of ``pipeline`` on ``column``; None if none."""
        return newest_watermark(self.history(), pipeline, column)

    def history(self) -> list[dict[str, Any]]:
        """The runs recorded in the table's commits, oldest first (read-only)."""
        table = self._open()
        if table is None:
            return []
        rows = []
        for commit in table.history():
            text = commit.get(RUN_KEY)
            if not text:
                continue
            row = json.loads(text)
            if row["rows_written"] < 0:  # a merge: its counts are the commit's own metrics
                extra = _counts(commit.get("operationMetrics") or {}, int(row["rows_read"]))
                row["rows_written"] = extra["inserted"] + extra["updated"]
                row["extra"] = json.dumps(extra, sort_keys=True)
            rows.append(row)
        return sorted(rows, key=lambda r: r["started"])

    def load(self, data: pa.Table, mode: LoadMode, keys: list[str], run: RunRecord) -> RunRecord:
        """Write ``data`` by ``mode`` and record ``run`` in the same Delta commit.

        Fills in ``run.target_table``, ``rows_written``, ``extra`` and ``ended``; returns ``run``.
        """
        self.check(mode, keys)
        data = prepare(data, self.describe())
        if mode in ("merge", "scd2"):
            check_keys(data, mode, keys, self.describe())
        try:
            table = self._open()
            if mode == "append" or table is None:
                extra = self._write(data, "append" if mode != "truncate" else "overwrite", run, mode, keys)
            elif mode == "truncate":
                extra = self._write(data, "overwrite", run, mode, keys)
            else:
                before = table.version()  # (a merge moves ``table`` to the version it commits)
                merge = self._merge if mode == "merge" else self._scd2
                extra = merge(table, data, keys, run)
                if self._open().version() == before:  # nothing changed: MERGE made no commit
                    self._record_alone(self._done(run, extra))
        except FlowError:
            raise
        except Exception as exc:
            raise self._error(mode, exc) from exc
        return adopt(run, self._done(run, extra))

    def record_failure(self, run: RunRecord) -> None:
        """Commit ``run`` as failed (an empty append carrying the record); never raises."""
        try:
            self._record_alone(failed_record(run, self.location))
        except Exception as exc:  # best effort: the run's own error is the one the user must see
            log.warning("%s: could not record failed run %s: %s", self.describe(), run.run_id, exc)

    def _record_alone(self, record: RunRecord) -> None:
        """Commit ``record`` with no rows (an empty append); nothing when there is no table yet."""
        from deltalake import CommitProperties, write_deltalake

        table = self._open()
        if table is None:
            return
        write_deltalake(
            self.location,
            pa.schema(table.schema().to_arrow()).empty_table(),
            mode="append",
            storage_options=self._options,
            commit_properties=CommitProperties(custom_metadata={RUN_KEY: _record(record)}),
        )

    # ---------------------------------------------------------------------- modes
    def _write(
        self, data: pa.Table, how: str, run: RunRecord, mode: LoadMode, keys: list[str]
    ) -> dict[str, int]:
        from deltalake import write_deltalake

        if mode == "scd2":
            data = _versions(data, keys, run.started)
        extra = {"inserted": data.num_rows}
        commit = self._commit(run, extra)
        if how == "overwrite":
            write_deltalake(
                self.location,
                data,
                mode="overwrite",
                schema_mode="overwrite",
                storage_options=self._options,
                commit_properties=commit,
            )
        else:
            write_deltalake(
                self.location, data, mode="append", storage_options=self._options, commit_properties=commit
            )
        return extra

    def _merge(self, table: Any, data: pa.Table, keys: list[str], run: RunRecord) -> dict[str, int]:
        others = [c for c in data.column_names if c not in keys]
        match = " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in keys)
        changed = " OR ".join(f"(t.{_q(c)} IS DISTINCT FROM s.{_q(c)})" for c in others) or "false"
        extra: dict[str, int] = {}
        merger = table.merge(
            data,
            predicate=match,
            source_alias="s",
            target_alias="t",
            commit_properties=self._commit(run, extra, pending=True),
        )
        metrics = merger.when_matched_update_all(predicate=changed).when_not_matched_insert_all().execute()
        return _counts(metrics, data.num_rows)

    def _scd2(self, table: Any, data: pa.Table, keys: list[str], run: RunRecord) -> dict[str, int]:
        staged = _versions(data, keys, run.started)
        current = self._current(table, keys)
        changed = _changed(staged, current, keys)
        merge_keys = [f"{_MERGE_KEY}{i}" for i in range(len(keys))]
        matchable = staged
        for name, key in zip(merge_keys, keys, strict=True):
            matchable = matchable.append_column(name, staged.column(key))
        unmatchable = changed
        for name, key in zip(merge_keys, keys, strict=True):
            unmatchable = unmatchable.append_column(
                name, pa.nulls(changed.num_rows, staged.schema.field(key).type)
            )
        source = pa.concat_tables([matchable, unmatchable])
        source = source.append_column(
            _NOW, pa.array([run.started] * source.num_rows, pa.timestamp("us", "UTC"))
        )
        match = " AND ".join(f"t.{_q(k)} = s.{_q(m)}" for k, m in zip(keys, merge_keys, strict=True))
        columns = [c for c in staged.column_names if c not in SCD2_COLUMNS]
        inserts = {_q(c): f"s.{_q(c)}" for c in columns}
        inserts.update(
            {
                _q("valid_from"): f"s.{_NOW}",
                _q("valid_to"): "s.valid_to",
                _q("is_current"): "true",
                _q("row_hash"): "s.row_hash",
            }
        )
        metrics = (
            table.merge(
                source,
                predicate=f"t.is_current AND {match}",
                source_alias="s",
                target_alias="t",
                commit_properties=self._commit(run, {}, pending=True),
            )
            .when_matched_update(
                updates={"valid_to": f"s.{_NOW}", "is_current": "false"},
                predicate="t.row_hash <> s.row_hash",
            )
            .when_not_matched_insert(updates=inserts)
            .execute()
        )
        closed = int(metrics.get("num_target_rows_updated", 0))
        inserted = int(metrics.get("num_target_rows_inserted", 0))
        return {"inserted": inserted, "closed": closed, "unchanged": data.num_rows - inserted}

    # ---------------------------------------------------------------------- helpers
    def _open(self) -> Any:
        """The table's latest version, or None when there is no table yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.location, storage_options=self._options)
        except TableNotFoundError:
            return None

    def _current(self, table: Any, keys: list[str]) -> pa.Table:
        """The keys and row hashes of the current versions."""
        from deltalake import QueryBuilder

        cols = ", ".join(_q(c) for c in [*keys, "row_hash"])
        reader = QueryBuilder().register("t", table).execute(f"SELECT {cols} FROM t WHERE is_current")
        current = pa.RecordBatchReader.from_stream(reader).read_all()
        string_hash = pa.schema([*(current.schema.field(k) for k in keys), pa.field("row_hash", pa.string())])
        return current.cast(string_hash)

    def _commit(self, run: RunRecord, extra: dict[str, int], *, pending: bool = False) -> Any:
        """The commit's metadata: the run's record (for merges the counts are known only after)."""
        from deltalake import CommitProperties

        record = self._done(run, extra)
        if pending:
            record.rows_written = -1  # merges: the counts are in the commit's operationMetrics
        return CommitProperties(custom_metadata={RUN_KEY: _record(record)})

    def _done(self, run: RunRecord, extra: dict[str, int]) -> RunRecord:
        import dataclasses

        written = sum(v for k, v in extra.items() if k in ("inserted", "updated", "closed"))
        return dataclasses.replace(
            run,
            target_table=self.location,
            ended=datetime.now(UTC),
            rows_written=written,
            status="success",
            error=None,
            extra=dict(extra),
        )

    def _error(self, mode: str, exc: Exception) -> FlowError:
        name = type(exc).__name__
        text = first_line(str(exc), 300)
        if name == "CommitFailedError":
            return LoadError(
                f"{self.describe()}: {mode}: another writer committed to the table meanwhile ({text}); "
                "nothing of this run was written: run it again"
            )
        if name == "SchemaMismatchError" or "schema" in text.lower():
            return ConfigError(
                f"{self.describe()}: {mode}: the result's columns do not match the table's ({text}): "
                "make the SQL produce the table's columns and types, or use mode = truncate"
            )
        return LoadError(f"{self.describe()}: {mode} failed: {text}; nothing was written")


def _versions(data: pa.Table, keys: list[str], started: datetime) -> pa.Table:
    """``data`` with the scd2 columns of a new current version."""
    n = data.num_rows
    ts = pa.timestamp("us", "UTC")
    return (
        data.append_column("valid_from", pa.array([started] * n, ts))
        .append_column("valid_to", pa.nulls(n, ts))
        .append_column("is_current", pa.array([True] * n, pa.bool_()))
        .append_column("row_hash", row_hashes(data, keys))
    )


def _changed(staged: pa.Table, current: pa.Table, keys: list[str]) -> pa.Table:
    """The staged rows whose key has a current version with another row hash."""
    if current.num_rows == 0:
        return staged.slice(0, 0)
    now = current.rename_columns([*keys, "__flow_current_hash"])
    joined = staged.join(now, keys, join_type="inner")
    differs = pc.not_equal(joined.column("row_hash"), joined.column("__flow_current_hash"))
    return joined.filter(differs).select(staged.column_names)


def _counts(metrics: dict[str, Any], total: int) -> dict[str, int]:
    inserted = int(metrics.get("num_target_rows_inserted", 0))
    updated = int(metrics.get("num_target_rows_updated", 0))
    return {"inserted": inserted, "updated": updated, "unchanged": total - inserted - updated}


def _record(run: RunRecord) -> str:
    """``run`` as the JSON of its ``run_history`` row (the Parquet targets' columns)."""
    row = _history_row(run)
    row["started"] = run.started.isoformat()
    row["ended"] = run.ended.isoformat() if run.ended else None
    return json.dumps(row, sort_keys=True)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
