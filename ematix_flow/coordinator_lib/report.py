"""Readable views of a query: the stage graph before it runs, and what ran where after."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from ematix_flow.coordinator_lib.state import TaskRecord
from ematix_flow.planner.nodes import PlanNode, input_index
from ematix_flow.planner.stages import Stage, StageGraph

_KIND_TEXT = {
    "root": "root: runs on the submitter",
    "shuffle": "shuffle: each task hash-partitions its share",
    "gather": "gather: the consumer reads every partition",
}


def _plan_lines(node: PlanNode, stage: Stage, depth: int, out: list[str]) -> None:
    pad = "    " + "  " * depth
    if node.kind == "input":
        inp = stage.inputs[input_index(node)]
        out.append(f"{pad}<- input {inp.index}: {inp.mode} from stage {inp.stage}")
        return
    out.append(pad + node.line[:160])
    for c in node.children:
        _plan_lines(c, stage, depth + 1, out)


def render_graph(graph: StageGraph, peers: int) -> str:
    """The stage graph as text: each stage, its split, its inputs and its plan."""
    lines = [f"Distributed plan: {len(graph.stages)} stages over {peers} peers"]
    for stage in reversed(graph.stages):
        head = f"Stage {stage.id} ({_KIND_TEXT[stage.kind]}"
        if stage.kind != "root" and stage.single_task:
            head += f"; {stage.split_partitions} partitions in one task"
        elif stage.kind != "root":
            most = min(peers, stage.split_partitions)
            head += f"; {stage.split_partitions} partitions split over up to {most} tasks"
        if stage.kind == "shuffle":
            head += f" -> {stage.output_partitions} hash partitions"
        head += ")"
        lines.append(head)
        if stage.single_task:
            lines.append(f"    one task: {stage.single_task}")
        if stage.kept:
            lines.append(f"    exchanges kept inside this stage: {stage.kept}")
        _plan_lines(stage.plan, stage, 0, lines)
    return "\n".join(lines)


@dataclass
class StageReport:
    """What one stage did."""

    stage: int
    kind: str
    tasks: list[TaskRecord] = field(default_factory=list)

    @property
    def peers(self) -> list[str]:
        """Peers that ran a task of this stage, in task order."""
        return [t.peer for t in sorted(self.tasks, key=lambda t: t.task)]


@dataclass
class RunReport:
    """What a query did on the mesh: stages, tasks, peers, time."""

    query_id: str
    sql: str
    stages: list[StageReport]
    seconds: float = 0.0
    rows: int = 0
    schema: pa.Schema | None = None  # the result's (logical) schema, known once planned
    kept: dict[int, str] = field(default_factory=dict)  # exchanges kept inside stages after a re-plan
    note: str = ""  # e.g. why the query ran in-process
    retries: int = 0  # tasks run again because a peer died
    peers_lost: list[str] = field(default_factory=list)

    @property
    def peers_used(self) -> set[str]:
        """Every peer that ran at least one task."""
        return {t.peer for s in self.stages for t in s.tasks}

    @property
    def distributed(self) -> bool:
        """True when any stage ran on a peer."""
        return bool(self.peers_used)

    def __str__(self) -> str:
        lines = [
            f"query {self.query_id}: {self.rows} rows in {self.seconds:.3f}s on {len(self.peers_used)} peers"
        ]
        if self.note:
            lines.append(f"  {self.note}")
        if self.retries:
            lost = ", ".join(self.peers_lost)
            lines.append(f"  {self.retries} tasks re-run after peers were lost: {lost}")
        for reason in sorted(set(self.kept.values())):
            lines.append(f"  re-planned: exchanges kept inside a stage ({reason})")
        for s in self.stages:
            if not s.tasks:
                lines.append(f"  stage {s.stage} ({s.kind}): on the submitter")
                continue
            rows = sum(t.rows for t in s.tasks)
            secs = max(t.seconds for t in s.tasks)
            moved = sum(t.fetched_bytes for t in s.tasks)
            peers = ", ".join(sorted(set(s.peers)))
            lines.append(
                f"  stage {s.stage} ({s.kind}): {len(s.tasks)} tasks on [{peers}], {rows} rows out, "
                f"{moved / 1e6:.1f} MB fetched, slowest task {secs:.3f}s"
            )
        return "\n".join(lines)
