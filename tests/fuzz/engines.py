"""The two engines a query runs on: a local mesh of flow-workers and single-process DataFusion.

``Engines`` starts one mesh of ``workers`` flow-worker processes over mTLS and connects one ``Mesh`` per
partition count to it (``Mesh(partitions=p)`` plans with p target partitions; ``min_task_bytes=1`` and
no adaptive gate, so every multi-partition stage spreads over all peers). The reference for partition
count p is a plain ``SessionContext`` with p target partitions. ``compare`` decides whether two
outcomes differ, the way ``ematix_flow.compare`` compares a mesh answer with DataFusion's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
from datafusion import SessionConfig, SessionContext
from datafusion.plan import ExecutionPlan

from ematix_flow import Mesh
from ematix_flow.engine.run import is_panic
from ematix_flow.engine.settings import planning_context
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

__all__ = ["SUSPECTS", "Engines", "Outcome", "agrees_when", "compare", "one_line", "planner_alone"]

#: DataFusion settings whose change may make DataFusion give the mesh's answer (see ``agrees_when``).
SUSPECTS: dict[str, str] = {
    "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown": "false",
    "datafusion.optimizer.enable_join_dynamic_filter_pushdown": "false",
    "datafusion.optimizer.enable_topk_dynamic_filter_pushdown": "false",
    "datafusion.optimizer.enable_dynamic_filter_pushdown": "false",
    "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery": "false",
    "datafusion.optimizer.prefer_existing_union": "true",
    "datafusion.optimizer.enable_round_robin_repartition": "false",
}

TASK_TIMEOUT = 60.0  # seconds: every Flight call of the fuzzer's mesh is bounded
QUERY_TIMEOUT = 60.0


@dataclass
class Outcome:
    """What an engine did with a query: an answer or an error, and how many peers ran tasks."""

    table: pa.Table | None = None
    error: str | None = None
    peers: int = 0
    seconds: float = 0.0


def failed(exc: BaseException) -> bool:
    """Whether ``exc`` is an engine's failure to answer (an error or a Rust panic), not an interrupt."""
    return isinstance(exc, Exception) or is_panic(exc)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first and last lines of its message."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and lines[-1] != text:
        text = f"{text} ... {lines[-1]}"
    return f"{type(exc).__name__}: {text}"[:500]


def plan_shape(plan: ExecutionPlan) -> str:
    """A short hash of the plan's operator names and nesting (its shape, not its expressions)."""
    names: list[str] = []

    def walk(n: ExecutionPlan, depth: int) -> None:
        text = n.display().strip()
        names.append(f"{depth}:{text.split(':')[0].split('(')[0].strip()}")
        for c in n.children():
            walk(c, depth + 1)

    walk(plan, 0)
    return hashlib.sha1(" ".join(names).encode()).hexdigest()[:12]


class Engines:
    """A mesh (one ``Mesh`` per partition count, sharing the workers) and the reference contexts."""

    def __init__(self, partitions: list[int], workers: int = 3, work_dir: Path | None = None) -> None:
        self.partitions = list(partitions)
        self.reference: dict[int, SessionContext] = {}
        self.planning: dict[int, SessionContext] = {}
        self.meshes: dict[int, Mesh] = {}
        self.paths: dict[str, Path] = {}
        options: dict[str, Any] = {"min_task_bytes": 1, "local_below_bytes": 0, "task_timeout": TASK_TIMEOUT}
        first = Mesh.local(workers, partitions=self.partitions[0], work_dir=work_dir, **options)
        try:
            self.meshes[self.partitions[0]] = first
            for p in self.partitions[1:]:
                self.meshes[p] = Mesh(first.peers, first.tls, partitions=p, **options)
        except BaseException:
            self.close()
            raise
        for p in self.partitions:
            self.reference[p] = SessionContext(SessionConfig().with_target_partitions(p))
            self.planning[p] = planning_context(p)

    def register(self, paths: dict[str, Path]) -> None:
        """Register every table of a world (a folder of Parquet files each) by path in every engine."""
        self.paths = dict(paths)  # the current world's tables (run_reference_with registers these)
        for name, path in paths.items():
            for mesh in self.meshes.values():
                mesh.register_parquet(name, path)
            for ctx in [*self.reference.values(), *self.planning.values()]:
                if ctx.table_exist(name):
                    ctx.deregister_table(name)
                ctx.register_parquet(name, str(path))

    def run_reference(self, sql: str, p: int) -> Outcome:
        """Single-process DataFusion's answer with ``p`` target partitions."""
        t0 = time.perf_counter()
        try:
            table = self.reference[p].sql(sql).to_arrow_table()
        except BaseException as exc:  # a DataFusion panic is a BaseException
            if not failed(exc):
                raise
            return Outcome(error=one_line(exc), seconds=time.perf_counter() - t0)
        return Outcome(table, seconds=time.perf_counter() - t0)

    def run_planner_alone(self, sql: str, p: int) -> Outcome:
        """DataFusion in this process with the mesh's own planning settings (nothing distributed)."""
        t0 = time.perf_counter()
        try:
            table = self.planning[p].sql(sql).to_arrow_table()
        except BaseException as exc:  # a DataFusion panic is a BaseException
            if not failed(exc):
                raise
            return Outcome(error=one_line(exc), seconds=time.perf_counter() - t0)
        return Outcome(table, seconds=time.perf_counter() - t0)

    def run_reference_with(self, sql: str, p: int, settings: dict[str, str]) -> Outcome:
        """DataFusion's answer with ``settings`` changed (a fresh context over the registered tables)."""
        config = SessionConfig().with_target_partitions(p)
        for key, value in settings.items():
            config = config.set(key, value)
        ctx = SessionContext(config)
        for name, path in self.paths.items():
            ctx.register_parquet(name, str(path))
        try:
            return Outcome(ctx.sql(sql).to_arrow_table())
        except BaseException as exc:  # a DataFusion panic is a BaseException
            if not failed(exc):
                raise
            return Outcome(error=one_line(exc))

    def run_mesh(self, sql: str, p: int) -> Outcome:
        """The mesh's answer when planned with ``p`` partitions."""
        mesh = self.meshes[p]
        t0 = time.perf_counter()
        try:
            table = mesh.sql(sql, timeout=QUERY_TIMEOUT)
        except BaseException as exc:  # a DataFusion panic is a BaseException
            if not failed(exc):
                raise
            return Outcome(error=one_line(exc), seconds=time.perf_counter() - t0)
        run = mesh.last_run
        peers = len(run.peers_used) if run is not None else 0
        return Outcome(table, peers=peers, seconds=time.perf_counter() - t0)

    def shape(self, sql: str, p: int) -> str | None:
        """The shape of the plan the mesh's planner makes for ``sql`` (None if it cannot plan it)."""
        try:
            return plan_shape(self.planning[p].sql(sql).execution_plan())
        except BaseException as exc:
            if not failed(exc):
                raise
            return None

    def close(self) -> None:
        """Disconnect every Mesh and stop the workers."""
        for p in reversed(list(self.meshes)):
            self.meshes.pop(p).close()

    def __enter__(self) -> Engines:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def compare(sql: str, top_tags: set[str], got: Outcome, want: Outcome) -> str | None:
    """None when the mesh's outcome equals the reference answer ``want``, else what differs.

    ``top_tags`` are the features of the outermost query: ``limit-count`` (a LIMIT without ORDER BY:
    only row counts compare) and ``order-total`` (ORDER BY every output column: the order is checked,
    ties and all).
    """
    assert want.table is not None
    if got.error is not None:
        return f"mesh failed: {got.error}"
    assert got.table is not None
    if "limit-count" in top_tags:
        if got.table.num_rows != want.table.num_rows:
            return f"row count differs: actual {got.table.num_rows}, expected {want.table.num_rows}"
        return None
    ordered = query_is_ordered(sql)
    return compare_tables(got.table, want.table, ordered=ordered, lenient_ties="order-total" not in top_tags)


def planner_alone(engines: Engines, sql: str, top_tags: set[str], p: int) -> str:
    """Whether single-process DataFusion with the mesh's planning settings shows the difference too.

    If it does, the difference comes from those settings (or a DataFusion bug they reach), not from
    running the plan distributed.
    """
    want = engines.run_reference(sql, p)
    if want.table is None:
        return "DataFusion fails now"
    local = engines.run_planner_alone(sql, p)
    diff = compare(sql, top_tags, local, want)
    if diff is None:
        return "answers as DataFusion does: the difference comes from distribution"
    return f"differs too, so the mesh's planning settings cause it: {diff}"[:300]


def agrees_when(engines: Engines, sql: str, top_tags: set[str], p: int, got: Outcome) -> list[str]:
    """The ``SUSPECTS`` settings with which single-process DataFusion gives the mesh's answer ``got``.

    A difference that one of them explains is DataFusion answering differently under that setting
    (a DataFusion bug, or one of the mesh's planning settings), not the distribution.
    """
    if got.table is None:
        return []
    out = []
    for key, value in SUSPECTS.items():
        alt = engines.run_reference_with(sql, p, {key: value})
        if alt.table is not None and compare(sql, top_tags, got, alt) is None:
            out.append(f"{key.rsplit('.', 1)[1]}={value}")
    return out
