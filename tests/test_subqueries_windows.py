"""Scalar subqueries in every clause, and windows whose partition a filter pins, on a 3-peer mesh.

Two failure families, each answer compared with single-process DataFusion over the same files:

- Uncorrelated scalar subqueries the logical optimizer cannot turn into a join (inside an aggregate's
  or a window's arguments, ORDER BY, GROUP BY, an outer join's ON) used to fail to plan ("Physical
  plan does not support logical expression ScalarSubquery"). They are planned again with DataFusion's
  ``ScalarSubqueryExec`` (coordinator_lib/subqueries.py); the exchanges between it and the
  expressions that read its value stay in one stage, every other stage is distributed.
- A window whose PARTITION BY column a filter pins to one value sorts on its ORDER BY only; a stage
  cut below it cannot say the column is constant, and the window refuses to start ("Expects
  PARTITION BY expression to be ordered"). The worker types that as a cut failure and the query is
  re-planned with the exchange kept inside the window's stage.

The mesh splits every stage it can across its peers (``min_task_bytes=1``, no adaptive gate).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from datafusion import SessionConfig, SessionContext, udf
from support import local_mesh

from ematix_flow import Mesh
from ematix_flow.coordinator_lib.planning import plan_query
from ematix_flow.coordinator_lib.subqueries import KEPT_REASON
from ematix_flow.engine.run import _execution_error
from ematix_flow.engine.settings import planning_context
from ematix_flow.errors import TaskFailedError
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T1_ROWS = 200_000  # ~0.6 MB of Parquet: split into byte ranges, so its scan fans out
T2_ROWS = 120_000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """t1(id, x, g, s) and t2(v, k): Parquet files with several row groups each (a fixed seed)."""
    rng = random.Random(7)
    base = tmp_path_factory.mktemp("subq")
    t1 = pa.table(
        {
            "id": list(range(T1_ROWS)),
            "x": [rng.randrange(1000) for _ in range(T1_ROWS)],
            "g": [rng.randrange(40) for _ in range(T1_ROWS)],
            "s": [f"s{rng.randrange(300)}" for _ in range(T1_ROWS)],
        }
    )
    t2 = pa.table(
        {
            "v": [rng.randrange(1200) for _ in range(T2_ROWS)],
            "k": [rng.randrange(40) for _ in range(T2_ROWS)],
        }
    )
    paths = {"t1": base / "t1.parquet", "t2": base / "t2.parquet"}
    pq.write_table(t1, paths["t1"], row_group_size=20_000)
    pq.write_table(t2, paths["t2"], row_group_size=20_000)
    return paths


@pytest.fixture(scope="module")
def reference(data: dict[str, Path]) -> Callable[[str], pa.Table]:
    """Single-process DataFusion with its default settings: the answers to match."""
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    for name, path in data.items():
        ctx.register_parquet(name, str(path))
    return lambda sql: ctx.sql(sql).to_arrow_table()


@pytest.fixture(scope="module")
def meshes(data: dict[str, Path]) -> Iterator[Callable[[int], Mesh]]:
    """``meshes(p)``: a 3-peer mesh planning with ``p`` partitions (started on first use, one per p)."""
    opened: dict[int, Mesh] = {}
    contexts = []

    def get(partitions: int) -> Mesh:
        if partitions not in opened:
            cm = local_mesh(workers=3, partitions=partitions, min_task_bytes=1, local_below_bytes=0)
            mesh = cm.__enter__()
            contexts.append(cm)
            for name, path in data.items():
                mesh.register_parquet(name, path)
            opened[partitions] = mesh
        return opened[partitions]

    yield get
    for cm in contexts:
        cm.__exit__(None, None, None)


def check(mesh: Mesh, reference: Callable[[str], pa.Table], sql: str) -> None:
    """The mesh's answer equals DataFusion's, and tasks ran on the peers (the query was distributed)."""
    got = mesh.sql(sql)
    problem = compare_tables(got, reference(sql), ordered=query_is_ordered(sql))
    assert problem is None, f"{problem}\n{sql}"
    run = mesh.last_run
    assert run is not None and run.distributed, f"ran on the submitter only: {sql}"


# ---------------------------------------------------------------------------------------------- family 3
SUB = "(SELECT max(v) FROM t2 WHERE k > 3)"
SUB_MIN = "(SELECT min(v) FROM t2 WHERE k < 30)"
CTE_SUB = "(WITH c AS (SELECT v FROM t2 WHERE k > 3) SELECT max(v) FROM c)"
NESTED_SUB = "(SELECT max(v) FROM t2 WHERE v < (SELECT avg(v) FROM t2 WHERE k > 5))"


@dataclass(frozen=True)
class S:
    """A query with scalar subqueries; ``physical``: DataFusion cannot plan it as joins."""

    sql: str
    physical: bool


SUBQUERIES: dict[str, S] = {
    # planned as joins, as before (the logical optimizer rewrites them)
    "select-list": S(f"SELECT id, x, {SUB} AS m FROM t1 WHERE g = 3", False),
    "where": S(f"SELECT id, x FROM t1 WHERE x > {SUB_MIN} + 900", False),
    "having": S(f"SELECT g, sum(x) FROM t1 GROUP BY g HAVING sum(x) > {SUB} * 4", False),
    "case": S(f"SELECT id, CASE WHEN x > {SUB_MIN} THEN 'hi' ELSE 'lo' END AS c FROM t1 WHERE g < 3", False),
    "join-on-inner": S(
        f"SELECT count(*), sum(t1.x) FROM t1 JOIN t2 ON t1.g = t2.k AND t1.x > {SUB} - 20", False
    ),
    "cte-inside": S(f"SELECT id, x FROM t1 WHERE x > {CTE_SUB} - 5", False),
    "nested": S(f"SELECT count(*) FROM t1 WHERE x < {NESTED_SUB} - 500", False),
    "with-in-and-exists": S(
        f"SELECT count(*) FROM t1 WHERE x IN (SELECT v FROM t2 WHERE v > {SUB} - 40) "
        "AND EXISTS (SELECT 1 FROM t2 WHERE t2.k = t1.g AND t2.v < 3)",
        False,
    ),
    # only a ScalarSubqueryExec can plan these
    "order-by": S(f"SELECT id, x FROM t1 WHERE g = 5 ORDER BY x + {SUB}, id", True),
    "aggregate-arg": S(f"SELECT sum(x + {SUB}) FROM t1", True),
    "aggregate-arg-grouped": S(f"SELECT g, sum(x + {SUB}), count(*) FROM t1 GROUP BY g", True),
    "case-in-aggregate": S(
        f"SELECT g, sum(CASE WHEN x > {SUB_MIN} THEN 1 ELSE 0 END) FROM t1 GROUP BY g", True
    ),
    "window-arg": S(f"SELECT id, sum(x + {SUB}) OVER () AS w FROM t1 WHERE g = 7", True),
    "window-order": S(
        f"SELECT id, rank() OVER (PARTITION BY g ORDER BY x + {SUB}, id) AS r FROM t1 WHERE s = 's9'", True
    ),
    "group-by-expression": S(f"SELECT g + {SUB} AS gg, count(*) FROM t1 GROUP BY g + {SUB}", True),
    "join-on-left": S(
        f"SELECT count(*), count(t2.v) FROM t1 LEFT JOIN t2 ON t1.g = t2.k AND t1.x > {SUB} - 3", True
    ),
    "join-on-key": S(f"SELECT count(*) FROM t1 JOIN t2 ON t1.x = t2.v + {SUB} - 1100", True),
    "cte-inside-aggregate": S(f"SELECT sum(x + {CTE_SUB}) FROM t1", True),
    "nested-in-aggregate": S(f"SELECT g, max(x - {NESTED_SUB}) FROM t1 GROUP BY g", True),
    "with-in-and-exists-physical": S(
        f"SELECT g, sum(x * {SUB}) FROM t1 WHERE x IN (SELECT v FROM t2 WHERE k = 1) "
        "AND EXISTS (SELECT 1 FROM t2 WHERE t2.k = t1.g) GROUP BY g",
        True,
    ),
}


@pytest.mark.parametrize("partitions", [2, 4])
@pytest.mark.parametrize("name", list(SUBQUERIES))
def test_scalar_subqueries_answer_like_datafusion(
    meshes: Callable[[int], Mesh], reference: Callable[[str], pa.Table], name: str, partitions: int
) -> None:
    mesh = meshes(partitions)
    check(mesh, reference, SUBQUERIES[name].sql)
    # every one runs distributed: the join plans in every stage; the ScalarSubqueryExec plans keep the
    # stage that holds the exec and the expressions reading it in one task, the rest spreads
    run = mesh.last_run
    assert run is not None and len(run.peers_used) >= 2, run.peers_used


def test_only_what_joins_cannot_plan_takes_a_scalar_subquery_exec(data: dict[str, Path]) -> None:
    # the exchanges between the exec and the expressions reading its value stay inside one stage; the
    # rest (here the subquery's own scan and partial aggregate) is a stage of its own, spread over peers
    ctx = planning_context(4)
    for name, path in data.items():
        ctx.register_parquet(name, str(path))
    for name, case in SUBQUERIES.items():
        planned = plan_query(ctx, case.sql)
        assert (planned.planned_in is not None) == case.physical, name
        execs = [n for s in planned.graph.stages for n in s.plan.walk() if n.kind == "scalar_subquery"]
        assert bool(execs) == case.physical, name
    planned = plan_query(ctx, SUBQUERIES["aggregate-arg-grouped"].sql)
    holder = next(s for s in planned.graph.stages if any(n.kind == "scalar_subquery" for n in s.plan.walk()))
    assert holder.kept == KEPT_REASON
    assert holder.inputs, "the subquery's input is cut and distributed, not kept"
    assert all(planned.graph[i.stage].single_task is None for i in holder.inputs)


#: Scalar subqueries whose row count only the run can tell: as joins they would return a row per
#: subquery row; DataFusion's physical form (and SQL) fails on a second row, as those in MANY_ROWS do.
ROW_COUNTS: dict[str, str] = {
    "many-rows-where": "SELECT count(*) FROM t1 WHERE x > (SELECT v FROM t2 WHERE k = 3)",
    "many-rows-select": "SELECT id, (SELECT v FROM t2 WHERE k < 2) AS v FROM t1 WHERE g = 3",
    "grouped-many": "SELECT count(*) FROM t1 WHERE x > (SELECT max(v) FROM t2 GROUP BY k)",
    "grouped-one": "SELECT count(*) FROM t1 WHERE x > (SELECT max(v) FROM t2 WHERE k = 3 GROUP BY k)",
    "distinct-one": "SELECT count(*) FROM t1 WHERE g = (SELECT DISTINCT k FROM t2 WHERE k = 9)",
    "no-rows": "SELECT count(*) FROM t1 WHERE x > (SELECT v FROM t2 WHERE k = 99)",
}
MANY_ROWS = {"many-rows-where", "many-rows-select", "grouped-many"}


@pytest.mark.parametrize("partitions", [2, 4])
@pytest.mark.parametrize("name", list(ROW_COUNTS))
def test_a_scalar_subquery_with_more_than_one_row_fails_as_in_datafusion(
    meshes: Callable[[int], Mesh], reference: Callable[[str], pa.Table], name: str, partitions: int
) -> None:
    sql = ROW_COUNTS[name]
    mesh = meshes(partitions)
    if name not in MANY_ROWS:
        check(mesh, reference, sql)
        return
    with pytest.raises(Exception, match="Scalar subquery returned more than one row"):
        reference(sql)
    with pytest.raises(Exception, match="Scalar subquery returned more than one row") as caught:
        mesh.sql(sql)
    assert "\n" not in str(caught.value), "one line"


def test_only_subqueries_of_unproven_row_count_are_checked_before_the_run(data: dict[str, Path]) -> None:
    ctx = planning_context(4)
    for name, path in data.items():
        ctx.register_parquet(name, str(path))
    one_row = [
        "SELECT id FROM t1 WHERE x > (SELECT max(v) FROM t2)",
        "SELECT id FROM t1 WHERE x > (SELECT v FROM t2 LIMIT 1)",
        "SELECT id FROM t1 WHERE x > (SELECT v FROM t2 ORDER BY v DESC LIMIT 1)",
        "SELECT id, (SELECT 5) FROM t1",
        "SELECT id FROM t1 WHERE x > (SELECT max(v) FROM t2 WHERE t2.k = t1.g)",  # correlated: per key
    ]
    for sql in one_row:
        assert plan_query(ctx, sql).row_check is None, sql
    for name, sql in ROW_COUNTS.items():  # none is provably one row (no row at all: known at run time)
        planned = plan_query(ctx, sql)
        assert planned.planned_in is None and planned.graph.stages, name  # the join form, distributed
        assert planned.row_check is not None and len(planned.row_check.plans) == 1, name


def test_concurrent_queries_plan_in_their_own_contexts(
    meshes: Callable[[int], Mesh], reference: Callable[[str], pa.Table]
) -> None:
    # a Mesh plans queries from several threads at once: the physical-subquery plans use contexts
    # of their own, and the plain ones keep planning subqueries as joins meanwhile
    mesh = meshes(4)
    names = ["aggregate-arg-grouped", "select-list", "order-by", "having", "window-arg", "join-on-left"]
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            check(mesh, reference, SUBQUERIES[name].sql)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in names * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]


def test_tables_registered_later_are_seen_by_the_subquery_plan(
    meshes: Callable[[int], Mesh], reference: Callable[[str], pa.Table], tmp_path: Path
) -> None:
    mesh = meshes(2)
    extra = tmp_path / "t3.parquet"
    pq.write_table(pa.table({"v": [5, 7, 9]}), extra)
    mesh.register_parquet("t3", extra)  # after other subquery plans were made: the catalog is shared
    got = mesh.sql("SELECT g, sum(x + (SELECT max(v) FROM t3)) AS total FROM t1 GROUP BY g ORDER BY g")
    want = reference("SELECT g, sum(x + 9) AS total FROM t1 GROUP BY g ORDER BY g")
    assert compare_tables(got, want, ordered=True) is None


def test_a_stage_that_writes_no_rows_gets_its_schema_from_the_subquery_plan(
    meshes: Callable[[int], Mesh], reference: Callable[[str], pa.Table]
) -> None:
    # an empty producer has no schema to report: EXPLAIN gives it, in the context that made the plan
    # (the Mesh's own context cannot plan this query at all)
    sql = f"SELECT id, s, sum(x + {SUB}) OVER () AS w FROM t1 WHERE g = 999 ORDER BY id"
    got = meshes(4).sql(sql)
    assert got.num_rows == 0
    assert compare_tables(got, reference(sql), ordered=True) is None


def test_the_subquery_plan_sees_the_meshs_functions_and_settings(data: dict[str, Path]) -> None:
    ctx = planning_context(3, {"datafusion.execution.batch_size": "1234"})
    for name, path in data.items():
        ctx.register_parquet(name, str(path))
    ctx.register_udf(udf(lambda a: pc.add(a, 1), [pa.int64()], pa.int64(), "immutable", name="plus_one"))
    planned = plan_query(ctx, f"SELECT g, sum(plus_one(x) + {SUB}) FROM t1 GROUP BY g")
    assert planned.planned_in is not None
    settings = planned.planned_in.sql(
        "SELECT name, value FROM information_schema.df_settings WHERE name IN "
        "('datafusion.execution.batch_size', 'datafusion.execution.target_partitions', "
        "'datafusion.optimizer.enable_round_robin_repartition')"
    ).to_pydict()
    assert dict(zip(settings["name"], settings["value"], strict=True)) == {
        "datafusion.execution.batch_size": "1234",
        "datafusion.execution.target_partitions": "3",
        "datafusion.optimizer.enable_round_robin_repartition": "false",
    }


# ---------------------------------------------------------------------------------------------- family 4
WINDOWS = {
    "rank": "rank() OVER (PARTITION BY g ORDER BY x)",
    "row_number": "row_number() OVER (PARTITION BY g ORDER BY x, id)",
    "dense_rank": "dense_rank() OVER (PARTITION BY g ORDER BY x)",
    "sum": "sum(x) OVER (PARTITION BY g ORDER BY x)",
    "lag": "lag(x) OVER (PARTITION BY g ORDER BY x, id)",
    "unordered-sum": "sum(x) OVER (PARTITION BY g)",
    "two-columns": "rank() OVER (PARTITION BY g, s ORDER BY x, id)",
}
PINS = {"partition": "g = 1", "order": "x = 10", "both": "g = 1 AND x = 10"}


def window_sql(window: str, pin: str) -> str:
    """The window in a subquery, the filter outside it (DataFusion pushes it below the window)."""
    return f"SELECT * FROM (SELECT id, g, x, s, {WINDOWS[window]} AS w FROM t1) q WHERE {PINS[pin]}"


@pytest.mark.parametrize("partitions", [1, 2, 4])
@pytest.mark.parametrize("pin", list(PINS))
@pytest.mark.parametrize("window", list(WINDOWS))
def test_windows_over_pinned_partitions(
    meshes: Callable[[int], Mesh],
    reference: Callable[[str], pa.Table],
    window: str,
    pin: str,
    partitions: int,
) -> None:
    mesh = meshes(partitions)
    sql = window_sql(window, pin)
    check(mesh, reference, sql)  # distributed: a peer runs the window's stage (after a re-plan: whole)
    run = mesh.last_run
    assert run is not None
    pinned = pin != "order" and partitions > 1  # one partition: no exchange below the window to cut
    if pinned and window != "two-columns":
        # the first plan cut below the window, the window refused to start ("Expects PARTITION BY
        # expression to be ordered"; a WindowAggExec asserts instead: "All partition by columns should
        # have an ordering"), the re-plan kept the exchange inside the window's stage
        assert run.kept, f"expected a re-plan: {sql}"
        assert all("partition by" in r.lower() for r in run.kept.values()), run.kept
    elif not pinned:
        assert not run.kept, f"re-planned for nothing: {sql}"


@pytest.mark.parametrize("partitions", [2, 4])
def test_a_pinned_window_below_other_stages(
    meshes: Callable[[int], Mesh], reference: Callable[[str], pa.Table], partitions: int
) -> None:
    # the window's stage runs on a peer (not the root): the peer types the failure, the re-plan fixes it
    sql = (
        "SELECT w, count(*) AS n FROM (SELECT g, x, dense_rank() OVER (PARTITION BY g ORDER BY x) AS w "
        "FROM t1) q WHERE g = 1 GROUP BY w ORDER BY w"
    )
    mesh = meshes(partitions)
    check(mesh, reference, sql)
    assert mesh.last_run is not None and mesh.last_run.kept


def test_the_window_failure_is_typed_as_a_cut_where_it_is_caught() -> None:
    text = "DataFusion error: Execution error: Expects PARTITION BY expression to be ordered"
    assert _execution_error(Exception(text)).reason == TaskFailedError.CUT
    assert _execution_error(Exception("Execution error: division by zero")).reason == ""
