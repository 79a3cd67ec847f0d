"""Output schemas from EXPLAIN text: the submitter's fallback when a whole stage produced no rows."""

from __future__ import annotations

import pyarrow as pa
import pytest
from datafusion import SessionContext
from datafusion.plan import ExecutionPlan

from ematix_flow.coordinator_lib.planning import plan_query
from ematix_flow.coordinator_lib.schemas import parse_schema
from ematix_flow.coordinator_lib.stage_schemas import Node, explain_schemas, reconciled, schemas_at
from ematix_flow.engine.run import stream_partitions
from ematix_flow.engine.settings import planning_context
from ematix_flow.errors import PlanningError
from ematix_flow.workloads import tpch

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", pa.schema([])),
        ("a:Int64", pa.schema([pa.field("a", pa.int64(), False)])),
        ("a:Int64;N", pa.schema([pa.field("a", pa.int64(), True)])),
        (
            "a:Int32, b:Utf8;N, c:Boolean, d:Float64;N, e:Date32, f:Utf8View, g:LargeUtf8, h:Null;N",
            pa.schema(
                [
                    pa.field("a", pa.int32(), False),
                    pa.field("b", pa.string(), True),
                    pa.field("c", pa.bool_(), False),
                    pa.field("d", pa.float64(), True),
                    pa.field("e", pa.date32(), False),
                    pa.field("f", pa.string_view(), False),
                    pa.field("g", pa.large_string(), False),
                    pa.field("h", pa.null(), True),
                ]
            ),
        ),
        (
            "l_quantity:Decimal128(15, 2), revenue:Decimal128(38, 4);N, big:Decimal256(76, 10)",
            pa.schema(
                [
                    pa.field("l_quantity", pa.decimal128(15, 2), False),
                    pa.field("revenue", pa.decimal128(38, 4), True),
                    pa.field("big", pa.decimal256(76, 10), False),
                ]
            ),
        ),
        (
            "l:List(Int64), m:List(Utf8);N, n:LargeList(Float64), o:List(List(Decimal128(10, 2)))",
            pa.schema(
                [
                    pa.field("l", pa.list_(pa.int64()), False),
                    pa.field("m", pa.list_(pa.string()), True),
                    pa.field("n", pa.large_list(pa.float64()), False),
                    pa.field("o", pa.list_(pa.list_(pa.decimal128(10, 2))), False),
                ]
            ),
        ),
        (  # names holding ', ' and ':' (DataFusion's own generated names do)
            'Utf8("a:b"):Utf8, Utf8("x, y"):Utf8;N, a, b:Int64:Int64, c:d, e:Float64;N',
            pa.schema(
                [
                    pa.field('Utf8("a:b")', pa.string(), False),
                    pa.field('Utf8("x, y")', pa.string(), True),
                    pa.field("a, b:Int64", pa.int64(), False),
                    pa.field("c:d, e", pa.float64(), True),
                ]
            ),
        ),
        (
            "sum(lineitem.l_extendedprice * Int64(1) - lineitem.l_discount):Decimal128(38, 4);N, "
            "coalesce(x, Int64(0)):Int64",
            pa.schema(
                [
                    pa.field(
                        "sum(lineitem.l_extendedprice * Int64(1) - lineitem.l_discount)",
                        pa.decimal128(38, 4),
                        True,
                    ),
                    pa.field("coalesce(x, Int64(0))", pa.int64(), False),
                ]
            ),
        ),
        ("ts:Timestamp(ns)", pa.schema([pa.field("ts", pa.timestamp("ns"), False)])),
        # DataFusion 55 prints units abbreviated and zones quoted (see test_explain_schema_matches_execution)
        ("ts:Timestamp(ms);N", pa.schema([pa.field("ts", pa.timestamp("ms"), True)])),
        ('ts:Timestamp(µs, "+01:00")', pa.schema([pa.field("ts", pa.timestamp("us", "+01:00"), False)])),
        ('ts:Timestamp(s, "UTC")', pa.schema([pa.field("ts", pa.timestamp("s", "UTC"), False)])),
    ],
)
def test_parse_schema(text: str, expected: pa.Schema) -> None:
    got = parse_schema(text)
    assert got.equals(expected), f"\n{got}\n!=\n{expected}"


@pytest.mark.parametrize(
    "text",
    [
        "no colon here",
        "a:NotAType",
        "a:Int64, b",
        # a type the parser does not know must fail, not be folded into the next field's name
        'a:RunEndEncoded("run_ends": Int32), b:Int64',
        "a:Decimal128(10, 2",
    ],
)
def test_unparseable_schema_text_is_a_planning_error(text: str) -> None:
    with pytest.raises(PlanningError):
        schema = parse_schema(text)
        pytest.fail(f"parsed {text!r} as {schema.names} {schema.types}")


#: Queries whose output types reach every branch of the parser, as DataFusion itself prints them.
TYPED_QUERIES = {
    "decimal": "SELECT CAST(1.5 AS DECIMAL(10, 2)) AS d, arrow_cast(1, 'Decimal256(40, 3)') AS e",
    "strings": "SELECT 'a:b', 'x, y', arrow_cast('a', 'Utf8View') AS v, arrow_cast('a', 'LargeUtf8') AS w",
    "lists": "SELECT [1, 2] AS l, make_array('a', NULL) AS m, arrow_cast([1], 'LargeList(Int64)') AS n",
    "nullable": "SELECT CASE WHEN random() > 2 THEN 1 END AS maybe, NULL AS nothing, DATE '2020-01-01' AS d",
    "timestamp_ns": "SELECT arrow_cast(1, 'Timestamp(Nanosecond, None)') AS ts",
    "timestamp_ms": "SELECT arrow_cast(1, 'Timestamp(Millisecond, None)') AS ts",
    "timestamp_us_tz": "SELECT arrow_cast(1, 'Timestamp(Microsecond, Some(\"+01:00\"))') AS ts",
    "time64": "SELECT arrow_cast(1, 'Time64(Microsecond)') AS t",
    "interval": "SELECT INTERVAL '1 day' AS i",
    "struct": "SELECT named_struct('a', 1) AS s, 2 AS after",
}


@pytest.mark.parametrize("case", sorted(TYPED_QUERIES))
def test_explain_schema_matches_execution(case: str) -> None:
    ctx = planning_context(2)
    sql = TYPED_QUERIES[case]
    actual = ctx.sql(sql).to_arrow_table().schema
    explained = explain_schemas(ctx, sql)[0]
    assert explained.equals(actual), f"\nEXPLAIN: {explained}\nran:     {actual}"


def _api_nodes(ctx: SessionContext, sql: str) -> list[ExecutionPlan]:
    """A freshly planned query's nodes, pre-order (each may run once)."""
    out: list[ExecutionPlan] = []

    def walk(node: ExecutionPlan) -> None:
        out.append(node)
        for c in node.children():
            walk(c)

    walk(ctx.sql(sql).execution_plan())
    return out


@pytest.mark.parametrize("number", [1, 3, 13, 18])
def test_explain_schemas_of_stage_outputs_match_execution(planning_ctx: SessionContext, number: int) -> None:
    sql = tpch.query(number)
    planned = plan_query(planning_ctx, sql)
    schemas = explain_schemas(planning_ctx, sql)
    assert len(schemas) == len(_api_nodes(planning_ctx, sql))
    for stage in planned.graph.stages:
        node = _api_nodes(planning_ctx, sql)[stage.site]
        batches = [b for b in stream_partitions(planning_ctx, node) if b.num_rows]
        assert batches, f"stage {stage.id} produced no rows: pick another query"
        assert schemas[stage.site].equals(batches[0].schema), (
            f"stage {stage.id} (site {stage.site}):\n"
            f"EXPLAIN: {schemas[stage.site]}\nran:     {batches[0].schema}"
        )
    # the root's schema is the query's
    assert schemas[0].names == planning_ctx.sql(sql).schema().names


def test_explain_schemas_leaves_show_schema_off(planning_ctx: SessionContext) -> None:
    explain_schemas(planning_ctx, "SELECT 1")
    rows = planning_ctx.sql("EXPLAIN SELECT 1").to_arrow_table().to_pylist()
    plan = next(r["plan"] for r in rows if r["plan_type"] == "physical_plan")
    assert "schema=[" not in plan


def test_schemas_are_taken_only_from_the_plan_that_ran(planning_ctx: SessionContext) -> None:
    sql = tpch.query(3)
    planned = plan_query(planning_ctx, sql)
    sites = [stage.site for stage in planned.graph.stages]
    got = schemas_at(planning_ctx, sql, planned.lines, sites)
    assert got == {site: explain_schemas(planning_ctx, sql)[site] for site in sites}
    leaf = planned.lines[-1]
    assert "projection=[" in leaf
    other = (*planned.lines[:-1], leaf.replace("projection=[", "projection=[other_column, "))  # a leaf
    with pytest.raises(PlanningError, match="EXPLAIN planned the query unlike the plan that ran"):
        schemas_at(planning_ctx, sql, other, [0])  # the root's subtree holds that leaf


def test_a_projection_explained_in_another_order_is_reordered_to_the_plan() -> None:
    """EXPLAIN may list the casts a projection adds for join keys in another order than the plan."""
    cast_a = "CAST(a@0 AS Decimal128(20, 0)) as CAST(a AS Decimal128(20, 0))"
    cast_b = "CAST(b@1 AS Int64) as CAST(b AS Int64)"
    scan = "DataSourceExec: file_groups={1 group: [[t.parquet]]}, projection=[a, b], file_type=parquet"
    fields = {
        "a": pa.field("a", pa.int32()),
        "ca": pa.field("CAST(a AS Decimal128(20, 0))", pa.decimal128(20, 0)),
        "cb": pa.field("CAST(b AS Int64)", pa.int64()),
    }
    explained = [
        Node(0, "CoalescePartitionsExec", pa.schema([fields["a"], fields["ca"], fields["cb"]])),
        Node(
            2,
            f"ProjectionExec: expr=[a@0 as a, {cast_a}, {cast_b}]",
            pa.schema([fields["a"], fields["ca"], fields["cb"]]),
        ),
        Node(4, scan, pa.schema([pa.field("a", pa.int32()), pa.field("b", pa.int32())])),
    ]
    ran = ["CoalescePartitionsExec", f"ProjectionExec: expr=[a@0 as a, {cast_b}, {cast_a}]", scan]
    want = pa.schema([fields["a"], fields["cb"], fields["ca"]])
    assert reconciled(explained, ran, 1) == want
    assert reconciled(explained, ran, 0) == want  # passed through
    assert reconciled(explained, [n.line for n in explained], 0) == explained[0].schema
    window = [Node(0, "BoundedWindowAggExec: wdw=[w1]", explained[0].schema), *explained[1:]]
    assert reconciled(window, ["BoundedWindowAggExec: wdw=[w2]", *ran[1:]], 0) is None  # not rebuilt
    narrower = [ran[0], f"ProjectionExec: expr=[a@0 as a, {cast_b}]", scan]
    assert reconciled(explained, narrower, 1) is None  # not the same columns: another plan


def test_a_hash_join_over_reordered_key_casts_keeps_its_output() -> None:
    a, b = pa.field("a", pa.int32()), pa.field("b", pa.int64())
    ca, cb = pa.field("CAST(a AS Int64)", pa.int64()), pa.field("CAST(b AS Int64)", pa.int64())
    casts = ["CAST(a@0 AS Int64) as CAST(a AS Int64)", "CAST(b@1 AS Int64) as CAST(b AS Int64)"]
    scan = "DataSourceExec: file_groups={1 group: [[t.parquet]]}, projection=[a, b], file_type=parquet"
    join = (
        "HashJoinExec: mode=CollectLeft, join_type=LeftSemi, on=[(CAST(a AS Int64)@{}, c@0)], "
        "projection=[a@0, b@1]"
    )
    explained = [
        Node(0, join.format(2), pa.schema([a, b])),
        Node(
            2, f"ProjectionExec: expr=[a@0 as a, b@1 as b, {casts[0]}, {casts[1]}]", pa.schema([a, b, ca, cb])
        ),
        Node(4, scan, pa.schema([a, b])),
        Node(2, scan.replace("[a, b]", "[c]"), pa.schema([pa.field("c", pa.int64())])),
    ]
    ran = [
        join.format(3),
        f"ProjectionExec: expr=[a@0 as a, b@1 as b, {casts[1]}, {casts[0]}]",
        scan,
        explained[3].line,
    ]
    assert reconciled(explained, ran, 1) == pa.schema([a, b, cb, ca])
    assert reconciled(explained, ran, 0) == pa.schema([a, b])
    unknown = [ran[0].replace("LeftSemi", "LeftMark").replace(", projection=[a@0, b@1]", ""), *ran[1:]]
    assert reconciled(explained, unknown, 0) is None  # a join type whose output it does not know
    # a ScalarSubqueryExec above it outputs its first input's columns
    sub = Node(2, "PlaceholderRowExec", pa.schema([]))
    wrapped = [Node(0, "ScalarSubqueryExec: subqueries=1", pa.schema([a, b]))]
    wrapped += [Node(n.depth + 2, n.line, n.schema) for n in explained] + [sub]
    assert reconciled(wrapped, [wrapped[0].line, *ran, sub.line], 0) == pa.schema([a, b])
    # a node shown alike over inputs that come out alike keeps EXPLAIN's schema (an aggregate here)
    aggregate = "AggregateExec: mode=Partial, gby=[a@0 as a], aggr=[]"
    over = [Node(0, aggregate, pa.schema([a]))] + [Node(n.depth + 2, n.line, n.schema) for n in explained]
    assert reconciled(over, [aggregate, *ran], 0) == pa.schema([a])
    assert reconciled(over, [aggregate, *unknown], 0) is None  # its input cannot be rebuilt


def test_windows_aggregates_and_unions_over_reordered_inputs_follow_them() -> None:
    a, b, w = pa.field("a", pa.int32()), pa.field("b", pa.int64()), pa.field("w", pa.uint64())
    scan = "DataSourceExec: file_groups={1 group: [[t.parquet]]}, projection=[a, b], file_type=parquet"

    def over(top: str, ran_top: str, top_schema: pa.Schema) -> tuple[list[Node], list[str]]:
        explained = [
            Node(0, top, top_schema),
            Node(2, "ProjectionExec: expr=[a@0 as a, b@1 as b]", pa.schema([a, b])),
            Node(4, scan, pa.schema([a, b])),
        ]
        return explained, [ran_top, "ProjectionExec: expr=[b@1 as b, a@0 as a]", scan]

    window = "BoundedWindowAggExec: wdw=[row_number() ORDER BY [a@{} ASC]: ..], mode=[Sorted]"
    nodes, ran = over(window.format(0), window.format(1), pa.schema([a, b, w]))
    assert reconciled(nodes, ran, 0) == pa.schema([b, a, w])
    aggregate = "AggregateExec: mode=Single, gby=[a@{} as a], aggr=[count(b)]"
    count = pa.field("count(b)", pa.int64())
    nodes, ran = over(aggregate.format(0), aggregate.format(1), pa.schema([a, count]))
    assert reconciled(nodes, ran, 0) == pa.schema([a, count])  # its own order
    nodes, ran = over(aggregate.format(0), aggregate.format(1).replace("count(b)", "sum(b)"), nodes[0].schema)
    assert reconciled(nodes, ran, 0) is None  # other expressions: another plan
    nodes, ran = over("UnionExec", "UnionExec", pa.schema([a, b]))
    assert reconciled(nodes, ran, 0) == pa.schema([b, a])
