"""A load into a SQL target (DuckDB, SQLite, PostgreSQL), written once.

A load opens one connection and runs one transaction: create the history table and the target
table when missing (or check the target's columns), stage the rows in a temporary table (or, for
DuckDB, the Arrow table itself), apply the mode with set-based SQL, insert the ``run_history`` row,
commit. Any error rolls everything back and is raised as one line.

A dialect supplies a :class:`~ematix_flow.pipelines.targets.session.Session` (its connection, the way
it stages rows and lists a table's columns) and its type names; the checks, the transaction and the
history live here, the SQL of each mode in :mod:`~ematix_flow.pipelines.targets.modes`, the checks of
the result and the scd2 row hash in :mod:`~ematix_flow.pipelines.targets.rows`: the same for every
database.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import ClassVar, TypeVar, get_args

import pyarrow as pa

from ematix_flow.errors import ConfigError, FlowError, LoadError, first_line
from ematix_flow.pipelines.targets import modes
from ematix_flow.pipelines.targets.base import (
    HISTORY_SCHEMA,
    HISTORY_TABLE,
    SCD2_COLUMNS,
    LoadMode,
    RunRecord,
    Watermark,
    adopt,
    failed_record,
)
from ematix_flow.pipelines.targets.rows import (
    check_keys,
    column_types,
    prepare,
    row_hashes,
)
from ematix_flow.pipelines.targets.session import Session, TableName, quote, utc_text

_log = logging.getLogger(__name__)

KEYED_MODES = ("merge", "scd2")
#: The history columns, with a portable type: "text", "bigint" or "timestamptz".
HISTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "text"),
    ("pipeline", "text"),
    ("target_table", "text"),
    ("mode", "text"),
    ("started", "timestamptz"),
    ("ended", "timestamptz"),
    ("rows_read", "bigint"),
    ("rows_written", "bigint"),
    ("status", "text"),
    ("error", "text"),
    ("watermark_column", "text"),
    ("watermark", "text"),
    ("watermark_type", "text"),
    ("extra", "text"),
)
_T = TypeVar("_T")


def fit_columns(data: pa.Table, existing: Mapping[str, pa.DataType], where: str) -> pa.Table:
    """``data`` with each column cast to the existing table's type of it, refusing any lossy cast.

    A database casts silently on INSERT (DuckDB rounds 1.6 into a BIGINT column to 2): a result whose
    types drifted from the table's must fail instead.
    """
    columns, changed = [], False
    for field_ in data.schema:
        column = data.column(field_.name)
        target = existing.get(field_.name)
        if target is not None and target != field_.type:
            try:
                column = column.cast(target, safe=True)
                changed = True
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LoadError(
                    f"{where}: column {field_.name!r}: the result's {field_.type} values do not fit the "
                    f"table's {target} column ({first_line(exc)}): cast them in the SQL, or load into a "
                    "new table"
                ) from exc
        columns.append(column)
    return pa.table(columns, names=data.column_names) if changed else data


# ------------------------------------------------------------------------------ the target
class SQLTarget(ABC):
    """What DuckDB, SQLite and PostgreSQL targets share: checks, the SQL of every mode, history.

    Subclasses name their ``kind``, their ``type_names`` (the categories of :func:`category`, plus
    "text", "bigint", "boolean" and "timestamptz" for the history and scd2 columns), and open a
    :class:`Session`.
    """

    kind: ClassVar[str]
    type_names: ClassVar[Mapping[str, str]]
    #: Where run history lives (SQLite overrides: it has no schemas).
    history: ClassVar[TableName] = TableName(HISTORY_SCHEMA, HISTORY_TABLE)

    def __init__(self, table: str, *, schemas: bool = True) -> None:
        self.table = TableName.parse(table, kind=self.kind, schemas=schemas)

    @abstractmethod
    def describe(self) -> str:
        """One line naming the database and the table."""

    @abstractmethod
    def _open(self, *, create: bool) -> Session | None:
        """A new session; None when ``create`` is False and the database does not exist."""

    def _lock(self, session: Session) -> None:
        """Keep other writers off the table until commit (truncate, merge, scd2 read what they change).

        DuckDB allows one writing process and SQLite's BEGIN IMMEDIATE one writer: nothing to do.
        """
        return None

    def _timestamp_literal(self, moment: datetime) -> str:
        """A SQL literal of a moment, typed as the ``timestamptz`` type."""
        return f"TIMESTAMPTZ '{utc_text(moment)}'"

    def _distinct(self, left: str, right: str) -> str:
        """A condition true when two values differ, NULL counting as a value."""
        return f"{left} IS DISTINCT FROM {right}"

    # -------------------------------------------------------------------------- Target
    def check(self, mode: LoadMode, keys: list[str]) -> None:
        """Raise ConfigError when ``mode`` is unknown, or merge/scd2 come without keys."""
        where = self.describe()
        if mode not in get_args(LoadMode):
            modes = ", ".join(get_args(LoadMode))
            raise ConfigError(f"{where}: mode {mode!r} is not one of {modes}")
        if mode in KEYED_MODES and not keys:
            raise ConfigError(
                f"{where}: mode {mode!r} needs keys = [...] (the columns that identify a row, "
                'e.g. keys = ["id"])'
            )
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ConfigError(f"{where}: keys name {', '.join(repeated)} twice: list each key once")

    def last_watermark(self, pipeline: str, column: str) -> Watermark | None:
        """The watermark of the newest successful run of ``pipeline`` into this table on ``column``.

        None when there is none, or no history table (or database file) yet: nothing is created.
        Runs that recorded no watermark are skipped.
        """
        session: Session | None = None
        try:
            session = self._open(create=False)
            if session is None or not session.columns(self.history):
                return None
            p = session.param
            rows = session.fetch(
                f"SELECT watermark, watermark_type FROM {self.history.sql()} WHERE pipeline = {p} "
                f"AND target_table = {p} AND watermark_column = {p} AND status = 'success' "
                "AND watermark IS NOT NULL ORDER BY started DESC, ended DESC LIMIT 1",
                [pipeline, str(self.table), column],
            )
        except Exception as exc:
            raise LoadError(
                f"{self.describe()}: cannot read run history: {first_line(exc)} (check the database)"
            ) from exc
        finally:
            if session is not None:
                _close_quietly(session)
        if not rows:
            return None
        value, arrow_type = rows[0]
        return Watermark(column=column, value=str(value), arrow_type=str(arrow_type or "string"))

    def load(self, data: pa.Table, mode: LoadMode, keys: list[str], run: RunRecord) -> RunRecord:
        """Write ``data`` with ``mode`` and record ``run`` in one transaction (see module docstring).

        ``run.extra`` gets ``inserted`` (append, truncate), ``deleted`` (truncate), ``inserted``,
        ``updated`` and ``unchanged`` (merge: rows whose values already matched are not rewritten),
        or ``inserted``, ``closed`` and ``unchanged`` (scd2: ``inserted`` counts the first versions
        of new keys and the new versions of changed keys, ``closed`` the versions they replace).
        Keys absent from ``data`` are left as they are in merge and scd2 (no deletes). Truncate
        deletes every row and inserts the new ones in the same transaction: readers see the old
        rows until the commit and the new ones after, never an empty table.
        ``run.target_table`` is set to this target's table, which also scopes :meth:`last_watermark`.
        """
        self.check(mode, keys)
        where = self.describe()
        rows = prepare(data, where)
        if mode in KEYED_MODES:
            check_keys(rows, mode, keys, where)
        types = column_types(rows.schema, self.type_names, where)
        staged, staged_types = rows, types
        if mode == "scd2":
            staged = rows.append_column("row_hash", row_hashes(rows, keys))
            staged_types = [*types, self.type_names["text"]]

        def write(session: Session) -> RunRecord:
            nonlocal staged, staged_types
            self._ensure_history(session)
            self._ensure_table(session, rows.column_names, types, mode)
            fitted = fit_columns(staged, session.arrow_types(self.table), where)
            if fitted is not staged:  # values cast, losslessly, to the existing table's types
                staged, staged_types = fitted, column_types(fitted.schema, self.type_names, where)
            session.stage(staged, staged_types)
            counts = self._apply(session, mode, keys, rows, run.started)
            done = dataclasses.replace(
                run,
                target_table=str(self.table),
                ended=datetime.now(UTC),
                rows_written=counts["inserted"] + counts.get("updated", 0) + counts.get("closed", 0),
                status="success",
                error=None,
                extra=counts,
            )
            self._insert_history(session, done)
            return done

        done = self._transaction(write, f"{mode} load")
        return adopt(run, done)

    def record_failure(self, run: RunRecord) -> None:
        """Append ``run`` as failed to the history, in its own transaction; log, never raise, on error."""
        failed = failed_record(run, str(self.table))

        def write(session: Session) -> None:
            self._ensure_history(session)
            self._insert_history(session, failed)

        try:
            self._transaction(write, "recording a failed run")
        except Exception as exc:  # best effort: the run's own error is what the user must see
            _log.warning(
                "%s: could not record failed run %s: %s", self.describe(), run.run_id, first_line(exc)
            )

    # -------------------------------------------------------------------------- steps
    def _transaction(self, work: Callable[[Session], _T], what: str) -> _T:
        """Run ``work`` in one transaction of a new session; roll back and raise a FlowError on error."""
        session: Session | None = None
        try:
            session = self._open(create=True)
            assert session is not None  # create=True always opens
            session.begin()
            result = work(session)
            session.commit()
            return result
        except FlowError:
            _rollback_quietly(session)
            raise
        except Exception as exc:
            _rollback_quietly(session)
            raise LoadError(
                f"{self.describe()}: {what} failed: {first_line(exc)}; nothing was written "
                "(fix the result or the table and run again)"
            ) from exc
        finally:
            if session is not None:
                _close_quietly(session)

    def _ensure_history(self, session: Session) -> None:
        """Create the history table (and schema) when missing; an existing one needs no privileges."""
        if session.columns(self.history):
            return
        if self.history.schema:
            _ensure_schema(session, self.history.schema)
        columns = [f"{quote(name)} {self.type_names[kind]}" for name, kind in HISTORY_COLUMNS]
        columns[0] += " PRIMARY KEY"
        session.execute(f"CREATE TABLE IF NOT EXISTS {self.history.sql()} ({', '.join(columns)})")

    def _ensure_table(self, session: Session, names: list[str], types: list[str], mode: LoadMode) -> None:
        """Create the target table from the result's columns, or check an existing one has exactly them."""
        wanted = [*names, *SCD2_COLUMNS] if mode == "scd2" else list(names)
        existing = session.columns(self.table)
        if existing:
            lacking = [name for name in wanted if name not in existing]
            unknown = [name for name in existing if name not in wanted]
            if lacking or unknown:
                raise ConfigError(
                    f"{self.describe()}: the table's columns do not match the result: "
                    f"the table lacks [{', '.join(lacking)}] and has extra [{', '.join(unknown)}]: "
                    "make the SQL produce the table's columns, or load into a new table"
                )
            if mode != "append":
                self._lock(session)
            return
        if self.table.schema:
            _ensure_schema(session, self.table.schema)
        columns = [f"{quote(name)} {sql_type}" for name, sql_type in zip(names, types, strict=True)]
        if mode == "scd2":
            t = self.type_names
            columns += [
                f"{quote('valid_from')} {t['timestamptz']} NOT NULL",
                f"{quote('valid_to')} {t['timestamptz']}",
                f"{quote('is_current')} {t['boolean']} NOT NULL",
                f"{quote('row_hash')} {t['text']} NOT NULL",
            ]
        session.execute(f"CREATE TABLE {self.table.sql()} ({', '.join(columns)})")

    def _apply(
        self, session: Session, mode: LoadMode, keys: list[str], data: pa.Table, started: datetime
    ) -> dict[str, int]:
        """Run ``mode``'s SQL (:mod:`~ematix_flow.pipelines.targets.modes`) from the stage into the table."""
        names, total = data.column_names, data.num_rows
        if mode == "merge":
            return modes.merge(session, self.table, keys, names, total, distinct=self._distinct)
        if mode == "scd2":
            now, timestamptz = self._timestamp_literal(started), self.type_names["timestamptz"]
            return modes.scd2(session, self.table, keys, names, total, now=now, timestamptz=timestamptz)
        return modes.insert(session, self.table, names, truncate=mode == "truncate")

    def _insert_history(self, session: Session, run: RunRecord) -> None:
        values: list[object] = [
            run.run_id,
            run.pipeline,
            run.target_table,
            run.mode,
            run.started,
            run.ended,
            run.rows_read,
            run.rows_written,
            run.status,
            run.error,
            run.watermark_column,
            run.watermark,
            run.watermark_type,
            json.dumps(run.extra, sort_keys=True),
        ]
        names = ", ".join(quote(name) for name, _ in HISTORY_COLUMNS)
        params = ", ".join([session.param] * len(values))
        session.execute(f"INSERT INTO {self.history.sql()} ({names}) VALUES ({params})", values)


def _ensure_schema(session: Session, schema: str) -> None:
    """Create ``schema`` unless it exists (an existing one needs no CREATE privilege)."""
    found = session.fetch(
        "SELECT 1 FROM information_schema.schemata WHERE catalog_name = current_database() "
        f"AND schema_name = {session.param}",
        [schema],
    )
    if not found:
        session.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")


def _rollback_quietly(session: Session | None) -> None:
    if session is None:
        return
    try:
        session.rollback()
    except Exception as exc:  # the error that made us roll back is the one to raise
        _log.debug("rollback failed: %s", first_line(exc))


def _close_quietly(session: Session) -> None:
    try:
        session.close()
    except Exception as exc:  # closing discards an uncommitted transaction either way
        _log.debug("close failed: %s", first_line(exc))
