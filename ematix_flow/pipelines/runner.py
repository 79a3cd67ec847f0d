"""Run a pipeline: check it, read the last watermark, run the SQL, load the target in one commit.

The order is what makes a run safe to kill or retry:

1. everything that can be checked without data is checked first (config, dialect, target mode),
   so a mistake writes nothing;
2. the transform reads only rows above the target's last committed watermark;
3. the rows, the run's history row and the new watermark are committed in one transaction (one
   rename for Parquet): a run that dies before that commit leaves the target as it was, and the
   next run reads the same rows again, so there are no duplicates and no gaps;
4. a run that fails after it started is recorded as failed in the run history.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import datafusion
import pyarrow as pa
import pyarrow.compute as pc

from ematix_flow.coordinator_lib.progress import ProgressHook
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError, FlowError, QueryError, first_line
from ematix_flow.pipelines.config import Pipeline
from ematix_flow.pipelines.dialect import translate
from ematix_flow.pipelines.sources import describe_source, register_source
from ematix_flow.pipelines.targets import open_target
from ematix_flow.pipelines.targets.base import RunRecord, Target, Watermark
from ematix_flow.urls import is_url

log = logging.getLogger(__name__)

Echo = Callable[[str], None]
T = TypeVar("T")


@dataclass
class Prepared:
    """What a run will do, worked out before any data moves."""

    pipeline: Pipeline
    sql: str  # translated to DataFusion SQL, without the watermark filter
    target: Target
    watermark: Watermark | None

    @property
    def final_sql(self) -> str:
        """The SQL that runs: the transform, filtered above the last watermark when there is one."""
        if self.watermark is None:
            return self.sql
        column = _quote(self.watermark.column)
        return f"SELECT * FROM (\n{self.sql}\n) AS flow_transform WHERE {column} > {_literal(self.watermark)}"


def prepare(pipeline: Pipeline) -> Prepared:
    """Check the pipeline, translate its SQL, open its target and read its last watermark."""
    pipeline.check()
    sql = pipeline.sql_text()
    if not sql:
        raise ConfigError(f"{pipeline.origin}: [transform] the SQL is empty")
    try:
        sql = translate(sql, pipeline.transform.dialect)
    except QueryError as exc:
        raise QueryError(f"{pipeline.origin}: [transform] {exc}") from exc
    t = pipeline.target
    target = open_target(
        t.kind, path=t.path, table=t.table, dsn=t.dsn, base_dir=pipeline.base_dir, storage=pipeline.storage
    )
    target.check(t.mode, t.keys)
    column = pipeline.transform.watermark_column
    watermark = target.last_watermark(pipeline.name, column) if column else None
    return Prepared(pipeline, sql, target, watermark)


def validate(pipeline: Pipeline) -> list[str]:
    """Check without running: config, SQL translation, sources present, target able. Lines to print."""
    prepared = prepare(pipeline)
    for name, source in pipeline.sources.items():
        if source.path and not is_url(source.path):
            path = pipeline.resolve(source.path)
            if not path.exists():
                raise ConfigError(
                    f"{pipeline.origin}: [sources.{name}] path: {path} does not exist (fix the path, "
                    "relative to the pipeline file's folder)"
                )
    lines = [f"{pipeline.origin}: ok: pipeline {pipeline.name}"]
    lines += [f"  source {n}: {describe_source(s, pipeline.base_dir)}" for n, s in pipeline.sources.items()]
    lines.append(f"  transform: {_engine_text(pipeline)}")
    lines.append(f"  target: {prepared.target.describe()} mode {pipeline.target.mode}")
    return lines


def dry_run(pipeline: Pipeline) -> str:
    """The plan of a run, without writing anything: sources, SQL, engine plan, target, watermark."""
    prepared = prepare(pipeline)
    lines = [f"pipeline {pipeline.name} ({pipeline.origin})"]
    lines += [f"source {n}: {describe_source(s, pipeline.base_dir)}" for n, s in pipeline.sources.items()]
    lines.append(f"engine: {_engine_text(pipeline)}")
    if pipeline.transform.dialect != "datafusion":
        lines.append(f"dialect: {pipeline.transform.dialect}, translated to DataFusion SQL")
    wm = prepared.watermark
    column = pipeline.transform.watermark_column
    if column:
        after = f"rows with {column} > {wm.value}" if wm else "every row (no committed watermark yet)"
        lines.append(f"watermark: {column}: loads {after}")
    lines.append(f"target: {prepared.target.describe()}")
    keys = f" on keys {', '.join(pipeline.target.keys)}" if pipeline.target.keys else ""
    lines.append(f"load: {pipeline.target.mode}{keys}, one transaction with the run history")
    lines.append("sql:")
    lines += [f"  {line}" for line in prepared.final_sql.splitlines()]
    with _staging(pipeline) as staging, _engine(pipeline) as engine:
        _register_sources(engine, pipeline, staging)
        lines.append("plan:")
        lines += [f"  {line}" for line in _named(pipeline, engine.explain, prepared.final_sql).splitlines()]
    return "\n".join(lines)


def run(pipeline: Pipeline, echo: Echo | None = None, progress: ProgressHook | None = None) -> RunRecord:
    """Run the pipeline once; returns its history record (status success) or raises a FlowError.

    ``echo`` gets a line per step; ``progress`` the mesh's stage snapshots (engine "distributed").
    """
    say = echo or (lambda _line: None)
    prepared = prepare(pipeline)
    t = pipeline.target
    record = RunRecord(
        run_id=uuid.uuid4().hex,
        pipeline=pipeline.name,
        target_table=t.table or pipeline.location(t.path or ""),
        mode=t.mode,
        started=dt.datetime.now(dt.UTC),
        watermark_column=pipeline.transform.watermark_column,
    )
    if prepared.watermark is not None:
        record.watermark = prepared.watermark.value
        record.watermark_type = prepared.watermark.arrow_type
    t0 = time.perf_counter()
    try:
        with _staging(pipeline) as staging, _engine(pipeline, progress) as engine:
            say(f"{pipeline.name}: reading {len(pipeline.sources)} source(s); {_engine_text(pipeline)}")
            _register_sources(engine, pipeline, staging)
            data = normalize(_named(pipeline, engine.sql, prepared.final_sql))
            where = engine.where()
        record.rows_read = data.num_rows
        _advance_watermark(record, data, pipeline)
        seconds = time.perf_counter() - t0
        say(f"{pipeline.name}: {data.num_rows:,} rows in {seconds:.1f}s ({where}); loading {t.mode}")
        prepared.target.load(data, t.mode, t.keys, record)
    except BaseException as exc:
        record.status = "failed"
        record.ended = dt.datetime.now(dt.UTC)
        record.error = _one_line(exc)
        record.watermark = prepared.watermark.value if prepared.watermark else None
        prepared.target.record_failure(record)
        if isinstance(exc, Exception) and not isinstance(exc, FlowError):
            log.debug("run %s failed", record.run_id, exc_info=True)
            raise FlowError(
                f"{pipeline.origin}: the run failed: {_one_line(exc)} (nothing was committed; "
                "--log-level debug shows the traceback)"
            ) from exc
        raise
    return record


def _named(pipeline: Pipeline, call: Callable[[str], T], sql: str) -> T:
    """``call(sql)``, its SQL errors naming the pipeline's [transform]."""
    try:
        return call(sql)
    except QueryError as exc:
        raise QueryError(f"{pipeline.origin}: [transform] {exc}") from exc


# ---------------------------------------------------------------------------------- engines
class _InProcess:
    """engine = "datafusion": one SessionContext in this process."""

    def __init__(self, storage: StorageConfig) -> None:
        self.ctx = datafusion.SessionContext()
        self.sink: Any = self.ctx
        self.storage = storage  # URL sources get their bucket's store on ctx (sources.register_source)

    def sql(self, sql: str) -> pa.Table:
        try:
            return self.ctx.sql(sql).to_arrow_table()
        except Exception as exc:  # DataFusion raises plain exceptions: name it a SQL error
            raise QueryError(f"the SQL failed: {_one_line(exc)}") from exc

    def where(self) -> str:
        """Where the last query ran."""
        return "in this process"

    def explain(self, sql: str) -> str:
        try:
            return str(self.ctx.sql(sql).optimized_logical_plan().display_indent())
        except Exception as exc:
            raise QueryError(f"the SQL failed: {_one_line(exc)}") from exc


class _OnMesh:
    """engine = "distributed": a Mesh of --peers, or local peers started for this run."""

    def __init__(self, pipeline: Pipeline, progress: ProgressHook | None = None) -> None:
        from ematix_flow.coordinator_lib.mesh import Mesh
        from ematix_flow.transport.tls import TLSConfig

        t = pipeline.transform
        options: dict[str, Any] = {}
        if t.partitions is not None:
            options["partitions"] = t.partitions
        if t.local_below_bytes is not None:
            options["local_below_bytes"] = t.local_below_bytes
        options["storage"] = pipeline.storage
        if t.local is not None:
            self.mesh = Mesh.local(workers=t.local, insecure=t.insecure, **options)
        else:
            tls = None if t.insecure else TLSConfig.from_dir(pipeline.resolve(t.tls_dir or ""), t.tls_name)
            self.mesh = Mesh(t.peers, tls, insecure=t.insecure, **options)
        self.sink = self.mesh
        self.timeout = t.timeout
        self.progress = progress

    def sql(self, sql: str) -> pa.Table:
        return self.mesh.sql(sql, timeout=self.timeout, progress=self.progress)

    def where(self) -> str:
        """Where the last query ran: the peers its tasks used, or the submitter (adaptive gate)."""
        run = self.mesh.last_run
        if run is None or not run.distributed:
            return "in this process: the mesh's adaptive gate kept the small input here"
        peers = sorted(run.peers_used)
        return f"tasks on {len(peers)} peer{'' if len(peers) == 1 else 's'}: {', '.join(peers)}"

    def explain(self, sql: str) -> str:
        return self.mesh.explain(sql)

    def close(self) -> None:
        self.mesh.close()


@contextlib.contextmanager
def _engine(pipeline: Pipeline, progress: ProgressHook | None = None) -> Iterator[_InProcess | _OnMesh]:
    if pipeline.transform.engine == "datafusion":
        yield _InProcess(pipeline.storage)
        return
    mesh = _OnMesh(pipeline, progress)
    try:
        yield mesh
    finally:
        mesh.close()


@contextlib.contextmanager
def _staging(pipeline: Pipeline) -> Iterator[Path]:
    """Where database sources are staged as Parquet: ``staging_dir``, or a temporary dir removed after."""
    if pipeline.staging_dir:
        path = pipeline.resolve(pipeline.staging_dir) / f"run-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="flow-staging-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _register_sources(engine: _InProcess | _OnMesh, pipeline: Pipeline, staging: Path) -> None:
    for name, source in pipeline.sources.items():
        try:
            register_source(engine.sink, name, source, pipeline.base_dir, staging, pipeline.storage)
        except FlowError as exc:
            raise type(exc)(f"{pipeline.origin}: [sources.{name}] {exc}") from exc


def _engine_text(pipeline: Pipeline) -> str:
    t = pipeline.transform
    if t.engine == "datafusion":
        return "DataFusion in this process"
    if t.local is not None:
        return f"distributed on {t.local} local peers"
    return f"distributed on {len(t.peers)} peers ({', '.join(t.peers)})"


# ---------------------------------------------------------------------------------- data
def normalize(table: pa.Table) -> pa.Table:
    """View types (DataFusion's Utf8View, BinaryView) as their plain forms, which targets all take."""
    columns, changed = [], False
    for f in table.schema:
        kind = f.type
        if pa.types.is_string_view(kind) or pa.types.is_large_string(kind):
            kind = pa.string()
        elif pa.types.is_binary_view(kind) or pa.types.is_large_binary(kind):
            kind = pa.binary()
        changed |= kind != f.type
        columns.append(f.with_type(kind))
    return table.cast(pa.schema(columns)) if changed else table


def _advance_watermark(record: RunRecord, data: pa.Table, pipeline: Pipeline) -> None:
    """Set the record's watermark to the loaded rows' maximum (unchanged when no rows came)."""
    column = pipeline.transform.watermark_column
    if not column:
        return
    where = f"{pipeline.origin}: [transform] watermark_column {column!r}"
    if column not in data.column_names:
        raise ConfigError(
            f"{where} is not a column of the transform's result ({', '.join(data.column_names)}): "
            "select it, or fix the name"
        )
    kind = data.schema.field(column).type
    if not _watermark_type_ok(kind):
        raise ConfigError(
            f"{where} has type {kind}: use an integer, decimal, date, timestamp or string column"
        )
    if data.num_rows == 0:
        return
    highest = pc.max(data[column])
    if not highest.is_valid:
        return
    record.watermark = watermark_text(highest)
    record.watermark_type = str(kind)


def _watermark_type_ok(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
    )


_TICKS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_UNITS = {"s": "Second", "ms": "Millisecond", "us": "Microsecond", "ns": "Nanosecond"}


def watermark_text(value: pa.Scalar) -> str:
    """A column maximum as stored text (ISO for dates and timestamps).

    Timestamps are written in UTC at their full precision, with ``Z`` when the column has a time
    zone, so nanoseconds and zones survive the round trip through the run history.
    """
    kind = value.type
    if pa.types.is_timestamp(kind):
        per_second = _TICKS[kind.unit]
        seconds, fraction = divmod(value.cast(pa.int64()).as_py(), per_second)
        moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
        digits = len(str(per_second)) - 1
        text = moment.isoformat(timespec="seconds") + (f".{fraction:0{digits}d}" if digits else "")
        return text + ("Z" if kind.tz else "")
    plain = value.as_py()
    return plain.isoformat() if isinstance(plain, dt.date) else str(plain)


def _literal(watermark: Watermark) -> str:
    """A SQL literal for a stored watermark, typed by its column's Arrow type."""
    kind, value = watermark.arrow_type, watermark.value
    if kind.startswith(("int", "uint")):
        return str(int(value))
    if kind.startswith(("double", "float", "halffloat")):
        return repr(float(value))
    if kind.startswith("decimal"):
        return f"CAST({_string(str(decimal.Decimal(value)))} AS DECIMAL(38, {_scale(kind)}))"
    if kind.startswith("date"):
        return f"DATE {_string(dt.date.fromisoformat(value).isoformat())}"
    if kind.startswith("timestamp["):  # e.g. timestamp[ns, tz=Europe/Paris]: an instant, stored in UTC
        unit = _UNITS[kind[len("timestamp[") :].split(",")[0].rstrip("]")]
        zone = 'Some("UTC")' if "tz=" in kind else "None"
        return f"arrow_cast({_string(value)}, 'Timestamp({unit}, {zone})')"
    if kind in ("string", "large_string", "string_view", "utf8"):
        return _string(value)
    raise ConfigError(
        f"watermark column {watermark.column!r} has type {kind}: use an integer, decimal, date, "
        "timestamp or string column"
    )


def _scale(kind: str) -> int:
    """The scale of ``decimal128(p, s)``."""
    return int(kind.rstrip(")").split(",")[-1])


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _one_line(exc: BaseException) -> str:
    """``Kind: first line`` of an unexpected error, for the run record."""
    text, kind = first_line(exc), type(exc).__name__
    return (text if text == kind else f"{kind}: {text}")[:500]
