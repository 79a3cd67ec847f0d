"""What every target offers the runner: one transaction per run, its history, its watermark.

A run's rows, its ``run_history`` row and the advanced watermark are committed together (or, for
Parquet, published by one rename), so a failed or killed run leaves the target as it was and the
next run starts from the last committed watermark: no duplicates, no gaps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import pyarrow as pa

LoadMode = Literal["append", "truncate", "merge", "scd2"]
RunStatus = Literal["success", "failed"]

#: The columns SCD2 adds to the target (after the data columns, in this order).
SCD2_COLUMNS = ("valid_from", "valid_to", "is_current", "row_hash")
#: Where run history lives: this schema.table in DuckDB and PostgreSQL targets (SQLite has no
#: schemas: the table ``ematix_flow_run_history``), a side file for Parquet targets.
HISTORY_SCHEMA = "ematix_flow"
HISTORY_TABLE = "run_history"


@dataclass
class RunRecord:
    """One run of a pipeline, as ``run_history`` keeps it (one row per run)."""

    run_id: str  # uuid4 hex
    pipeline: str
    target_table: str  # the table (or Parquet path) loaded
    mode: LoadMode
    started: datetime  # UTC, timezone-aware
    ended: datetime | None = None
    rows_read: int = 0  # rows the transform produced (after the watermark filter)
    rows_written: int = 0  # rows inserted + updated (+ closed, for scd2)
    status: RunStatus = "success"
    error: str | None = None  # one line, for failed runs
    watermark_column: str | None = None
    watermark: str | None = None  # the high-water mark after this run, as text (see Watermark)
    watermark_type: str | None = None  # str() of the watermark column's Arrow type
    extra: dict[str, int] = field(default_factory=dict)  # e.g. {"inserted": 3, "updated": 2}


@dataclass(frozen=True)
class Watermark:
    """The last committed high-water mark of a pipeline's watermark column.

    ``value`` is ``str()`` of the column's maximum (ISO format for dates and timestamps) and
    ``arrow_type`` is ``str()`` of its Arrow type, so the runner can write a typed SQL literal.
    """

    column: str
    value: str
    arrow_type: str


class Target(Protocol):
    """A place a pipeline loads into. Implementations: duckdb, sqlite, postgres, parquet."""

    def describe(self) -> str:
        """One line for --dry-run and messages, e.g. ``duckdb warehouse.duckdb table analytics.x``."""

    def check(self, mode: LoadMode, keys: list[str]) -> None:
        """Raise ConfigError if this target cannot do ``mode`` (before anything runs or is written)."""

    def last_watermark(self, pipeline: str, column: str) -> Watermark | None:
        """The watermark of the newest successful run of ``pipeline`` on this target, None if none."""

    def load(self, data: pa.Table, mode: LoadMode, keys: list[str], run: RunRecord) -> RunRecord:
        """Write ``data`` with ``mode`` and record ``run`` (status success) in one transaction.

        Creates the table (and its schema) from ``data``'s schema when it does not exist. Fills in
        ``run.rows_written``, ``run.extra`` and ``run.ended``; returns ``run``. On any error nothing
        is changed and the error is raised (a FlowError with a one-line message).
        """

    def record_failure(self, run: RunRecord) -> None:
        """Append a failed run to ``run_history`` (its own transaction; best effort, never raises)."""


def newest_watermark(history: list[dict[str, Any]], pipeline: str, column: str) -> Watermark | None:
    """The watermark of the newest successful run of ``pipeline`` on ``column`` in a file target's history."""
    runs = [
        r
        for r in history
        if r["pipeline"] == pipeline
        and r["watermark_column"] == column
        and r["status"] == "success"
        and r["watermark"] is not None
    ]
    if not runs:
        return None
    newest = max(runs, key=lambda r: (r["started"], r["ended"] or r["started"]))
    return Watermark(column, str(newest["watermark"]), str(newest["watermark_type"] or "string"))


def adopt(run: RunRecord, done: RunRecord) -> RunRecord:
    """Copy what a committed load filled in (``done``) into the caller's ``run``; return ``run``."""
    for f in dataclasses.fields(run):
        setattr(run, f.name, getattr(done, f.name))
    return run


def failed_record(run: RunRecord, target_table: str) -> RunRecord:
    """``run`` as the failed row ``record_failure`` appends to the history."""
    return dataclasses.replace(
        run,
        target_table=target_table,
        status="failed",
        ended=run.ended or datetime.now(UTC),
        error=run.error or "failed (no message recorded)",
    )
