"""Stage boundaries that DataFusion cannot cross: exchanges kept inside a stage, re-planning,
and schemas merged across the tasks of one stage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionConfig, SessionContext

from ematix_flow import Mesh
from ematix_flow.coordinator_lib.driver import _exchanges_to_keep
from ematix_flow.coordinator_lib.planning import node_infos, plan_query
from ematix_flow.engine.exchange import merge_nullability, read_schema, schema_bytes
from ematix_flow.errors import TaskFailedError
from ematix_flow.planner.slicing import plan_tasks
from ematix_flow.planner.stages import build_graph
from ematix_flow.workloads import tpcds, tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered


def test_a_kept_exchange_stays_inside_its_consumer(planning_ctx: SessionContext) -> None:
    plan = planning_ctx.sql(tpch.query(3)).execution_plan()
    cut = build_graph(plan.to_bytes(), node_infos(plan))
    consumer = next(s for s in cut.stages if any(i.mode == "shuffle" for i in s.inputs))
    shuffle = next(i for i in consumer.inputs if i.mode == "shuffle")
    kept = build_graph(plan.to_bytes(), node_infos(plan), {shuffle.exchange: "because"})
    assert len(kept.stages) < len(cut.stages)
    holder = next(s for s in kept.stages if s.kept)
    assert holder.kept == "because"
    assert holder.single_task and "because" in holder.single_task
    assert len(plan_tasks(holder, 3)) == 1
    assert any(n.kind == "repartition" for n in holder.plan.walk())


def test_only_a_failure_typed_as_a_cut_keeps_exchanges(planning_ctx: SessionContext) -> None:
    planned = plan_query(planning_ctx, tpch.query(3))
    consumer = next(s for s in planned.graph.stages if any(i.exchange >= 0 for i in s.inputs))
    text = "run_task failed on peer p: execution failed: Internal error: DataFusion error: no ordering"
    cut = TaskFailedError(text, stage=consumer.id, reason=TaskFailedError.CUT)
    kept = _exchanges_to_keep(planned, cut, {})
    assert set(kept) == {i.exchange for i in consumer.inputs if i.exchange >= 0}
    assert all(r == f"stage {consumer.id} failed when cut there: no ordering" for r in kept.values())
    assert _exchanges_to_keep(planned, cut, kept) == {}  # kept already
    untyped = TaskFailedError(text, stage=consumer.id)  # the text alone decides nothing
    assert _exchanges_to_keep(planned, untyped, {}) == {}
    unplaced = TaskFailedError(text, reason=TaskFailedError.CUT)  # no stage
    assert _exchanges_to_keep(planned, unplaced, {}) == {}


def test_a_failing_stage_with_nothing_below_keeps_the_exchange_above(planning_ctx: SessionContext) -> None:
    planned = plan_query(planning_ctx, tpch.query(3))
    leaf = next(s for s in planned.graph.stages if not s.inputs)
    text = "run_task failed on peer p: execution failed: DataFusion error: Internal error: no direction"
    kept = _exchanges_to_keep(planned, TaskFailedError(text, stage=leaf.id, reason=TaskFailedError.CUT), {})
    above = {i.exchange for s in planned.graph.stages for i in s.inputs if i.stage == leaf.id}
    assert above and set(kept) == above


@pytest.mark.integration
def test_a_union_split_across_tasks_under_a_limited_distinct_is_replanned(tmp_path: Path) -> None:
    # DISTINCT (a UNION) with a LIMIT over a union with one sorted input: DataFusion picks its
    # aggregation strategy from the union's ordering; a task holding only the sorted input's share
    # picks the top-k one, which needs a direction the plan does not have ("Internal error")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": [0], "c4": pa.array([4], pa.int16())}), a)
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), b)
    sql = (
        "SELECT c4 AS x1, 0.5 AS x3 FROM a UNION "
        "SELECT 1 AS x6, lag(0.5) OVER (ORDER BY d.x ASC NULLS FIRST) "
        "FROM (SELECT id AS x FROM b GROUP BY 1) AS d LIMIT 10"
    )
    ref = SessionContext(SessionConfig().with_target_partitions(1))
    ref.register_parquet("a", str(a))
    ref.register_parquet("b", str(b))
    with Mesh.local(workers=3, partitions=1, min_task_bytes=1, local_below_bytes=0) as mesh:
        mesh.register_parquet("a", a)
        mesh.register_parquet("b", b)
        got = mesh.sql(sql)
        run = mesh.last_run
    assert compare_tables(got, ref.sql(sql).to_arrow_table(), ordered=False) is None
    assert run is not None and run.kept, "expected a re-plan with the exchange above the union kept"


def test_merge_nullability_keeps_types_and_widens_nulls() -> None:
    strict = pa.schema([pa.field("a", pa.int64(), False), pa.field("b", pa.string(), False)])
    loose = pa.schema([pa.field("a", pa.int64(), True), pa.field("b", pa.string(), False)])
    merged = read_schema(merge_nullability(schema_bytes(strict), schema_bytes(loose)))
    assert [f.nullable for f in merged] == [True, False]
    assert merged.types == strict.types
    same = schema_bytes(loose)
    assert merge_nullability(same, schema_bytes(strict)) == same


@pytest.mark.integration
def test_a_window_that_cannot_start_over_a_cut_is_replanned(tmp_path_factory: pytest.TempPathFactory) -> None:
    # TPC-DS q47 with 2 shuffle partitions: a window needs an ordering DataFusion derived from a
    # constant column below a shuffle; a spliced input cannot declare it, so the window asserts
    data = tpcds.generate(0.01, tmp_path_factory.mktemp("tpcds") / "sf0.01")
    sql = tpcds.query(47)
    ref = SessionContext(SessionConfig().with_target_partitions(2))
    tpcds.register_all(ref, data)
    with Mesh.local(workers=2, partitions=2, min_task_bytes=1) as mesh:
        tpcds.register_all(mesh, data)
        got = mesh.sql(sql)
        run = mesh.last_run
    assert compare_tables(got, ref.sql(sql).to_arrow_table(), ordered=query_is_ordered(sql)) is None
    assert run is not None and run.kept, "expected a re-plan with an exchange kept inside a stage"
    assert "re-planned" in str(run)
