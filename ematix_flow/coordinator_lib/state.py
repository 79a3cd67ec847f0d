"""The state of one running query: a pure object (no I/O) that the mesh shell drives.

It decides which stages are ready (all their inputs complete: independent stages run at the same
time), how many tasks a stage gets (following the bytes it reads, at most one per partition and
per peer), where they go (the least-loaded peers of this query), and what each task reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ematix_flow.engine.exchange import merge_nullability
from ematix_flow.planner.slicing import Parts, plan_tasks, slice_stage
from ematix_flow.planner.stages import Stage, StageGraph, StageInput
from ematix_flow.transport.messages import OutputRef, TaskResult, TaskSpec


@dataclass(frozen=True)
class Assignment:
    """One task to run: where, on which partitions, with what spec."""

    stage: int
    task: int
    peer: str
    parts: Parts
    spec: TaskSpec


@dataclass
class TaskRecord:
    """A finished task, for reports."""

    stage: int
    task: int
    peer: str
    parts: Parts
    rows: int
    seconds: float
    fetched_bytes: int
    output_bytes: int


@dataclass
class _StageRun:
    tasks: int = 0
    results: dict[int, tuple[str, TaskResult]] = field(default_factory=dict)
    schema: bytes | None = None
    names: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.tasks > 0 and len(self.results) == self.tasks


class QueryState:
    """Which stages ran where, and what their consumers need to read."""

    def __init__(
        self,
        query_id: str,
        graph: StageGraph,
        peers: list[str],
        *,
        min_task_bytes: int,
        local_reads: bool,
        offset: int = 0,
    ) -> None:
        self.query_id = query_id
        self.graph = graph
        self.peers = list(peers)
        self.min_task_bytes = max(1, min_task_bytes)
        self.local_reads = local_reads
        self.load = {p: 0 for p in peers}
        self._order = {p: (i - offset) % max(1, len(peers)) for i, p in enumerate(peers)}
        self.runs: dict[int, _StageRun] = {}
        self.records: list[TaskRecord] = []

    # ------------------------------------------------------------ decisions
    def ready(self) -> list[Stage]:
        """Non-root stages not started whose inputs are all complete."""
        return [
            s
            for s in self.graph.stages[:-1]
            if s.id not in self.runs and all(self.stage_done(i.stage) for i in s.inputs)
        ]

    def stage_done(self, stage_id: int) -> bool:
        """True when every task of the stage finished."""
        run = self.runs.get(stage_id)
        return run is not None and run.done

    def root_ready(self) -> bool:
        """True when the root stage can run."""
        return all(self.stage_done(i.stage) for i in self.graph.root.inputs)

    def missing_schemas(self, stage: Stage) -> list[Stage]:
        """Producers of ``stage`` that wrote no rows at all (so reported no schema)."""
        return [self.graph[i.stage] for i in stage.inputs if self.runs[i.stage].schema is None]

    def set_schema(self, stage_id: int, schema: bytes, names: list[str]) -> None:
        """Supply the output schema of a stage that produced no rows."""
        run = self.runs[stage_id]
        run.schema, run.names = schema, names

    def task_count(self, stage: Stage) -> int:
        """Tasks for a stage: as many as its bytes justify, at most one per partition and per peer."""
        nbytes = slice_stage(stage, None).scan_bytes + sum(self._output_bytes(i.stage) for i in stage.inputs)
        by_data = max(1, math.ceil(nbytes / self.min_task_bytes))
        return max(1, min(len(self.peers), stage.split_partitions, by_data))

    def assign(self, stage: Stage) -> list[Assignment]:
        """Start ``stage``: slice it into tasks, place them, build their specs."""
        slices = plan_tasks(stage, self.task_count(stage))
        self.runs[stage.id] = _StageRun(tasks=len(slices))
        out = []
        for t, (parts, sl) in enumerate(slices):
            peer = min(self.peers, key=lambda p: (self.load[p], self._order[p]))
            self.load[peer] += 1
            spec = TaskSpec(
                self.query_id, stage.id, t, sl.plan, self._inputs(stage, sl.inputs), self.local_reads
            )
            out.append(Assignment(stage.id, t, peer, parts, spec))
        return out

    def root_spec(self) -> TaskSpec:
        """The spec of the root stage, which the submitter runs itself."""
        root = self.graph.root
        sl = slice_stage(root, None)
        return TaskSpec(self.query_id, root.id, 0, sl.plan, self._inputs(root, sl.inputs), self.local_reads)

    # ------------------------------------------------------------ events
    def task_done(self, a: Assignment, result: TaskResult) -> None:
        """Record a finished task."""
        run = self.runs[a.stage]
        run.results[a.task] = (a.peer, result)
        if result.schema is not None:
            if run.schema is None:
                run.schema, run.names = result.schema, result.names
            else:
                run.schema = merge_nullability(run.schema, result.schema)
        out_bytes = sum(o.nbytes for o in result.output_list())
        self.records.append(
            TaskRecord(
                a.stage, a.task, a.peer, a.parts, result.rows, result.seconds, result.fetched_bytes, out_bytes
            )
        )

    # ------------------------------------------------------------ helpers
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
        for task in sorted(run.results):
            peer, result = run.results[task]
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
