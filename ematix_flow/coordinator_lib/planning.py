"""Planning a query on the submitter: SQL -> DataFusion physical plan -> stage graph."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

import pyarrow as pa
from datafusion import DataFrame, SessionContext, SQLOptions
from datafusion.plan import ExecutionPlan

from ematix_flow.coordinator_lib import subqueries
from ematix_flow.coordinator_lib.codec import codec_problem, node_infos
from ematix_flow.engine.lake.registry import (
    check_no_writes,
    lake_scans,
    reads_lake,
    registry,
    without_statistics,
)
from ematix_flow.engine.stores import storage_failure
from ematix_flow.errors import FlowError, QueryError, UnknownFieldError
from ematix_flow.planner.lake import concretize
from ematix_flow.planner.nodes import NodeInfo
from ematix_flow.planner.stages import StageGraph, build_graph
from ematix_flow.planner.writes import WriteTarget, plan_write

log = logging.getLogger(__name__)


@dataclass
class PlannedQuery:
    """A query ready to run: its stage graph and what is needed to explain or finish it."""

    sql: str
    graph: StageGraph
    logical_schema: pa.Schema
    plan_bytes: bytes
    local_plan: ExecutionPlan | None = None  # set when the plan can only run where it was planned
    local_reason: str = ""
    planned_in: SessionContext | None = None  # set when not planned in the Mesh's context (subqueries.py)
    row_check: subqueries.RowCheck | None = None  # subqueries to check for a second row before running
    lines: tuple[str, ...] = ()  # every node's display line, pre-order (to match EXPLAIN's plan to it)
    write: WriteTarget | None = None  # the files it writes: by the tasks of one stage, staged

    @property
    def scan_bytes(self) -> int:
        """Bytes the query's file scans read."""
        return self.graph.scan_bytes


def one_line(text: str) -> str:
    """DataFusion's multi-line error text as one line: the error and its root cause."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and ln.strip() != "caused by"]
    if not lines:
        return "unknown error"
    if len(lines) > 1 and "caused by" in text:
        line = f"{lines[0]}: {lines[-1]}"
    else:
        line = " ".join(lines)
    for prefix in ("DataFusion error: ", "Error during planning: "):
        line = line.replace(prefix, "")
    return line[:400]


def _sql_error(exc: Exception) -> FlowError:
    failure = storage_failure(str(exc), ())  # a store that refused or did not answer: not the SQL
    if failure is not None:
        return failure
    return QueryError(f"invalid query: {one_line(str(exc)) or type(exc).__name__}")


#: What a read-only planner refuses instead of running (DataFusion runs DDL and SET while planning).
_READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


def dataframe(ctx: SessionContext, sql: str, *, read_only: bool = False) -> DataFrame:
    """``ctx.sql`` with DataFusion's errors turned into one-line QueryErrors.

    ``read_only``: DDL (CREATE, DROP), DML (INSERT, COPY) and statements (SET) are refused, not run.
    """
    try:
        return ctx.sql_with_options(sql, _READ_ONLY) if read_only else ctx.sql(sql)
    except Exception as exc:
        raise _sql_error(exc) from exc


def plan_query(ctx: SessionContext, sql: str, keep: dict[int, str] | None = None) -> PlannedQuery:
    """Plan ``sql`` in ``ctx`` and cut it into stages (``keep``: exchanges not to cut, with why)."""
    df = dataframe(ctx, sql)
    if reads_lake(ctx, df):
        with without_statistics(ctx):
            return _plan_query(ctx, sql, dataframe(ctx, sql), keep)
    return _plan_query(ctx, sql, df, keep)


def _plan_query(ctx: SessionContext, sql: str, df: DataFrame, keep: dict[int, str] | None) -> PlannedQuery:
    planned_in: SessionContext | None = None
    row_check: subqueries.RowCheck | None = None
    try:
        plan = df.execution_plan()
        if subqueries.unchecked_scalar_subquery(df):
            # the join form does not fail on a second subquery row: the submitter checks first
            checked = subqueries.plan_with_subqueries(ctx, sql)
            if checked is not None:
                row_check = subqueries.row_check(checked)
    except Exception as exc:
        fallback = subqueries.plan_with_subqueries(ctx, sql)
        if fallback is None:
            raise _sql_error(exc) from exc
        planned_in, df, plan = fallback.ctx, fallback.df, fallback.plan
    try:
        plan_bytes = plan.to_bytes()
    except Exception as exc:
        # e.g. RecursiveQueryExec: DataFusion has no encoding for it, so it cannot be shipped
        node = re.search(r"Plan: (\w+)", str(exc))
        reason = f"DataFusion cannot serialize its {node.group(1) if node else 'plan'}"
        _refuse_lake_in_process(ctx, plan.display_indent(), reason)
        return PlannedQuery(
            sql, StageGraph([]), df.schema(), b"", local_plan=plan, local_reason=reason, row_check=row_check
        )
    infos = node_infos(plan)
    try:
        problem = codec_problem(planned_in or ctx, plan_bytes, infos)
        if problem is None:
            if planned_in is not None:
                keep = {**subqueries.exchanges_to_keep(planned_in, plan_bytes, infos), **(keep or {})}
            lines = tuple(i.line for i in infos)  # as EXPLAIN shows them (stage_schemas.py)
            plan_bytes, infos = _with_lake_files(ctx, df, plan_bytes, infos)
            graph = build_graph(plan_bytes, infos, keep)
            write = plan_write(graph)
            return PlannedQuery(
                sql,
                graph,
                df.schema(),
                plan_bytes,
                planned_in=planned_in,
                row_check=row_check,
                lines=lines,
                write=write,
            )
    except UnknownFieldError as exc:
        log.warning("a plan the walker cannot cut runs in-process: %s", exc)
        problem = f"ematix-flow's plan walker cannot cut it safely: {exc}"
    # the bytes would make peers run another plan (codec.py, fields.py): run this one here instead
    _refuse_lake_in_process(ctx, plan.display_indent(), problem or "")
    return PlannedQuery(
        sql,
        StageGraph([]),
        df.schema(),
        plan_bytes,
        local_plan=plan,
        local_reason=problem,
        planned_in=planned_in,
        row_check=row_check,
    )


def _with_lake_files(
    ctx: SessionContext, df: DataFrame, plan_bytes: bytes, infos: list[NodeInfo]
) -> tuple[bytes, list[NodeInfo]]:
    """The plan with its lake tables' template scans reading their snapshots' files (``planner/lake.py``)."""
    check_no_writes(ctx, plan_bytes)
    scans = lake_scans(ctx, df, plan_bytes)
    if not scans:
        return plan_bytes, infos
    plan_bytes, labels = concretize(plan_bytes, scans)
    lines = list(infos)
    for index, label in labels.items():
        _, _, rest = infos[index].line.partition("]]}, ")  # what follows the template's file groups
        lines[index] = replace(infos[index], line=f"DataSourceExec: {label}" + (f", {rest}" if rest else ""))
    return plan_bytes, lines


def _refuse_lake_in_process(ctx: SessionContext, plan_text: str, reason: str) -> None:
    """A plan that would run uncut here reads no lake table (its template files are empty).

    Raises:
        QueryError: it reads one.
    """
    reg = registry(ctx)
    if reg is None:
        return
    for table in reg.tables.values():
        if table.template.lstrip("/") in plan_text:
            raise QueryError(
                f"this query reads the lake table {table.name} but cannot run on the mesh ({reason}); "
                "lake tables are read only by distributed plans"
            )
