"""The pure planner: wire codec, plan trees, stage graphs and task slices (no processes, no network)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from datafusion import SessionContext
from datafusion.plan import ExecutionPlan

from ematix_flow import protobuf
from ematix_flow.coordinator_lib.planning import node_infos
from ematix_flow.engine.settings import execution_context, planning_context
from ematix_flow.errors import FlowError, PlanningError, ProtocolError
from ematix_flow.planner.nodes import FILE_SCANS, GATHERS, PlanNode, input_index, parse_tree
from ematix_flow.planner.scans import FileSlice, file_groups, scan_bytes
from ematix_flow.planner.slicing import plan_tasks, slice_stage, split
from ematix_flow.planner.stages import Stage, StageGraph, build_graph, is_hash_repartition
from ematix_flow.workloads import tpch

pytestmark = pytest.mark.timeout(120)

QUERIES = [f"q{n:02d}" for n in range(1, 23)]

#: Our node kind -> the names DataFusion displays for it (``ExecutionPlan.display()`` up to ':' / ',').
DISPLAY_NAMES: dict[str, set[str]] = {
    "aggregate": {"AggregateExec"},
    "coalesce_batches": {"CoalesceBatchesExec"},
    "coalesce_partitions": {"CoalescePartitionsExec"},
    "cross_join": {"CrossJoinExec"},
    "csv_scan": {"DataSourceExec"},
    "empty": {"EmptyExec"},
    "filter": {"FilterExec"},
    "generate_series": {"LazyMemoryExec"},
    "global_limit": {"GlobalLimitExec"},
    "hash_join": {"HashJoinExec"},
    "json_scan": {"DataSourceExec"},
    "local_limit": {"LocalLimitExec"},
    "memory_scan": {"DataSourceExec"},
    "nested_loop_join": {"NestedLoopJoinExec"},
    "parquet_scan": {"DataSourceExec"},
    "placeholder_row": {"PlaceholderRowExec"},
    "projection": {"ProjectionExec"},
    "repartition": {"RepartitionExec"},
    "sort": {"SortExec"},
    "sort_preserving_merge": {"SortPreservingMergeExec"},
    "union": {"UnionExec"},
    "unnest": {"UnnestExec"},
    "window": {"BoundedWindowAggExec", "WindowAggExec"},
}

#: Plan shapes TPC-H does not have, over small CSV / JSON files and TPC-H tables.
EXTRA_SHAPES = {
    "no_table": "SELECT 1",
    "values": "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) t(x, y)",
    "limit": "SELECT n_name FROM nation ORDER BY n_name LIMIT 3 OFFSET 2",
    "union": "SELECT n_name FROM nation UNION ALL SELECT r_name FROM region",
    "window": "SELECT o_custkey, row_number() OVER (PARTITION BY o_custkey ORDER BY o_orderdate) FROM orders",
    "global_window": "SELECT sum(o_totalprice) OVER () FROM orders",
    "cross_join": "SELECT * FROM nation CROSS JOIN region",
    "csv": "SELECT b, sum(a) FROM small_csv GROUP BY b",
    "json": "SELECT b, sum(a) FROM small_json GROUP BY b",
    "unnest": "SELECT unnest([1, 2, 3])",
    "series": "SELECT * FROM generate_series(1, 10)",
    "empty": "SELECT * FROM nation WHERE false",
}


@pytest.fixture(scope="module")
def ctx(planning_ctx: SessionContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionContext]:
    """The session's planning context, plus two tiny text tables."""
    base = tmp_path_factory.mktemp("text-tables")
    (base / "t.csv").write_text("a,b\n1,x\n2,y\n3,x\n")
    (base / "t.json").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')
    planning_ctx.register_csv("small_csv", str(base / "t.csv"))
    planning_ctx.register_json("small_json", str(base / "t.json"))
    yield planning_ctx
    for name in ("small_csv", "small_json"):
        planning_ctx.deregister_table(name)
    shutil.rmtree(base, ignore_errors=True)


def _physical(ctx: SessionContext, sql: str) -> ExecutionPlan:
    return ctx.sql(sql).execution_plan()


def _api_walk(plan: ExecutionPlan) -> list[ExecutionPlan]:
    out = [plan]
    for c in plan.children():
        out += _api_walk(c)
    return out


def _display_name(plan: ExecutionPlan) -> str:
    line = plan.display().strip().splitlines()[0]
    return line.split(":")[0].split(",")[0].strip()


def _graph(ctx: SessionContext, sql: str) -> tuple[StageGraph, int]:
    plan = _physical(ctx, sql)
    return build_graph(plan.to_bytes(), node_infos(plan)), len(_api_walk(plan))


# ----------------------------------------------------------------------------------- wire codec
@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        127,
        128,
        255,
        300,
        16_383,
        16_384,
        2**31 - 1,
        2**32,
        2**35,
        2**56 - 1,
        2**63 - 1,
        2**63,
        2**64 - 1,
    ],
)
def test_varint_round_trip(value: int) -> None:
    encoded = protobuf.encode_varint(value)
    assert len(encoded) == max(1, (value.bit_length() + 6) // 7)
    assert all(b & 0x80 for b in encoded[:-1]) and not encoded[-1] & 0x80
    (field,) = protobuf.parse(protobuf.encode([protobuf.varint(1, value)]))
    assert (field.number, field.wire_type, field.int) == (1, protobuf.VARINT, value)


@pytest.mark.parametrize(
    ("value", "encoded"), [(0, b"\x00"), (1, b"\x01"), (150, b"\x96\x01"), (300, b"\xac\x02")]
)
def test_varint_known_encodings(value: int, encoded: bytes) -> None:
    assert protobuf.encode_varint(value) == encoded


def test_negative_varint_is_ten_bytes_twos_complement() -> None:
    encoded = protobuf.encode_varint(-1)
    assert encoded == b"\xff" * 9 + b"\x01"
    (field,) = protobuf.parse(b"\x08" + encoded)
    assert field.int == 2**64 - 1


def test_varint_longer_than_ten_bytes_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="too long"):
        protobuf.parse(b"\x08" + b"\xff" * 10 + b"\x01")


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # key, no value
        b"\x08\x80",  # varint with its continuation bit set, then nothing
        b"\x80",  # unfinished key
        b"\x0a\x05abc",  # LEN says 5, 3 follow
        b"\x09\x01\x02\x03",  # FIXED64 with 3 bytes
        b"\x0d\x01\x02",  # FIXED32 with 2 bytes
    ],
)
def test_truncated_wire_data_is_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        protobuf.parse(data)


@pytest.mark.parametrize(
    ("data", "message"), [(b"\x0b", "wire type 3"), (b"\x0c", "wire type 4"), (b"\x02\x00", "field number 0")]
)
def test_unsupported_wire_data_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protobuf.parse(data)


def test_parse_encode_round_trip_keeps_order_and_every_wire_type() -> None:
    fields = [
        protobuf.varint(1, 7),
        protobuf.message(2, b"hello"),
        protobuf.Field(3, protobuf.FIXED64, b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        protobuf.Field(4, protobuf.FIXED32, b"\xaa\xbb\xcc\xdd"),
        protobuf.message(2, b""),  # repeated, empty
        protobuf.varint(536_870_911, 2**64 - 1),  # the largest field number
        protobuf.message(1000, protobuf.encode([protobuf.varint(1, 3)])),
    ]
    data = protobuf.encode(fields)
    assert protobuf.parse(data) == fields
    assert protobuf.encode(protobuf.parse(data)) == data
    assert protobuf.parse(b"") == []
    assert protobuf.first(fields, 2) == protobuf.message(2, b"hello")
    assert protobuf.first(fields, 99) is None


def test_field_accessors_check_the_wire_type() -> None:
    with pytest.raises(ProtocolError):
        _ = protobuf.varint(1, 5).data
    with pytest.raises(ProtocolError):
        _ = protobuf.message(1, b"x").int


# ----------------------------------------------------------------------------------- plan trees
@pytest.mark.parametrize("name", QUERIES)
def test_tpch_plan_reencodes_byte_exactly(ctx: SessionContext, name: str) -> None:
    data = _physical(ctx, tpch.query(int(name[1:]))).to_bytes()
    tree = parse_tree(data)
    assert tree.to_bytes() == data
    for node in tree.walk():  # every subtree on its own, too
        assert parse_tree(node.to_bytes()).to_bytes() == node.to_bytes()


def _check_walk(plan: ExecutionPlan) -> set[str]:
    tree = parse_tree(plan.to_bytes())
    wire_nodes = list(tree.walk())
    api_nodes = _api_walk(plan)
    assert len(wire_nodes) == len(api_nodes)
    assert [len(n.children) for n in wire_nodes] == [len(n.children()) for n in api_nodes]
    for i, (w, a) in enumerate(zip(wire_nodes, api_nodes, strict=True)):
        assert w.kind in DISPLAY_NAMES, f"node {i}: no expected display name for kind {w.kind!r}"
        assert _display_name(a) in DISPLAY_NAMES[w.kind], f"node {i}: wire {w.kind!r} vs {a.display()[:80]}"
    return {n.kind for n in wire_nodes}


@pytest.mark.parametrize("name", QUERIES)
def test_tpch_wire_walk_matches_datafusion_children(ctx: SessionContext, name: str) -> None:
    kinds = _check_walk(_physical(ctx, tpch.query(int(name[1:]))))
    assert "parquet_scan" in kinds


@pytest.mark.parametrize("shape", sorted(EXTRA_SHAPES))
def test_other_plan_shapes_walk_like_datafusion(ctx: SessionContext, shape: str) -> None:
    plan = _physical(ctx, EXTRA_SHAPES[shape])
    _check_walk(plan)
    assert parse_tree(plan.to_bytes()).to_bytes() == plan.to_bytes()


def test_unknown_node_kind_is_a_planning_error() -> None:
    with pytest.raises(PlanningError, match="#99"):
        parse_tree(protobuf.encode([protobuf.message(99, b"")]))
    # ... also below a known node: a projection (4) whose input (field 1) is of kind 99
    inner = protobuf.encode([protobuf.message(99, protobuf.encode([protobuf.varint(1, 1)]))])
    outer = protobuf.encode([protobuf.message(4, protobuf.encode([protobuf.message(1, inner)]))])
    with pytest.raises(PlanningError, match="#99"):
        parse_tree(outer)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        protobuf.encode([protobuf.varint(4, 1)]),
        protobuf.encode([protobuf.message(4, b""), protobuf.message(4, b"")]),
    ],
)
def test_not_a_plan_node_is_a_planning_error(data: bytes) -> None:
    with pytest.raises(PlanningError):
        parse_tree(data)


def test_truncated_plan_is_rejected(ctx: SessionContext) -> None:
    data = _physical(ctx, tpch.query(5)).to_bytes()
    cuts = sorted({1, 2, 3, len(data) // 2, len(data) - 1, *range(5, len(data), max(1, len(data) // 40))})
    for cut in cuts:
        with pytest.raises((ProtocolError, PlanningError)):
            parse_tree(data[:cut])


# ----------------------------------------------------------------------------------- stage graphs
def _markers(plan: PlanNode) -> list[int]:
    return [input_index(n) for n in plan.walk() if n.kind == "input"]


@pytest.mark.parametrize("name", QUERIES)
def test_tpch_stage_graph_is_well_formed(ctx: SessionContext, name: str) -> None:
    graph, total_nodes = _graph(ctx, tpch.query(int(name[1:])))
    stages = graph.stages
    assert [s.id for s in stages] == list(range(len(stages)))
    assert [s.kind for s in stages].count("root") == 1 and graph.root is stages[-1]
    assert graph.root.kind == "root"
    assert len(stages) >= 2, "every TPC-H query has at least one exchange"
    for s in stages:
        assert [i.index for i in s.inputs] == list(range(len(s.inputs)))
        for inp in s.inputs:
            assert inp.stage < s.id, f"stage {s.id} reads stage {inp.stage}, which is not earlier"
            assert stages[inp.stage].kind == inp.mode
        # every input marker is one of this stage's own inputs, each exactly once
        assert sorted(_markers(s.plan)) == list(range(len(s.inputs)))
        if s.kind != "root":
            assert graph.consumers(s.id) == [c.id for c in stages if any(i.stage == s.id for i in c.inputs)]
            assert len(graph.consumers(s.id)) == 1
        if s.kind == "shuffle":
            assert is_hash_repartition(s.plan)
        below = list(s.plan.walk())[1:] if s.kind == "shuffle" else list(s.plan.walk())
        assert not any(is_hash_repartition(n) for n in below), f"stage {s.id} keeps a shuffle inside"
        for n in s.plan.walk():
            if n.kind in GATHERS:
                assert [c.kind for c in n.children] == ["input"], "a gather was not cut"
    # every node of the plan lands in exactly one stage
    assert sum(1 for s in stages for n in s.plan.walk() if n.kind != "input") == total_nodes


def _scans(plan: PlanNode) -> list[PlanNode]:
    return [n for n in plan.walk() if n.kind in FILE_SCANS]


def _broadcast_flags(plan: PlanNode) -> list[bool]:
    """Per file scan (pre-order): does it feed a broadcast join's build side (read whole by every task)?"""
    flags: list[bool] = []

    def visit(node: PlanNode, broadcast: bool) -> None:
        if node.kind in FILE_SCANS:
            flags.append(broadcast)
        collect = node.kind in ("cross_join", "nested_loop_join") or (
            node.kind == "hash_join" and "mode=CollectLeft" in node.line
        )
        for i, c in enumerate(node.children):
            visit(c, broadcast or (collect and i == 0))

    visit(plan, False)
    return flags


@pytest.mark.parametrize("name", QUERIES)
def test_tpch_leaf_stage_slices_partition_the_file_groups(ctx: SessionContext, name: str) -> None:
    graph, _ = _graph(ctx, tpch.query(int(name[1:])))
    leaves = [s for s in graph.stages if not s.inputs and s.kind != "root"]
    assert leaves
    engine = execution_context()
    for stage in leaves:
        tasks = plan_tasks(stage, 3)
        assert len(tasks) == 3, f"stage {stage.id} did not split: {stage.single_task}"
        assert [p for p, _ in tasks] == split(stage.split_partitions, 3)
        originals = [file_groups(n) for n in _scans(stage.plan)]
        kept: list[list[list[FileSlice]]] = [[] for _ in originals]
        for parts, sl in tasks:
            scans = _scans(parse_tree(sl.plan))
            assert len(scans) == len(originals)
            for i, scan in enumerate(scans):
                kept[i] += file_groups(scan)
            # the slice decodes, and has one output partition per partition of its share
            decoded = ExecutionPlan.from_bytes(engine, sl.plan)
            want = stage.output_partitions if stage.kind == "shuffle" else len(parts or [])
            assert decoded.partition_count == want
        flags = _broadcast_flags(stage.plan)
        assert not all(flags), f"stage {stage.id}: no scan is divided among the tasks"
        for i, (orig, got, broadcast) in enumerate(zip(originals, kept, flags, strict=True)):
            if broadcast:  # a broadcast build side: every task reads all of it
                assert got == orig * len(tasks), f"scan {i}: a broadcast build side was cut"
                continue
            assert sorted(map(repr, got)) == sorted(map(repr, orig)), f"scan {i}: groups lost or repeated"
            files = [f for g in got for f in g]
            assert len(files) == len(set(files)), f"scan {i}: a byte range is read twice"
        divided = sum(scan_bytes(n) for n, b in zip(_scans(stage.plan), flags, strict=True) if not b)
        whole = sum(scan_bytes(n) for n, b in zip(_scans(stage.plan), flags, strict=True) if b)
        assert sum(sl.scan_bytes for _, sl in tasks) == divided + whole * len(tasks)
        assert slice_stage(stage, None).scan_bytes == divided + whole


def _check_slices(stage: Stage, tasks: int) -> None:
    slices = plan_tasks(stage, tasks)
    for _, sl in slices:
        tree = parse_tree(sl.plan)
        nodes = list(tree.walk())
        below = nodes[1:] if stage.kind == "shuffle" else nodes
        assert not any(is_hash_repartition(n) for n in below), (
            f"stage {stage.id}: hash repartition in a slice"
        )
        if stage.kind == "shuffle":
            assert is_hash_repartition(tree)
        assert sorted(_markers(tree)) == sorted(sl.inputs)
    # each input is read whole by every task, or its partitions are divided among the tasks exactly
    for inp in stage.inputs:
        needs = [sl.inputs.get(inp.index, "absent") for _, sl in slices]
        if all(n is None for n in needs):
            continue
        got = sorted(p for n in needs for p in (n if isinstance(n, list) else range(inp.width)))
        assert got == list(range(inp.width)), f"stage {stage.id} input {inp.index}: {needs}"


@pytest.mark.parametrize("name", QUERIES)
@pytest.mark.parametrize("tasks", [2, 3])
def test_tpch_slices_hold_no_shuffle_below_the_top(ctx: SessionContext, name: str, tasks: int) -> None:
    graph, _ = _graph(ctx, tpch.query(int(name[1:])))
    for stage in graph.stages:
        _check_slices(stage, tasks if stage.kind != "root" else 1)


def test_union_slices_keep_only_owned_branches(ctx: SessionContext) -> None:
    sql = (
        "SELECT sum(length(x)) FROM (SELECT n_name x FROM nation UNION ALL SELECT r_name x FROM region "
        "UNION ALL SELECT s_name x FROM supplier)"
    )
    graph, _ = _graph(ctx, sql)
    stage = next(s for s in graph.stages if any(n.kind == "union" for n in s.plan.walk()))
    union = next(n for n in stage.plan.walk() if n.kind == "union")
    assert len(union.children) == 3
    per_task = []
    for parts, sl in plan_tasks(stage, stage.split_partitions):
        nodes = list(parse_tree(sl.plan).walk())
        # one partition: one branch, which stands for the union (as DataFusion decodes a 1-input union)
        assert parts is not None and not any(n.kind == "union" for n in nodes)
        per_task.append([n for n in nodes if n.kind == "parquet_scan"])
        assert len(per_task[-1]) == 1
    assert len(per_task) == stage.split_partitions


# ----------------------------------------------------------------------------------- split
@pytest.mark.parametrize(
    ("partitions", "tasks", "expected"),
    [
        (4, 3, [[0], [1], [2, 3]]),
        (7, 3, [[0, 1], [2, 3], [4, 5, 6]]),
        (2, 5, [[0], [1]]),
        (5, 1, [[0, 1, 2, 3, 4]]),
        (5, 0, [[0, 1, 2, 3, 4]]),
        (1, 4, [[0]]),
    ],
)
def test_split_known_shares(partitions: int, tasks: int, expected: list[list[int]]) -> None:
    assert split(partitions, tasks) == expected


def test_split_shares_are_contiguous_near_equal_and_cover_everything() -> None:
    for partitions in range(1, 33):
        for tasks in range(0, 40):
            shares = split(partitions, tasks)
            assert len(shares) == max(1, min(tasks, partitions))
            assert [p for s in shares for p in s] == list(range(partitions))
            sizes = [len(s) for s in shares]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_planning_context_partition_count_sets_split_width(tpch_data: Path) -> None:
    ctx = planning_context(6)
    tpch.register_all(ctx, tpch_data)
    graph, _ = _graph(ctx, tpch.query(3))
    for stage in graph.stages[:-1]:
        assert stage.split_partitions == 6
        if stage.kind == "shuffle":
            assert stage.output_partitions == 6


def test_errors_are_flow_errors() -> None:
    assert issubclass(PlanningError, FlowError) and issubclass(ProtocolError, FlowError)
