"""The codec check (coordinator_lib/codec.py) without processes: what it flags, what it must not flag.

The premises are tested too: DataFusion 55 really loses IGNORE NULLS of window functions and the
empty grouping set when a plan is decoded in the same process. When an upgrade fixes one, its test
here fails and says which entry of the check to remove.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext, col
from datafusion.plan import ExecutionPlan
from support import python_udfs

from ematix_flow import protobuf
from ematix_flow.coordinator_lib import codec
from ematix_flow.coordinator_lib.codec import codec_problem, node_infos, roundtrip_difference
from ematix_flow.coordinator_lib.planning import plan_query
from ematix_flow.engine.run import stream_partitions
from ematix_flow.engine.settings import planning_context
from ematix_flow.planner.nodes import NodeInfo, PlanNode
from ematix_flow.workloads import tpcds, tpch

pytestmark = pytest.mark.timeout(120)

WINDOW_FUNCTIONS = [
    "first_value(v)",
    "last_value(v)",
    "nth_value(v, 2)",
    "lag(v)",
    "lead(v)",
    "lag(v, 2, -1)",
]


@pytest.fixture(scope="module")
def ctx() -> SessionContext:
    """A planning context (2 partitions) with a small in-memory table ``t`` full of NULLs."""
    c = planning_context(2)
    c.from_pydict(
        {
            "k": list(range(12)),
            "v": [None, 4, None, 5, None, None, 7, None, 8, None, None, 9],
            "a": [1, 2, None, 1, 2, None, 1, 2, None, 1, 2, None],
        },
        name="t",
    )
    return c


def _problem(ctx: SessionContext, sql: str) -> str | None:
    plan = ctx.sql(sql).execution_plan()
    return codec_problem(ctx, plan.to_bytes(), node_infos(plan))


def _rows(ctx: SessionContext, plan: ExecutionPlan) -> list[str]:
    return sorted(repr(r) for batch in stream_partitions(ctx, plan) for r in batch.to_pylist())


def _decoded_rows(ctx: SessionContext, sql: str) -> tuple[list[str], list[str]]:
    """The rows of the plan and of the plan decoded from its own bytes, in this one process.

    Decoded before the plan runs: the bytes of a plan that ran hold its dynamic filters' final state.
    """
    plan = ctx.sql(sql).execution_plan()
    decoded = ExecutionPlan.from_bytes(ctx, plan.to_bytes())
    return _rows(ctx, plan), _rows(ctx, decoded)


# ----------------------------------------------------------------------------------- the premises
@pytest.mark.parametrize("function", WINDOW_FUNCTIONS)
def test_datafusion_55_drops_ignore_nulls_of_window_functions(ctx: SessionContext, function: str) -> None:
    sql = (
        f"SELECT k, {function} IGNORE NULLS OVER (ORDER BY k ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) FROM t"
    )
    planned, decoded = _decoded_rows(ctx, sql)
    assert planned != decoded, "the codec carries IGNORE NULLS now: remove the entry from codec.CODEC_GAPS"
    # and the round trip cannot show it: that is why it is a known gap
    plan = ctx.sql(sql).execution_plan()
    assert roundtrip_difference(ctx, plan.to_bytes(), node_infos(plan)) is None


@pytest.mark.parametrize(
    "aggregate",
    [
        "first_value(v ORDER BY k) IGNORE NULLS",
        "last_value(v ORDER BY k) IGNORE NULLS",
        "array_agg(v ORDER BY k) IGNORE NULLS",
    ],
)
def test_aggregates_keep_ignore_nulls_through_the_codec(ctx: SessionContext, aggregate: str) -> None:
    sql = f"SELECT a, {aggregate} AS x FROM t GROUP BY a"
    planned, decoded = _decoded_rows(ctx, sql)
    assert planned == decoded
    assert _problem(ctx, sql) is None


def test_datafusion_55_turns_the_empty_grouping_set_into_no_grouping(ctx: SessionContext) -> None:
    planned, decoded = _decoded_rows(ctx, "SELECT count(*) AS n FROM t GROUP BY GROUPING SETS (())")
    assert planned == ["{'n': 12}"]
    assert decoded == [], "the codec keeps gby=[()] now: the round trip check no longer needs to catch it"


# ----------------------------------------------------------------------------------- what is flagged
@pytest.mark.parametrize("function", WINDOW_FUNCTIONS)
@pytest.mark.parametrize("frame", ["ROWS", "RANGE", "GROUPS"])
def test_window_ignore_nulls_is_a_known_gap(ctx: SessionContext, function: str, frame: str) -> None:
    over = f"OVER (PARTITION BY a ORDER BY k {frame} BETWEEN 1 PRECEDING AND 1 FOLLOWING)"
    ignore = _problem(ctx, f"SELECT k, {function} IGNORE NULLS {over} AS x FROM t")
    assert ignore is not None and "drops IGNORE NULLS" in ignore
    assert _problem(ctx, f"SELECT k, {function} RESPECT NULLS {over} AS x FROM t") is None
    assert _problem(ctx, f"SELECT k, {function} {over} AS x FROM t") is None


#: Windows DataFusion reverses to share the sort another window needs (found by the fuzzer).
REVERSED = [
    "lag(v) OVER (PARTITION BY a ORDER BY k DESC)",
    "lead(v, 2, 0) OVER (PARTITION BY a ORDER BY k DESC)",
    "nth_value(v, 2) OVER (PARTITION BY a ORDER BY k DESC)",
    "nth_value(v, 2) OVER (PARTITION BY a ORDER BY k DESC ROWS BETWEEN 1 PRECEDING AND 2 FOLLOWING)",
]
#: Another window whose sort the reversed one shares (BoundedWindowAggExec and WindowAggExec forms).
SHARED_SORTS = ["row_number() OVER (ORDER BY a DESC, k)", "rank() OVER (PARTITION BY a ORDER BY k)"]


@pytest.mark.parametrize("function", REVERSED)
@pytest.mark.parametrize("other", SHARED_SORTS)
def test_a_reversed_shift_window_is_a_known_gap(ctx: SessionContext, function: str, other: str) -> None:
    sql = f"SELECT k, {function} AS x, {other} AS y FROM t"
    planned, decoded = _decoded_rows(ctx, sql)
    problem = _problem(ctx, sql)
    if planned == decoded:  # DataFusion did not reverse it with this sort: nothing is lost
        assert problem is None
        return
    assert problem is not None and "loses the reversal" in problem
    alone = f"SELECT k, {function} AS x FROM t"  # not reversed: shipped as usual
    assert _problem(ctx, alone) is None
    assert plan_query(ctx, sql).local_plan is not None


def test_reversed_windows_are_found_in_both_window_displays() -> None:
    bounded = (
        "BoundedWindowAggExec: wdw=[lag(t.v) PARTITION BY [t.a] ORDER BY [t.k DESC NULLS FIRST] RANGE "
        'BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW: Field { "lag(t.v) ..": nullable Int64 }, frame: '
        "RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING], mode=[Sorted]"
    )
    assert codec.reversed_window(bounded)
    assert not codec.reversed_window(
        bounded.replace("CURRENT ROW AND UNBOUNDED FOLLOWING", "UNBOUNDED PRECEDING AND CURRENT ROW")
    )
    assert not codec.reversed_window(bounded.replace("lag(t.v)", "sum(t.v)"))  # an aggregate reverses right
    unbounded = (
        "WindowAggExec: wdw=[nth_value(t.v,Int64(2)) PARTITION BY [t.a] ORDER BY [t.k DESC NULLS FIRST] "
        'RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW: Ok(Field { name: "n", data_type: Int64 }), '
        "frame: WindowFrame { units: Range, start_bound: START, end_bound: END, is_causal: false }]"
    )
    reversed_ = unbounded.replace("START", "CurrentRow").replace("END", "Following(Int64(NULL))")
    assert codec.reversed_window(reversed_)
    written = unbounded.replace("START", "Preceding(Int64(NULL))").replace("END", "CurrentRow")
    assert not codec.reversed_window(written)


def test_a_column_named_ignore_nulls_outside_a_window_is_not_a_gap(ctx: SessionContext) -> None:
    assert _problem(ctx, 'SELECT k AS "x IGNORE NULLS" FROM t WHERE v IS NOT NULL') is None


@pytest.mark.parametrize(
    ("grouping", "shown"),
    [("GROUPING SETS (())", "gby=[()]"), ("GROUPING SETS ((), ())", "gby=[(), ()]")],
)
def test_only_empty_grouping_sets_fail_the_round_trip(ctx: SessionContext, grouping: str, shown: str) -> None:
    problem = _problem(ctx, f"SELECT count(*) AS n, sum(v) AS s FROM t GROUP BY {grouping}")
    assert problem is not None
    assert "AggregateExec" in problem and f"`mode=Partial, {shown}" in problem and "gby=[]" in problem


@pytest.mark.parametrize(
    ("grouping", "columns"),
    [
        ("GROUPING SETS ((a), ())", "a, grouping(a) AS ga"),
        ("GROUPING SETS ((a), (k))", "a, k, grouping(a) AS ga, grouping(k) AS gk"),
        ("GROUPING SETS ((a, k), (a), ())", "a, k, grouping(a) AS ga, grouping(k) AS gk"),
        ("ROLLUP (a, k)", "a, k, grouping(a) AS ga, grouping(k) AS gk"),
        ("CUBE (a, k)", "a, k, grouping(a) AS ga, grouping(k) AS gk"),
    ],
)
def test_grouping_sets_with_a_column_pass(ctx: SessionContext, grouping: str, columns: str) -> None:
    sql = f"SELECT {columns}, count(*) AS n, sum(v) AS s FROM t GROUP BY {grouping}"
    assert _problem(ctx, sql) is None
    planned, decoded = _decoded_rows(ctx, sql)
    assert planned == decoded


def test_plan_query_runs_a_flagged_plan_in_process_with_the_reason(ctx: SessionContext) -> None:
    planned = plan_query(ctx, "SELECT count(*) AS n FROM t GROUP BY GROUPING SETS (())")
    assert planned.local_plan is not None and not planned.graph.stages
    assert "plan codec changes this plan" in planned.local_reason
    assert _rows(ctx, planned.local_plan) == ["{'n': 12}"]  # the original plan, not the decoded one
    fine = plan_query(ctx, "SELECT a, count(*) AS n FROM t GROUP BY a")
    assert fine.local_plan is None and fine.graph.stages


def test_a_plan_the_codec_cannot_decode_is_flagged(ctx: SessionContext) -> None:
    plan = ctx.sql("SELECT a, count(*) FROM t GROUP BY a").execution_plan()
    broken = plan.to_bytes()[:-3]
    problem = roundtrip_difference(ctx, broken, node_infos(plan))
    assert problem is not None and "cannot decode" in problem


def test_a_difference_in_partitions_or_lines_is_named(ctx: SessionContext) -> None:
    plan = ctx.sql("SELECT a, count(*) FROM t GROUP BY a").execution_plan()
    infos = node_infos(plan)
    more = [NodeInfo(i.partitions + 1, i.line, i.n_children) if n == 1 else i for n, i in enumerate(infos)]
    problem = roundtrip_difference(ctx, plan.to_bytes(), more)
    assert problem is not None and f"has {infos[1].partitions + 1} partitions" in problem
    other = [
        NodeInfo(i.partitions, i.line + " x", i.n_children) if n == 1 else i for n, i in enumerate(infos)
    ]
    problem = roundtrip_difference(ctx, plan.to_bytes(), other)
    assert problem is not None and infos[1].line.split(":")[0] in problem and "decodes as" in problem


def test_plans_with_python_functions_pass_the_round_trip() -> None:
    """A UDF / UDAF pickled again after decoding differs in the pickle's memo only: not a problem."""

    c = planning_context(2)
    c.from_pydict({"k": [1, 2, 1, 3], "v": [1, 2, 3, 4]}, name="t")
    plus, total = python_udfs()
    c.register_udf(plus)  # type: ignore[arg-type]
    c.register_udaf(total)  # type: ignore[arg-type]
    sql = "SELECT k, py_total(plus_one(v)) AS s FROM t GROUP BY k ORDER BY k"
    assert _problem(c, sql) is None
    assert plan_query(c, sql).local_plan is None


def test_only_pickled_python_functions_are_masked() -> None:
    """Two plans whose pickles differ (as after a round trip) compare equal; any other change shows."""

    def plan(pickle: bytes, name: bytes = b"plus_one") -> bytes:
        udf_node = protobuf.encode([protobuf.message(1, name), protobuf.message(3, b"DFPYUDF\x01" + pickle)])
        return protobuf.encode([protobuf.message(2, protobuf.encode([protobuf.message(16, udf_node)]))])

    mask = codec._without_python_functions
    assert mask(plan(b"memo-a")) == mask(plan(b"memo-b, longer"))
    assert mask(plan(b"memo-a")) != mask(plan(b"memo-a", b"plus_two"))
    text = b"\xffDFPYUDF not a message"
    assert mask(text) == text


# ----------------------------------------------------------------------------------- what is normalised
@pytest.fixture(scope="module")
def sorted_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("codec")
    table = pa.table({"k": list(range(1000)), "v": [i % 7 if i % 3 else None for i in range(1000)]})
    pq.write_table(table, base / "s.parquet", row_group_size=100)
    yield base / "s.parquet"
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "sql", ["SELECT k FROM s ORDER BY k DESC LIMIT 5", "SELECT k, v FROM s ORDER BY v LIMIT 3"]
)
def test_parquet_read_order_hints_are_not_a_difference(sorted_file: Path, sql: str) -> None:
    ctx = planning_context(2)
    ctx.register_parquet("s", str(sorted_file), file_sort_order=[[col("k").sort(ascending=True)]])
    plan = ctx.sql(sql).execution_plan()
    decoded = ExecutionPlan.from_bytes(ctx, plan.to_bytes())
    assert "sort_order_for_reorder=[" in plan.display_indent()  # the hint the codec drops
    assert "sort_order_for_reorder" not in decoded.display_indent()
    assert codec_problem(ctx, plan.to_bytes(), node_infos(plan)) is None
    assert _rows(ctx, plan) == _rows(ctx, decoded)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT k, 0 AS x FROM t UNION ALL SELECT k, v FROM t",
        "SELECT k, v AS x FROM t UNION ALL SELECT k, 0 FROM t",
        "SELECT k, 0 AS x FROM t UNION ALL SELECT k, v FROM t UNION ALL SELECT 1, NULL",
    ],
)
def test_the_decoders_casts_over_union_inputs_are_not_a_difference(ctx: SessionContext, sql: str) -> None:
    plan = ctx.sql(sql).execution_plan()
    decoded = ExecutionPlan.from_bytes(ctx, plan.to_bytes())
    assert plan.display_indent() != decoded.display_indent()  # the decoder adds projections
    assert codec_problem(ctx, plan.to_bytes(), node_infos(plan)) is None
    assert _rows(ctx, plan) == _rows(ctx, decoded)


def test_read_order_hints_are_cut_from_scan_lines_only() -> None:
    line = (
        "DataSourceExec: file_groups={1 group: [[s.parquet]]}, projection=[k], file_type=parquet, "
        "predicate=DynamicFilter [ empty ], sort_order_for_reorder=[CAST(k@0 AS Int32) DESC, "
        "make_array([1, 2])@1 ASC], reverse_row_groups=true, dynamic_rg_pruning=eligible"
    )
    assert codec._normal_line(line) == (
        "DataSourceExec: file_groups={1 group: [[s.parquet]]}, projection=[k], file_type=parquet, "
        "predicate=DynamicFilter [ empty ], dynamic_rg_pruning=eligible"
    )
    other = "ProjectionExec: expr=[k@0 as sort_order_for_reorder=[x]]"
    assert codec._normal_line(other) == other


@pytest.mark.parametrize(
    ("line", "coercion"),
    [
        ("ProjectionExec: expr=[k@0 as k, CAST(x@1 AS Int64) as x]", True),
        ("ProjectionExec: expr=[a@0 as a, CAST(b@1 AS Decimal128(22, 2)) as b, c@2 as c]", True),
        ("ProjectionExec: expr=[sum(t.v)@0 as sum(t.v)]", True),
        ("ProjectionExec: expr=[k@1 as k, x@0 as x]", False),  # reorders
        ("ProjectionExec: expr=[k@0 as j]", False),  # renames
        ("ProjectionExec: expr=[k@0 + 1 as k]", False),  # computes
        ("ProjectionExec: expr=[CAST(k@0 AS Int64) + 1 as k]", False),
        ("ProjectionExec: expr=[k@0 as k, 0 as x]", False),
        ("ProjectionExec: expr=[]", False),
    ],
)
def test_union_coercion_shape(line: str, coercion: bool) -> None:
    scan = PlanNode("empty", 3, [], [], [])
    assert codec._is_union_coercion(PlanNode("projection", 4, [], [], [scan], line=line)) is coercion


# ----------------------------------------------------------------------------------- no false alarms
@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_no_tpch_query_is_flagged(tpch_data: Path, partitions: int) -> None:
    ctx = planning_context(partitions)
    tpch.register_all(ctx, tpch_data)
    flagged = {name: _problem(ctx, sql) for name, sql in tpch.queries().items()}
    assert {name: p for name, p in flagged.items() if p} == {}


@pytest.mark.data
@pytest.mark.tpcds
@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_no_tpcds_query_is_flagged(tpcds_small: Path, partitions: int) -> None:
    # q05 and q77 need the union normalisation: UNION inputs whose fields differ in nullability
    ctx = planning_context(partitions)
    tpcds.register_all(ctx, tpcds_small)
    flagged = {name: _problem(ctx, sql) for name, sql in tpcds.queries().items()}
    assert {name: p for name, p in flagged.items() if p} == {}
