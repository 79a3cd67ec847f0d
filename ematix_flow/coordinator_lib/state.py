"""The state of one running query: a pure object (no I/O) that the mesh shell drives.

Events in (a task finished, a task failed, a peer is down), instructions out (tasks to launch).
It decides how many tasks a stage gets (following the bytes it reads, at most one per partition and
per peer), where they go (the least-loaded live peers of this query), and what each task reads.
A task launches as soon as every stage it reads is complete, so independent stages overlap.

When a peer dies, every task whose outputs lived there is run again on a live peer (lineage), and
the tasks that could not read them are relaunched once their inputs are whole again; a task gets
``max_attempts`` tries before the query fails with an error naming the stage and the peers. The root
stage, which the submitter runs, starts again after lost inputs up to ``max_attempts`` times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from ematix_flow.coordinator_lib.progress import StageProgress
from ematix_flow.engine.exchange import merge_nullability
from ematix_flow.errors import PeerUnreachableError
from ematix_flow.planner.slicing import Parts, TaskSlice, plan_tasks, slice_stage
from ematix_flow.planner.stages import Stage, StageGraph, StageInput
from ematix_flow.planner.writes import WriteTarget, wrap
from ematix_flow.transport.messages import SQL_INFO_CHARS, OutputRef, TaskResult, TaskSpec


@dataclass(frozen=True)
class Assignment:
    """One task to run: where, on which partitions, with what spec."""

    stage: int
    task: int
    peer: str
    parts: Parts
    spec: TaskSpec
    attempt: int = 1
    launched: float = 0.0  # the state's clock when it was placed
    input_bytes: int = 0  # bytes of producer outputs it reads (over Flight or in place)


@dataclass
class TaskRecord:
    """A finished task, for reports (the root stage's run on the submitter has ``peer == ""``)."""

    stage: int
    task: int
    peer: str
    parts: Parts
    rows: int
    seconds: float
    fetched_bytes: int
    output_bytes: int
    attempt: int = 1
    input_bytes: int = 0
    started: float = 0.0  # the state's clock (time.perf_counter) when it was launched
    ended: float = 0.0  # ... and when its result arrived


@dataclass
class _Slot:
    """One task of a stage, across its attempts."""

    parts: Parts
    slice: TaskSlice
    state: str = "pending"  # pending | running | done
    peer: str = ""
    attempts: int = 0  # launches
    failures: int = 0  # launches that failed (a completed task whose outputs were lost is not one)
    result: TaskResult | None = None
    peers_tried: list[str] = field(default_factory=list)
    done_attempt: int = 0  # the attempt whose result is kept (a write publishes that attempt's files)


@dataclass
class _StageRun:
    slots: list[_Slot]
    schema: bytes | None = None
    names: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(s.state == "done" for s in self.slots)

    @property
    def results(self) -> dict[int, tuple[str, TaskResult]]:
        return {t: (s.peer, s.result) for t, s in enumerate(self.slots) if s.result is not None}


class QueryState:
    """Which tasks ran where, which must run (again), and what their consumers read."""

    def __init__(
        self,
        query_id: str,
        graph: StageGraph,
        peers: list[str],
        *,
        min_task_bytes: int,
        local_reads: bool,
        offset: int = 0,
        max_attempts: int = 3,
        down: set[str] | None = None,
        sql: str = "",
        clock: Callable[[], float] = time.perf_counter,
        write: WriteTarget | None = None,
    ) -> None:
        self.query_id = query_id
        self.write = write  # the stage whose tasks write files, each attempt to a staging prefix
        self.info: dict[str, object] = {
            "sql": sql[:SQL_INFO_CHARS],
            "stages": [
                {"id": s.id, "kind": s.kind, "inputs": [i.stage for i in s.inputs]} for s in graph.stages
            ],
        }
        self.graph = graph
        self.peers = list(peers)
        self.min_task_bytes = max(1, min_task_bytes)
        self.local_reads = local_reads
        self.max_attempts = max_attempts
        self.down: set[str] = set(down or ())
        self.load = {p: 0 for p in peers}
        self._order = {p: (i - offset) % max(1, len(peers)) for i, p in enumerate(peers)}
        self.runs: dict[int, _StageRun] = {}
        self.records: list[TaskRecord] = []
        self.retries = 0
        self.root_attempts = 0
        self.lost: list[str] = []  # peers found dead while this query ran
        self.clock = clock
        self.spans: dict[int, tuple[float, float]] = {}  # stage -> (first task launched, last ended)
        self.root_status = "pending"  # pending | running | done: the root stage, run by the submitter
        self.root_fetched = 0  # bytes the root stage fetched over Flight
        self.root_input_bytes = 0  # bytes of producer outputs the root stage reads
        self.root_record: TaskRecord | None = None  # set when the root stage has streamed its result

    # ------------------------------------------------------------ decisions
    @property
    def live_peers(self) -> list[str]:
        """Peers not known to be down."""
        return [p for p in self.peers if p not in self.down]

    def stage_done(self, stage_id: int) -> bool:
        """True when every task of the stage has its outputs."""
        run = self.runs.get(stage_id)
        return run is not None and run.done

    def ready(self) -> list[Stage]:
        """Non-root stages not yet started whose inputs are all complete."""
        return [
            s
            for s in self.graph.stages[:-1]
            if s.id not in self.runs and all(self.stage_done(i.stage) for i in s.inputs)
        ]

    def set_schema(self, stage_id: int, schema: bytes, names: list[str]) -> None:
        """Supply the output schema of a stage that produced no rows."""
        run = self.runs[stage_id]
        run.schema, run.names = schema, names

    def task_count(self, stage: Stage) -> int:
        """Tasks for a stage: as many as its bytes justify, at most one per partition and per peer."""
        nbytes = slice_stage(stage, None).scan_bytes + sum(self._output_bytes(i.stage) for i in stage.inputs)
        by_data = max(1, math.ceil(nbytes / self.min_task_bytes))
        return max(1, min(len(self.live_peers), stage.split_partitions, by_data))

    def start(self, stage: Stage) -> None:
        """Slice a ready stage into tasks (placed when launched)."""
        slices = plan_tasks(stage, self.task_count(stage))
        self.runs[stage.id] = _StageRun([_Slot(parts, sl) for parts, sl in slices])

    def launchable(self) -> list[Stage]:
        """Start every ready stage; return the stages with tasks to launch now (inputs complete)."""
        for stage in self.ready():
            self.start(stage)
        return [
            self.graph[sid]
            for sid, run in sorted(self.runs.items())
            if any(s.state == "pending" for s in run.slots)
            and all(self.stage_done(i.stage) for i in self.graph[sid].inputs)
        ]

    def launch(self, stage: Stage) -> list[Assignment]:
        """Place every pending task of ``stage`` on a live peer (its inputs must be complete)."""
        run = self.runs[stage.id]
        return [self._launch(stage, t, slot) for t, slot in enumerate(run.slots) if slot.state == "pending"]

    def root_spec(self) -> TaskSpec:
        """The spec of the root stage, which the submitter runs itself."""
        root = self.graph.root
        sl = slice_stage(root, None)
        inputs = self._inputs(root, sl.inputs)
        self.root_input_bytes = _input_bytes(inputs)
        return TaskSpec(self.query_id, root.id, 0, sl.plan, inputs, self.local_reads)

    # ------------------------------------------------------------ progress
    def snapshot(self, result_rows: int = 0) -> tuple[StageProgress, ...]:
        """Every stage's progress, by id (the root last, with the result rows streamed so far)."""
        return tuple(self._stage_progress(s, result_rows) for s in self.graph.stages)

    def _stage_progress(self, stage: Stage, result_rows: int) -> StageProgress:
        if stage.id == self.graph.root.id:
            status = self.root_status
            done, running = int(status == "done"), int(status == "running")
            return StageProgress(stage.id, stage.kind, 1, done, running, self.root_attempts, result_rows)
        run = self.runs.get(stage.id)
        slots = run.slots if run is not None else []
        return StageProgress(
            stage.id,
            stage.kind,
            len(slots),
            sum(s.state == "done" for s in slots),
            sum(s.state == "running" for s in slots),
            sum(s.failures for s in slots),
            sum(s.result.rows for s in slots if s.result is not None),
        )

    def tasks_and_failures(self, stage_id: int) -> tuple[int, int]:
        """(tasks, failed launches) of a stage; the root is one task on the submitter."""
        if stage_id == self.graph.root.id:
            return 1, self.root_attempts
        run = self.runs.get(stage_id)
        return (len(run.slots), sum(s.failures for s in run.slots)) if run else (0, 0)

    def _touch(self, stage_id: int, now: float) -> None:
        first, last = self.spans.get(stage_id, (now, now))
        self.spans[stage_id] = (min(first, now), max(last, now))

    def root_started(self) -> None:
        """The submitter starts (or restarts) the root stage."""
        self.root_status = "running"
        self._touch(self.graph.root.id, self.clock())

    def root_finished(self, rows: int) -> None:
        """The root stage streamed its last batch: ``rows`` result rows."""
        now = self.clock()
        root = self.graph.root.id
        self._touch(root, now)
        self.root_status = "done"
        started = self.spans[root][0]
        fetched, read = self.root_fetched, self.root_input_bytes
        seconds = now - started
        self.root_record = TaskRecord(root, 0, "", None, rows, seconds, fetched, 0, 1, read, started, now)

    # ------------------------------------------------------------ events
    def task_done(self, a: Assignment, result: TaskResult) -> None:
        """Record a finished task."""
        run = self.runs[a.stage]
        slot = run.slots[a.task]
        if slot.state != "running" or slot.peer != a.peer:
            return  # a stale attempt (its peer was declared down meanwhile)
        now = self.clock()
        self._touch(a.stage, now)
        slot.state, slot.result, slot.done_attempt = "done", result, a.attempt
        if result.schema is not None:
            run.schema = result.schema if run.schema is None else merge_nullability(run.schema, result.schema)
            run.names = run.names or result.names
        out_bytes = sum(o.nbytes for o in result.output_list())
        self.records.append(
            TaskRecord(
                a.stage,
                a.task,
                a.peer,
                a.parts,
                result.rows,
                result.seconds,
                result.fetched_bytes,
                out_bytes,
                a.attempt,
                a.input_bytes,
                a.launched,
                now,
            )
        )

    def task_failed(self, a: Assignment, error: PeerUnreachableError) -> None:
        """A task failed because a peer is gone: mark it down, re-run what it held, retry the task.

        Raises ``error`` (with the stage and peers named) when the task is out of attempts or no
        peer is left. Any other failure is not retried: the shell raises it as it is.
        """
        slot = self.runs[a.stage].slots[a.task]
        if slot.state == "running" and slot.peer == a.peer:
            slot.state = "pending"
        slot.failures += 1
        self._touch(a.stage, self.clock())
        self.peer_down(error.peer or a.peer)
        if slot.failures >= self.max_attempts or not self.live_peers:
            tried = ", ".join(slot.peers_tried)
            raise PeerUnreachableError(
                f"stage {a.stage} task {a.task} failed {slot.failures} times (peers tried: {tried}; "
                f"down: {', '.join(sorted(self.down))}): {error}",
                peer=error.peer,
            ) from error
        self.retries += 1

    def root_failed(self, error: PeerUnreachableError) -> None:
        """The root stage could not read its inputs because a peer is gone: it starts again later.

        What the peer held is re-made elsewhere (``peer_down``) and the root goes back to pending.
        Raises ``error`` when the root has lost inputs more than ``max_attempts`` times or no peer
        is left.
        """
        self.peer_down(error.peer)
        self.root_attempts += 1
        self.root_status = "pending"
        if self.root_attempts > self.max_attempts or not self.live_peers:
            raise error

    def written_attempts(self) -> dict[int, int]:
        """Task -> the attempt whose files a write publishes (every task of the write stage is done)."""
        if self.write is None:
            return {}
        return {t: s.done_attempt for t, s in enumerate(self.runs[self.write.stage].slots)}

    def peer_down(self, peer: str) -> None:
        """Forget everything ``peer`` held: its finished outputs are re-made elsewhere (lineage)."""
        if peer in self.down or peer not in self.load:
            return
        self.down.add(peer)
        self.lost.append(peer)
        for run in self.runs.values():
            for slot in run.slots:
                if slot.peer == peer and slot.state in ("done", "running"):
                    slot.state, slot.result = "pending", None

    # ------------------------------------------------------------ helpers
    def _launch(self, stage: Stage, t: int, slot: _Slot) -> Assignment:
        live = self.live_peers
        fresh = [p for p in live if p not in slot.peers_tried] or live
        peer = min(fresh, key=lambda p: (self.load[p], self._order[p]))
        self.load[peer] += 1
        slot.state, slot.peer = "running", peer
        slot.attempts += 1
        slot.peers_tried.append(peer)
        inputs = self._inputs(stage, slot.slice.inputs)
        plan = slot.slice.plan
        if self.write is not None and stage.id == self.write.stage:
            plan = wrap(self.write, plan, self.write.staging(self.query_id, t, slot.attempts))
        spec = TaskSpec(self.query_id, stage.id, t, plan, inputs, self.local_reads, self.info)
        now = self.clock()
        self._touch(stage.id, now)
        return Assignment(stage.id, t, peer, slot.parts, spec, slot.attempts, now, _input_bytes(inputs))

    def _output_bytes(self, stage_id: int) -> int:
        run = self.runs.get(stage_id)
        if run is None:
            return 0
        return sum(o.nbytes for _, r in run.results.values() for o in r.output_list())

    def _inputs(self, stage: Stage, needs: dict[int, Parts]) -> list[dict[str, object]]:
        return [self._input(inp, needs[inp.index]) for inp in stage.inputs if inp.index in needs]

    def _input(self, inp: StageInput, parts: Parts) -> dict[str, object]:
        run = self.runs[inp.stage]
        assert run.schema is not None, "missing producer schema (call set_schema first)"
        pieces: dict[int, list[dict[str, object]]] = {}
        gathered: list[list[dict[str, object]]] = []
        for task, (peer, result) in sorted(run.results.items()):
            for o in result.output_list():
                ref = OutputRef(self.query_id, inp.stage, task, o.partition).to_bytes()
                src: dict[str, object] = {
                    "address": peer,
                    "host_id": result.host_id,
                    "path": o.path,
                    "ticket": ref,
                    "nbytes": o.nbytes,
                    "rows": o.rows,
                }
                pieces.setdefault(o.partition, []).append(src)
                gathered.append([src])
        if inp.mode == "shuffle":
            wanted = parts if parts is not None else list(range(inp.width))
            groups = [pieces.get(p, []) for p in wanted]
        else:
            groups = gathered or [[]]
        return {"index": inp.index, "schema": run.schema, "names": run.names, "groups": groups}


def _input_bytes(inputs: list[dict[str, object]]) -> int:
    """Bytes of every producer output a task's inputs name."""
    groups = (cast(list[list[dict[str, int]]], inp["groups"]) for inp in inputs)
    return sum(src["nbytes"] for g in groups for group in g for src in group)
