"""``QueryState``'s decisions on small stage graphs: no processes, no network, no TPC-H data.

The graphs come from real plans over two tiny tables (four one-file Parquet partitions each) planned
in a DataFusion context of this process; every event (a task done, a peer gone) is synthetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext

from ematix_flow.coordinator_lib.planning import plan_query
from ematix_flow.coordinator_lib.state import Assignment, QueryState
from ematix_flow.engine.exchange import schema_bytes
from ematix_flow.engine.settings import planning_context
from ematix_flow.errors import PeerUnreachableError
from ematix_flow.planner.slicing import slice_stage
from ematix_flow.planner.stages import StageGraph
from ematix_flow.transport.messages import OutputRef, TaskResult

#: Stages 0 and 1 hash-partition t and u (independent), stage 2 joins them, stage 3 is the root.
JOIN = "SELECT t.k % 3 AS g, count(*) AS n FROM t JOIN u ON t.k = u.k GROUP BY 1"
#: Stage 0 scans and filters t (a gather: each task writes its own partitions), stage 1 is the root.
FILTER = "SELECT k FROM t WHERE v > 3"
SCHEMA = schema_bytes(pa.schema([("k", pa.int64())]))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> SessionContext:
    """A planning context (4 partitions, no broadcast joins) over tables t and u of 4 small files each."""
    ctx = planning_context(
        4,
        {
            "datafusion.optimizer.hash_join_single_partition_threshold": "0",
            "datafusion.optimizer.hash_join_single_partition_threshold_rows": "0",
        },
    )
    base = tmp_path_factory.mktemp("state-tables")
    for name in ("t", "u"):
        folder = base / name
        folder.mkdir()
        for i in range(4):
            keys = list(range(10 * i, 10 * i + 10))
            table = pa.table({"k": keys, "v": [float(k % 7) for k in keys]})
            pq.write_table(table, folder / f"part{i}.parquet")
        ctx.register_parquet(name, str(folder))
    return ctx


def graph_of(ctx: SessionContext, sql: str) -> StageGraph:
    return plan_query(ctx, sql).graph


def new_state(
    graph: StageGraph,
    peers: Iterable[str] = ("a", "b", "c"),
    *,
    min_task_bytes: int = 1,
    local_reads: bool = True,
    offset: int = 0,
    max_attempts: int = 3,
    down: set[str] | None = None,
) -> QueryState:
    """Query "q" over ``peers``; its clock stands still."""
    return QueryState(
        "q",
        graph,
        list(peers),
        min_task_bytes=min_task_bytes,
        local_reads=local_reads,
        offset=offset,
        max_attempts=max_attempts,
        down=down,
        clock=lambda: 0.0,
    )


def result(partitions: Iterable[int], nbytes: int = 100, host: str = "h") -> TaskResult:
    """A finished task that wrote ``nbytes`` (one row) to each of ``partitions``."""
    outputs = [{"partition": p, "rows": 1, "nbytes": nbytes, "path": f"/out/{p}"} for p in partitions]
    return TaskResult(outputs, SCHEMA, ["k"], len(outputs), 0.1, host)


def written(state: QueryState, a: Assignment) -> list[int]:
    """The partitions a task of ``a``'s stage writes: every hash partition, or its own share."""
    stage = state.graph[a.stage]
    if stage.kind == "shuffle":
        return list(range(stage.output_partitions))
    return a.parts if a.parts is not None else list(range(stage.split_partitions))


def run_pending(state: QueryState, stage_id: int, nbytes: int = 100) -> list[Assignment]:
    """Start ready stages, then launch and finish every pending task of ``stage_id``."""
    state.launchable()
    launched = state.launch(state.graph[stage_id])
    for a in launched:
        state.task_done(a, result(written(state, a), nbytes))
    return launched


def scan_bytes(graph: StageGraph, stage_id: int) -> int:
    return slice_stage(graph[stage_id], None).scan_bytes


# ------------------------------------------------------------------------------------ which stages
def test_a_stage_is_ready_once_every_stage_it_reads_is_complete(ctx: SessionContext) -> None:
    graph = graph_of(ctx, JOIN)
    assert [(s.kind, [i.stage for i in s.inputs]) for s in graph.stages] == [
        ("shuffle", []),
        ("shuffle", []),
        ("shuffle", [0, 1]),
        ("root", [2]),
    ]
    state = new_state(graph)
    assert [s.id for s in state.ready()] == [0, 1]  # independent stages start together
    assert [s.id for s in state.launchable()] == [0, 1]
    assert state.ready() == []  # started
    run_pending(state, 0)
    assert state.stage_done(0) and not state.stage_done(1)
    assert [s.id for s in state.launchable()] == [1]  # stage 2 still waits for stage 1
    run_pending(state, 1)
    assert [s.id for s in state.launchable()] == [2]
    run_pending(state, 2)
    assert state.launchable() == [] and state.ready() == []  # the root is the submitter's, never launched
    assert all(state.stage_done(s) for s in (0, 1, 2))


# ------------------------------------------------------------------------------------ how many tasks
@pytest.mark.parametrize(
    ("peers", "down", "min_task_bytes", "tasks"),
    [
        (["a", "b", "c"], set(), 1, 3),  # at most one per peer
        (["a", "b", "c"], {"c"}, 1, 2),  # ... per live peer
        ([f"p{i}" for i in range(8)], set(), 1, 4),  # at most one per partition
        (["a", "b", "c"], set(), 10**9, 1),  # too few bytes for a second task
    ],
)
def test_task_count_is_bounded_by_bytes_partitions_and_live_peers(
    ctx: SessionContext, peers: list[str], down: set[str], min_task_bytes: int, tasks: int
) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph, peers, down=down, min_task_bytes=min_task_bytes)
    assert graph[0].split_partitions == 4
    assert state.task_count(graph[0]) == tasks
    (stage,) = state.launchable()
    assert len(state.launch(stage)) == tasks


def test_task_count_follows_the_bytes_a_stage_scans(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    half = math.ceil(scan_bytes(graph, 0) / 2)
    assert new_state(graph, min_task_bytes=half).task_count(graph[0]) == 2


def test_task_count_of_a_consumer_follows_the_bytes_its_producers_wrote(ctx: SessionContext) -> None:
    graph = graph_of(ctx, JOIN)
    assert scan_bytes(graph, 2) == 0  # the join stage reads only its inputs
    state = new_state(graph, min_task_bytes=1000)
    assert state.task_count(graph[0]) == 3
    for producer in (0, 1):  # 3 tasks x 4 partitions x 50 bytes = 600 bytes each
        assert len(run_pending(state, producer, nbytes=50)) == 3
    assert state.task_count(graph[2]) == 2  # 1200 bytes over 1000 per task
    state.min_task_bytes = 1200
    assert state.task_count(graph[2]) == 1


# ------------------------------------------------------------------------------------ where they go
def test_tasks_go_to_the_live_peers_with_the_fewest_tasks_of_this_query(ctx: SessionContext) -> None:
    graph = graph_of(ctx, JOIN)
    state = new_state(graph, min_task_bytes=math.ceil(scan_bytes(graph, 0) / 2))
    state.launchable()
    assert [a.peer for a in state.launch(graph[0])] == ["a", "b"]
    assert [a.peer for a in state.launch(graph[1])] == ["c", "a"]  # c had none; a and b tie, a first
    assert state.load == {"a": 2, "b": 1, "c": 1}


def test_ties_start_one_peer_further_on_per_query_and_skip_down_peers(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    for offset, down, peers in [
        (0, set(), ["a", "b", "c"]),
        (1, set(), ["b", "c", "a"]),
        (1, {"b"}, ["c", "a"]),
    ]:
        state = new_state(graph, offset=offset, down=down)
        (stage,) = state.launchable()
        assert [a.peer for a in state.launch(stage)] == peers, (offset, down)


# ------------------------------------------------------------------------------------ what each reads
def test_scan_tasks_read_only_their_share_of_the_files(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph)
    (stage,) = state.launchable()
    launched = state.launch(stage)
    assert [a.parts for a in launched] == [[0], [1], [2, 3]]
    for a in launched:
        assert a.parts is not None
        files = {i for i in range(4) if f"part{i}.parquet".encode() in a.spec.plan}
        assert files == set(a.parts), (a.parts, files)
        assert a.spec.inputs == [] and a.input_bytes == 0


def test_a_shuffle_consumer_reads_its_hash_partitions_of_every_producer_task(ctx: SessionContext) -> None:
    graph = graph_of(ctx, JOIN)
    state = new_state(graph, local_reads=False)
    producers = {s: run_pending(state, s, nbytes=10) for s in (0, 1)}
    state.launchable()
    consumers = state.launch(graph[2])
    assert [a.parts for a in consumers] == [[0], [1], [2, 3]]
    last = consumers[-1]
    assert last.spec.local_reads is False
    specs = last.spec.input_specs()
    assert [i.index for i in specs] == [0, 1]
    for inp in specs:
        made = producers[graph[2].inputs[inp.index].stage]
        assert len(inp.groups) == 2  # hash partitions 2 and 3
        for part, group in zip([2, 3], inp.groups, strict=True):
            refs = [OutputRef.from_bytes(src["ticket"]) for src in group]
            assert refs == [OutputRef("q", a.stage, a.task, part) for a in made]
            assert [src["address"] for src in group] == [a.peer for a in made]
            assert [src["path"] for src in group] == [f"/out/{part}"] * 3
    assert last.input_bytes == 2 * 2 * 3 * 10  # inputs x partitions x producer tasks x bytes


def test_the_root_reads_every_partition_of_every_gather_task(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph)
    made = run_pending(state, 0, nbytes=7)
    (inp,) = state.root_spec().input_specs()
    refs = [[OutputRef.from_bytes(src["ticket"]) for src in group] for group in inp.groups]
    assert refs == [[OutputRef("q", 0, a.task, p)] for a in made for p in written(state, a)]
    assert state.root_input_bytes == 4 * 7


def test_a_producer_that_wrote_nothing_needs_a_schema_and_gives_empty_input(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph, min_task_bytes=10**9)
    state.launchable()
    (a,) = state.launch(graph[0])
    state.task_done(a, TaskResult([], None, [], 0, 0.1, "h"))
    assert state.stage_done(0) and state.runs[0].schema is None
    state.set_schema(0, SCHEMA, ["k"])
    (inp,) = state.root_spec().input_specs()
    assert inp.groups == [[]] and inp.names == ["k"]


# ------------------------------------------------------------------------------------ a peer fails
def test_a_dead_peer_reruns_the_task_that_failed_and_the_outputs_it_held(ctx: SessionContext) -> None:
    graph = graph_of(ctx, JOIN)
    state = new_state(graph)
    state.launchable()
    first = {a.peer: a for a in state.launch(graph[0])}
    second = {a.peer: a for a in state.launch(graph[1])}
    for a in [*first.values(), second["a"], second["b"]]:
        state.task_done(a, result(range(4)))
    assert state.stage_done(0)
    state.task_failed(second["c"], PeerUnreachableError("gone", peer="c"))
    assert state.down == {"c"} and state.lost == ["c"] and state.retries == 1
    assert not state.stage_done(0)  # c's finished task of stage 0 lost its outputs with c
    assert state.tasks_and_failures(0) == (3, 0) and state.tasks_and_failures(1) == (3, 1)
    assert [s.id for s in state.launchable()] == [0, 1]
    (again0,) = state.launch(graph[0])
    (again1,) = state.launch(graph[1])
    assert (again0.task, again0.peer, again0.attempt) == (first["c"].task, "a", 2)
    assert (again1.task, again1.peer, again1.attempt) == (second["c"].task, "b", 2)
    state.task_done(first["c"], result(range(4)))  # the dead peer's late answer is ignored
    assert not state.stage_done(0) and len(state.records) == 5
    state.task_done(again0, result(range(4)))
    state.task_done(again1, result(range(4)))
    assert state.stage_done(0) and state.stage_done(1)
    assert [s.id for s in state.launchable()] == [2]
    assert {a.peer for a in state.launch(graph[2])} == {"a", "b"}


def test_a_task_that_could_not_read_a_dead_peer_is_retried_on_a_peer_it_has_not_tried(
    ctx: SessionContext,
) -> None:
    graph = graph_of(ctx, JOIN)
    state = new_state(graph)
    for producer in (0, 1):
        run_pending(state, producer)
    state.launchable()
    consumers = state.launch(graph[2])
    assert [a.peer for a in consumers] == ["a", "b", "c"]
    state.task_failed(consumers[0], PeerUnreachableError("could not fetch", peer="b"))  # a is fine
    assert state.down == {"b"} and state.tasks_and_failures(2) == (3, 1)
    assert [s.id for s in state.launchable()] == [0, 1]  # b's outputs first, then the consumers
    assert [a.peer for a in run_pending(state, 0)] == ["a"]  # a and c tie: a first
    assert [a.peer for a in run_pending(state, 1)] == ["c"]
    assert [s.id for s in state.launchable()] == [2]
    retried = state.launch(graph[2])
    assert [(a.task, a.peer) for a in retried] == [(0, "c"), (1, "a")]  # task 0 ran on a: c first


def test_a_task_is_retried_on_peers_it_has_not_tried_until_it_is_out_of_attempts(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph, ["a", "b", "c", "d"], max_attempts=2, min_task_bytes=10**9)
    state.launchable()
    (first,) = state.launch(graph[0])
    state.task_failed(first, PeerUnreachableError("gone", peer="a"))
    (second,) = state.launch(graph[0])
    assert (second.peer, second.attempt) == ("b", 2)
    with pytest.raises(
        PeerUnreachableError, match=r"stage 0 task 0 failed 2 times \(peers tried: a, b; down: a, b\)"
    ):
        state.task_failed(second, PeerUnreachableError("gone too", peer="b"))


def test_the_query_gives_up_when_no_peer_is_left(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph, ["a"], max_attempts=3)
    state.launchable()
    (only,) = state.launch(graph[0])
    with pytest.raises(PeerUnreachableError, match="failed 1 times") as info:
        state.task_failed(only, PeerUnreachableError("gone", peer="a"))
    assert info.value.peer == "a"


# ------------------------------------------------------------------------------------ the root stage
def test_a_root_that_lost_inputs_starts_again_after_they_are_remade(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph)
    made = run_pending(state, 0)
    state.root_spec()
    state.root_started()
    state.root_failed(PeerUnreachableError("gone", peer="b"))
    assert state.root_status == "pending" and state.root_attempts == 1 and state.down == {"b"}
    assert state.tasks_and_failures(graph.root.id) == (1, 1)
    lost = [a.task for a in made if a.peer == "b"]
    assert [s.id for s in state.launchable()] == [0]
    remade = state.launch(graph[0])
    assert [a.task for a in remade] == lost and all(a.peer != "b" for a in remade)


def test_the_root_starts_again_at_most_max_attempts_times(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph, ["a", "b", "c", "d"], max_attempts=2)
    run_pending(state, 0)
    for peer in ("a", "b"):
        state.root_started()
        state.root_failed(PeerUnreachableError("gone", peer=peer))
        run_pending(state, 0)  # what the dead peer held is made again
    state.root_started()
    error = PeerUnreachableError("gone", peer="c")
    with pytest.raises(PeerUnreachableError) as info:
        state.root_failed(error)
    assert info.value is error and state.root_attempts == 3


def test_the_root_gives_up_when_no_peer_is_left(ctx: SessionContext) -> None:
    graph = graph_of(ctx, FILTER)
    state = new_state(graph, ["a"])
    run_pending(state, 0)
    state.root_started()
    with pytest.raises(PeerUnreachableError):
        state.root_failed(PeerUnreachableError("gone", peer="a"))
    assert state.root_attempts == 1 and state.live_peers == []
