"""The plan walker knows every field DataFusion 55 writes; every task slice is a plan DataFusion reads.

Over the plans the tests make (TPC-H, TPC-DS, operator forms, a fixed seed of fuzzed queries) at 1, 2
and 4 partitions:

- every node's every protobuf field, and every file scan's ``base_conf`` field, is in the walker's
  table (``planner/fields.py``): a field DataFusion adds is a test failure here; at run time the
  submitter runs such a plan uncut, in-process, and a worker refuses it with a one-line error: a
  field is never carried blindly through slicing;
- every task slice of every stage, with its input markers spliced to Arrow scans as a worker does,
  decodes with ``ExecutionPlan.from_bytes`` and encodes again to the same bytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext

from ematix_flow import protobuf
from ematix_flow.coordinator_lib.codec import slice_difference
from ematix_flow.coordinator_lib.planning import plan_query
from ematix_flow.coordinator_lib.stage_schemas import schemas_at
from ematix_flow.engine.exchange import ScanTemplates, unique_names
from ematix_flow.engine.settings import planning_context
from ematix_flow.errors import PlanningError, QueryError
from ematix_flow.planner import fields as field_table
from ematix_flow.planner.fields import KNOWN_FIELDS, SCAN_CONF_FIELDS
from ematix_flow.planner.nodes import FILE_SCANS, input_index, parse_tree
from ematix_flow.planner.slicing import plan_tasks
from ematix_flow.planner.splice import splice
from ematix_flow.workloads import tpcds, tpch
from tests.fuzz.queries import QueryGen
from tests.fuzz.session import query_seed, world_seed
from tests.fuzz.tables import make_world

#: Operator forms beyond TPC-H / TPC-DS: file formats, generators, joins of every kind, windows,
#: grouping sets, set operations, subqueries, limits, sinks.
FORMS = [
    "SELECT unnest(l) FROM t",
    "SELECT unnest(s) FROM t",
    "SELECT * FROM generate_series(1, 10)",
    "SELECT * FROM generate_series(DATE '2024-01-01', DATE '2024-02-01', INTERVAL '1 day')",
    "SELECT * FROM range(5)",
    "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(x, y)",
    "SELECT a, count(*) FROM c GROUP BY a",
    "SELECT * FROM j WHERE a > 1",
    "SELECT * FROM ar WHERE a > 1",
    "SELECT * FROM m WHERE a > 1",
    "SELECT t.a FROM t JOIN c ON t.a = c.a ORDER BY 1",
    "SELECT t.a FROM t LEFT JOIN c ON t.a < c.a",
    "SELECT t.a FROM t CROSS JOIN c",
    "SELECT a FROM t UNION SELECT a FROM c",
    "SELECT a FROM t EXCEPT ALL SELECT a FROM c",
    "SELECT a, sum(a) OVER (ORDER BY a ROWS 1 PRECEDING), "
    "first_value(a) IGNORE NULLS OVER (PARTITION BY b ORDER BY a) FROM t",
    "SELECT a, rank() OVER (PARTITION BY b ORDER BY a RANGE BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t",
    "SELECT a FROM t WHERE a > (SELECT avg(a) FROM c)",
    "SELECT sum(a + (SELECT max(a) FROM c)) FROM t",
    "SELECT a FROM t WHERE a > (SELECT a FROM c)",
    "SELECT a FROM t WHERE a NOT IN (SELECT a FROM c) AND EXISTS (SELECT 1 FROM c WHERE c.a = t.a)",
    "SELECT DISTINCT b FROM t ORDER BY b DESC NULLS FIRST LIMIT 3 OFFSET 1",
    "SELECT b, max(a) FROM t GROUP BY b ORDER BY max(a) DESC LIMIT 2",
    "SELECT array_agg(a ORDER BY a), string_agg(b, ','), count(DISTINCT b) FROM t",
    "SELECT sum(a) FILTER (WHERE a > 1) FROM t GROUP BY GROUPING SETS ((a), (b), ())",
    "SELECT named_struct('x', a)['x'], s['u'], l[1] FROM t WHERE b LIKE 'x%' AND a IN (1, 2)",
]
FUZZ_SEED, FUZZ_WORLDS, FUZZ_QUERIES = 7, 2, 25


@pytest.fixture(scope="module")
def forms_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small tables in Parquet, CSV, JSON and Arrow IPC."""
    base = tmp_path_factory.mktemp("forms")
    t = pa.table(
        {
            "a": [1, 2, None, 4],
            "b": ["x", "y", "z", None],
            "l": [[1, 2], [3], None, []],
            "s": [{"u": 1}, None, {"u": 3}, {"u": 4}],
        }
    )
    pq.write_table(t, base / "t.parquet")
    pacsv.write_csv(t.drop(["l", "s"]), base / "t.csv")
    (base / "t.json").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')
    with pa.ipc.new_file(str(base / "t.arrow"), t.schema) as writer:
        writer.write_table(t)
    return base


@pytest.fixture(scope="module")
def templates() -> Iterator[ScanTemplates]:
    with tempfile.TemporaryDirectory() as scratch:
        yield ScanTemplates(Path(scratch))


def check_fields_known(plan_bytes: bytes) -> None:
    """Every field of every node (and every file scan's base_conf) is in the walker's table."""
    for node in parse_tree(plan_bytes).walk():  # parse_tree refuses an unknown one: say which, here
        known = KNOWN_FIELDS[node.kind]
        assert all(known.get(f.number) == f.wire_type for f in node.fields), node.kind
        conf = protobuf.first(node.fields, 1) if node.kind in FILE_SCANS else None
        if conf is not None:
            assert all(SCAN_CONF_FIELDS.get(f.number) == f.wire_type for f in protobuf.parse(conf.data))


def check_plan(ctx: SessionContext, sql: str, templates: ScanTemplates) -> int:
    """The plan's fields are known, and every task slice, spliced as a worker splices it, decodes
    and encodes again to the same plan. Returns the number of slices."""
    planned = plan_query(ctx, sql)
    if planned.plan_bytes:
        check_fields_known(planned.plan_bytes)
    if planned.local_plan is not None:
        return 0
    sites = [planned.graph[i.stage].site for stage in planned.graph.stages for i in stage.inputs]
    schemas = schemas_at(planned.planned_in or ctx, sql, planned.lines, sites)
    count = 0
    for stage in planned.graph.stages:
        for _, task in plan_tasks(stage, 3):
            scans: dict[int, bytes] = {}
            for node in parse_tree(task.plan).walk():
                if node.kind != "input":
                    continue
                index = input_index(node)
                source = stage.inputs[index]
                schema = schemas[planned.graph[source.stage].site]
                disk = pa.schema(
                    [f.with_name(n) for f, n in zip(schema, unique_names(schema.names), strict=True)]
                )
                parts = task.inputs.get(index)
                groups = [[("/nonexistent/part.arrow", 1024)] for _ in (parts or range(max(1, source.width)))]
                scans[index] = templates.scan(disk, groups, list(schema.names))
            spliced = splice(task.plan, scans)
            check_fields_known(spliced)
            difference = slice_difference(planned.planned_in or ctx, spliced)
            assert difference is None, f"stage {stage.id} of {sql[:80]}: {difference}"
            count += 1
    return count


def check_all(ctx: SessionContext, queries: list[str], templates: ScanTemplates) -> None:
    """``check_plan`` for every statement of every query."""
    slices = 0
    for sql in queries:
        for statement in (s for s in sql.split(";") if s.strip()):
            slices += check_plan(ctx, statement, templates)
    assert slices > len(queries), "the queries were cut into stages"


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_tpch_plans_and_slices(tpch_data: Path, templates: ScanTemplates, partitions: int) -> None:
    ctx = planning_context(partitions)
    tpch.register_all(ctx, tpch_data)
    check_all(ctx, list(tpch.queries().values()), templates)


@pytest.mark.tpcds
@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_tpcds_plans_and_slices(tpcds_small: Path, templates: ScanTemplates, partitions: int) -> None:
    ctx = planning_context(partitions)
    tpcds.register_all(ctx, tpcds_small)
    check_all(ctx, list(tpcds.queries().values()), templates)


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_operator_forms_plans_and_slices(forms_dir: Path, templates: ScanTemplates, partitions: int) -> None:
    ctx = planning_context(partitions)
    ctx.register_parquet("t", str(forms_dir / "t.parquet"))
    ctx.register_csv("c", str(forms_dir / "t.csv"))
    ctx.register_json("j", str(forms_dir / "t.json"))
    ctx.register_arrow("ar", str(forms_dir / "t.arrow"))
    ctx.register_record_batches("m", [pq.read_table(forms_dir / "t.parquet").to_batches()])
    check_all(ctx, FORMS, templates)
    sink = f"COPY (SELECT a, b FROM t) TO '{forms_dir}/out/' STORED AS PARQUET PARTITIONED BY (b)"
    check_fields_known(ctx.sql(sink).execution_plan().to_bytes())


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_fuzzed_plans_and_slices(tmp_path: Path, templates: ScanTemplates, partitions: int) -> None:
    ctx = planning_context(partitions)
    planned = 0
    for w in range(FUZZ_WORLDS):
        world = make_world(world_seed(FUZZ_SEED, w))
        for name, path in world.write(tmp_path / f"w{w}").items():
            if ctx.table_exist(name):
                ctx.deregister_table(name)
            ctx.register_parquet(name, str(path))
        for i in range(FUZZ_QUERIES):
            sql = QueryGen(world, query_seed(FUZZ_SEED, w, i), frozenset()).query().sql
            try:
                planned += check_plan(ctx, sql, templates) >= 0
            except QueryError:  # DataFusion refuses some generated queries: nothing to walk
                continue
    assert planned > FUZZ_WORLDS * FUZZ_QUERIES // 2


# ------------------------------------------------------------------------------ unknown is refused
def _node(number: int, fields: list[protobuf.Field]) -> bytes:
    return protobuf.encode([protobuf.message(number, protobuf.encode(fields))])


def _top_fields(plan: bytes) -> tuple[int, list[protobuf.Field]]:
    (outer,) = protobuf.parse(plan)
    return outer.number, protobuf.parse(outer.data)


@pytest.mark.parametrize("installed", ["55.0.0", "56.0.0"])
def test_an_unknown_field_is_refused_naming_it_and_the_fix(
    forms_dir: Path, monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    monkeypatch.setattr(field_table, "version", lambda _: installed)
    fix = (
        "please report the query" if installed == field_table.VERIFIED_WITH else "install datafusion==55.0.0"
    )
    ctx = planning_context(2)
    ctx.register_parquet("t", str(forms_dir / "t.parquet"))
    plan = ctx.sql("SELECT a, count(*) FROM t GROUP BY a").execution_plan().to_bytes()
    parse_tree(plan)
    number, fields = _top_fields(plan)
    for extra in (protobuf.varint(13, 1), protobuf.message(40, b"\x0a\x00")):  # a number, a message
        with pytest.raises(PlanningError) as caught:
            parse_tree(_node(number, [*fields, extra]))
        message = str(caught.value)
        assert f"field #{extra.number}" in message and "unknown to the plan walker" in message
        assert fix in message and "\n" not in message
    retyped = [f for f in fields if f.number != 3] + [protobuf.varint(3, 7)]  # known number, other type
    with pytest.raises(PlanningError, match=r"field #3 \(varint\)"):
        parse_tree(_node(number, retyped))


def test_a_plan_with_an_unknown_field_runs_uncut_on_the_submitter(
    forms_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = planning_context(2)
    ctx.register_parquet("t", str(forms_dir / "t.parquet"))
    sql = "SELECT b, count(*) AS n FROM t GROUP BY b ORDER BY b"
    monkeypatch.setitem(KNOWN_FIELDS, "aggregate", {})  # as if DataFusion wrote a field we lack
    planned = plan_query(ctx, sql)
    assert planned.local_plan is not None and not planned.graph.stages
    assert "plan walker cannot cut it safely" in planned.local_reason
    assert "plan node aggregate carries protobuf field" in planned.local_reason


def test_an_unknown_node_kind_is_refused() -> None:
    with pytest.raises(PlanningError, match="unknown DataFusion plan node #77"):
        parse_tree(protobuf.encode([protobuf.message(77, b"")]))


def test_a_scan_conf_field_unknown_to_slicing_is_refused(forms_dir: Path) -> None:
    ctx = planning_context(1)
    ctx.register_parquet("t", str(forms_dir / "t.parquet"))
    plan = parse_tree(ctx.sql("SELECT a FROM t").execution_plan().to_bytes())
    scan = next(n for n in plan.walk() if n.kind == "parquet_scan")
    conf = protobuf.first(scan.fields, 1)
    assert conf is not None
    odd_conf = protobuf.message(1, conf.data + protobuf.encode([protobuf.varint(30, 1)]))
    with pytest.raises(PlanningError, match="parquet_scan base_conf carries protobuf field #30"):
        parse_tree(_node(scan.number, [odd_conf if f.number == 1 else f for f in scan.fields]))
