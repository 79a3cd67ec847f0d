"""Readable views of a query: the stage graph before it runs, and what ran where after."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ematix_flow.coordinator_lib.state import QueryState, TaskRecord
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


def render_graph(graph: StageGraph, peers: int, report: RunReport | None = None) -> str:
    """The stage graph as text: each stage, its split, its inputs and its plan.

    With the ``report`` of a run of it (``explain(sql, analyze=True)``), each stage also says what
    it did: tasks, peers, rows, bytes written / read / fetched over Flight, wall time.
    """
    lines = [f"Distributed plan: {len(graph.stages)} stages over {peers} peers"]
    if report is not None:
        lines += _run_lines(report)
    stats = {s.stage: s for s in report.stages} if report is not None else {}
    for stage in reversed(graph.stages):
        lines.append(_stage_head(stage, peers))
        if stage.id in stats:
            lines.append("    ran: " + stats[stage.id].summary())
        if stage.single_task:
            lines.append(f"    one task: {stage.single_task}")
        if stage.kept:
            lines.append(f"    exchanges kept inside this stage: {stage.kept}")
        _plan_lines(stage.plan, stage, 0, lines)
    return "\n".join(lines)


def _stage_head(stage: Stage, peers: int) -> str:
    head = f"Stage {stage.id} ({_KIND_TEXT[stage.kind]}"
    if stage.kind != "root" and stage.single_task:
        head += f"; {stage.split_partitions} partitions in one task"
    elif stage.kind != "root":
        most = min(peers, stage.split_partitions)
        head += f"; {stage.split_partitions} partitions split over up to {most} tasks"
    if stage.kind == "shuffle":
        head += f" -> {stage.output_partitions} hash partitions"
    return head + ")"


def _run_lines(report: RunReport) -> list[str]:
    """The header of an analyzed graph: what the whole run did."""
    where = f"tasks on {_peers(len(report.peers_used))}" if report.distributed else "on the submitter"
    lines = [f"Ran in {report.seconds:.3f}s: {report.rows:,} result rows, {where} (query {report.query_id})"]
    if report.retries:
        lines.append(f"  {report.retries} tasks re-run after peers were lost: {', '.join(report.peers_lost)}")
    lines += [f"  re-planned: exchanges kept inside a stage ({r})" for r in sorted(set(report.kept.values()))]
    return lines


def _peers(n: int) -> str:
    return f"{n} peer" if n == 1 else f"{n} peers"


def size_text(nbytes: int) -> str:
    """Bytes for people: ``0 B``, ``812 B``, ``12.3 kB``, ``4.1 MB``, ``1.2 GB``."""
    if nbytes < 1000:
        return f"{nbytes} B"
    unit, scale = next(((u, x) for u, x in (("kB", 1e3), ("MB", 1e6)) if nbytes < x * 999.95), ("GB", 1e9))
    return f"{nbytes / scale:.1f} {unit}"


@dataclass
class StageReport:
    """What one stage did.

    ``tasks`` holds every finished task run (a task re-run after a peer died appears again); the
    totals (``rows``, ``bytes_*``) count each task's last run. The root stage runs on the submitter:
    its run is ``submitter`` (rows: the result's), never in ``tasks``.
    """

    stage: int
    kind: str
    tasks: list[TaskRecord] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)  # stages it reads
    task_count: int = 0  # tasks it was split into (0: it never started)
    failures: int = 0  # launches that failed because a peer died (each was retried)
    started: float | None = None  # seconds after the query started: its first task launched
    seconds: float = 0.0  # wall time: first task launched to last task ended
    submitter: TaskRecord | None = None

    @property
    def peers(self) -> list[str]:
        """Peers that ran a task of this stage, in task order."""
        return [t.peer for t in sorted(self.tasks, key=lambda t: t.task)]

    @property
    def peers_used(self) -> list[str]:
        """Distinct peers that ran a task of this stage, sorted (none for the root)."""
        return sorted(set(self.peers))

    @property
    def final(self) -> list[TaskRecord]:
        """The last run of each task, by task (the root: its run on the submitter)."""
        if self.submitter is not None:
            return [self.submitter]
        last = {t.task: t for t in self.tasks}
        return [last[k] for k in sorted(last)]

    @property
    def rows(self) -> int:
        """Rows the stage wrote (the root: rows of the result)."""
        return sum(t.rows for t in self.final)

    @property
    def bytes_written(self) -> int:
        """Bytes of the output files its tasks wrote for their consumers."""
        return sum(t.output_bytes for t in self.final)

    @property
    def bytes_read(self) -> int:
        """Bytes of producer outputs its tasks read (in place on the same host, else over Flight)."""
        return sum(t.input_bytes for t in self.final)

    @property
    def bytes_fetched(self) -> int:
        """Bytes its tasks fetched from other peers over Flight."""
        return sum(t.fetched_bytes for t in self.final)

    def summary(self) -> str:
        """One line: tasks, peers, rows, bytes, wall time."""
        if self.kind == "root":
            if self.submitter is None:
                return "on the submitter; did not finish"
            where = "on the submitter"
        elif self.task_count:
            tasks = "1 task" if self.task_count == 1 else f"{self.task_count} tasks"
            where = f"{tasks} on {', '.join(self.peers_used)}"
            if len(self.tasks) > self.task_count:
                where += f" ({len(self.tasks) - self.task_count} re-runs)"
        else:
            return "never started"
        if self.failures:
            where += f" ({self.failures} failed launches)"
        moved = f"read {size_text(self.bytes_read)} ({size_text(self.bytes_fetched)} over Flight)"
        if self.submitter is None:
            moved = f"wrote {size_text(self.bytes_written)}, {moved}"
        at = f" from +{self.started:.3f}s" if self.started is not None else ""
        return f"{where}; {self.rows:,} rows out; {moved}; {self.seconds:.3f}s{at}"

    def to_dict(self) -> dict[str, Any]:
        """The stage as plain JSON-able values (see ``RunReport.to_dict``)."""
        return {
            "id": self.stage,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "tasks": self.task_count,
            "peers": self.peers_used,
            "rows": self.rows,
            "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read,
            "bytes_fetched": self.bytes_fetched,
            "seconds": round(self.seconds, 6),
            "started": None if self.started is None else round(self.started, 6),
            "failures": self.failures,
            "task_runs": [_task_dict(t) for t in sorted(self.tasks, key=lambda t: (t.task, t.ended))],
        }


def _task_dict(t: TaskRecord) -> dict[str, Any]:
    return {
        "task": t.task,
        "peer": t.peer,
        "attempt": t.attempt,
        "rows": t.rows,
        "bytes_written": t.output_bytes,
        "bytes_read": t.input_bytes,
        "bytes_fetched": t.fetched_bytes,
        "seconds": round(t.seconds, 6),
    }


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
    graph: StageGraph | None = field(default=None, repr=False)  # the stage graph that ran (None: in-process)
    files_written: list[str] = field(default_factory=list)  # what a distributed write published (URLs)

    @property
    def peers_used(self) -> set[str]:
        """Every peer that ran at least one task."""
        return {t.peer for s in self.stages for t in s.tasks}

    @property
    def distributed(self) -> bool:
        """True when any stage ran on a peer."""
        return bool(self.peers_used)

    def collect(self, state: QueryState, origin: float) -> None:
        """Take the stages' task records, counts and wall times from a query's state.

        ``origin`` is the query's start on the state's clock.
        """
        self.retries = state.retries
        self.peers_lost = list(state.lost)
        for stage in self.stages:
            stage.tasks = [r for r in state.records if r.stage == stage.stage]
            stage.task_count, stage.failures = state.tasks_and_failures(stage.stage)
            if stage.stage in state.spans:
                first, last = state.spans[stage.stage]
                stage.started, stage.seconds = first - origin, last - first
        root = state.root_record
        if root is not None:
            self.stages[root.stage].submitter = root

    def to_dict(self) -> dict[str, Any]:
        """The run as plain JSON-able values: a stable shape for tools.

        ``{"query_id", "sql", "seconds", "rows", "distributed", "peers", "note", "retries",
        "peers_lost", "replanned", "files_written", "stages": [{"id", "kind", "inputs", "tasks",
        "peers", "rows",
        "bytes_written", "bytes_read", "bytes_fetched", "seconds", "started", "failures",
        "task_runs": [{"task", "peer", "attempt", "rows", "bytes_written", "bytes_read",
        "bytes_fetched", "seconds"}]}]}``: stages by id, the root last (run on the submitter:
        its ``peers`` and ``task_runs`` are empty); a stage's ``seconds`` is its wall time (first
        task launched to last ended), ``started`` seconds after the query started; ``tasks`` counts
        tasks, ``task_runs`` every finished run (re-runs after a peer died too); bytes are exact.
        """
        return {
            "query_id": self.query_id,
            "sql": self.sql,
            "seconds": round(self.seconds, 6),
            "rows": self.rows,
            "distributed": self.distributed,
            "peers": sorted(self.peers_used),
            "note": self.note,
            "retries": self.retries,
            "peers_lost": list(self.peers_lost),
            "replanned": sorted(set(self.kept.values())),
            "files_written": list(self.files_written),
            "stages": [s.to_dict() for s in self.stages],
        }

    def __str__(self) -> str:
        head = f"query {self.query_id}:" if self.query_id else "query:"
        where = f" on {_peers(len(self.peers_used))}" if self.peers_used else ""  # else the note says where
        lines = [f"{head} {self.rows} rows in {self.seconds:.3f}s{where}"]
        if self.note:
            lines.append(f"  {self.note}")
        if self.files_written:
            lines.append(f"  wrote {len(self.files_written)} files, e.g. {self.files_written[0]}")
        if self.retries:
            lost = ", ".join(self.peers_lost)
            lines.append(f"  {self.retries} tasks re-run after peers were lost: {lost}")
        for reason in sorted(set(self.kept.values())):
            lines.append(f"  re-planned: exchanges kept inside a stage ({reason})")
        for s in self.stages:
            if s.submitter is not None:
                sub = s.submitter
                lines.append(
                    f"  stage {s.stage} ({s.kind}): on the submitter, {sub.rows} rows, {sub.seconds:.3f}s"
                )
                continue
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
