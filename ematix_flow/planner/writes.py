"""Distributed writes: ``COPY ... TO`` and ``INSERT INTO`` run by the producer tasks, staged.

DataFusion plans a write as one ``DataSinkExec`` at the top of the plan, over a
``CoalescePartitionsExec`` (or directly over a single-partition input). Cut as any other plan, that
sink would run on the submitter with every row gathered to it. Instead :func:`plan_write` takes the
sink off the graph: the stage below it writes, each task through ``Sink(Coalesce(its slice))``, and
the root only gathers each task's count of rows written.

Each task attempt writes under its own staging prefix inside the target
(``out/_flow_staging-<query>/t<task>-a<attempt>/``), with DataFusion's random file names. The
submitter publishes the winning attempt of every task once all succeeded and removes the staging
prefix (``coordinator_lib/writes.py``): a failed, cancelled or retried attempt leaves nothing visible
under the target. A target that names one file (``'out.parquet'``) is written by one task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ematix_flow import protobuf
from ematix_flow.planner.nodes import PlanNode, parse_tree
from ematix_flow.planner.paths import FILE_SINKS
from ematix_flow.planner.stages import StageGraph

STAGING = "_flow_staging-"  # staging prefixes start so: readers and listings skip ``_`` names
_SINK, _SINK_CONF = 2, 1  # DataSinkExecNode.sink; <Kind>Sink.config
_TABLE_PATHS, _PARTITION_COLS, _INSERT_OP = 3, 5, 10  # FileSinkConfig fields
_APPEND = 0  # InsertOp.Append (the default, also for COPY)
_COALESCE_NODE = 13  # PhysicalPlanNode.coalesce_partitions


@dataclass(frozen=True)
class WriteTarget:
    """Where a query writes, and the sink its writing stage's tasks put above their slices."""

    stage: int  # the stage whose tasks write
    sink: bytes  # the DataSinkExec node above a CoalescePartitionsExec; the latter's input is replaced
    url: str  # the target as the plan names it: a folder URL (``s3://lake/out/``) or one file
    one_file: bool  # the target is one file: one task writes it

    def staging_root(self, query_id: str) -> str:
        """The prefix every attempt of query ``query_id`` writes under (removed once published)."""
        return f"{self.folder}{STAGING}{query_id}/"

    def staging(self, query_id: str, task: int, attempt: int) -> str:
        """Where one task attempt writes: a prefix of its own (or its file, for a one-file target)."""
        prefix = f"{self.staging_root(query_id)}t{task}-a{attempt}/"
        return prefix + self.url.rsplit("/", 1)[-1] if self.one_file else prefix

    @property
    def folder(self) -> str:
        """The target folder (a one-file target's parent), ending with ``/``."""
        if self.one_file:
            return self.url.rsplit("/", 1)[0] + "/"
        return self.url if self.url.endswith("/") else self.url + "/"


def plan_write(graph: StageGraph) -> WriteTarget | None:
    """Move a plan's file sink from the top onto the stage below it (see the module docstring).

    Returns None, leaving the graph as it is, when the plan writes no files, or writes by a mode
    staging cannot keep (an overwrite), or has a shape this does not know.
    """
    root = graph.root
    if not root.inputs:
        return None
    producer = graph[root.inputs[0].stage]
    top = root.plan
    on_root = top.kind in FILE_SINKS and _coalesced_marker(top)  # Sink(Coalesce(input)) on the submitter
    on_stage = (  # the sink sat on a stage of scans, over one partition
        top.kind == "input"
        and producer.plan.kind in FILE_SINKS
        and producer.plan.children[0].kind != "coalesce_partitions"
    )
    if not on_root and not on_stage:
        return None
    sink = top if on_root else producer.plan
    conf = _sink_config(sink)
    paths = [f.data.decode("utf-8", "replace") for f in conf if f.number == _TABLE_PATHS]
    insert = protobuf.first(conf, _INSERT_OP)
    if len(paths) != 1 or (insert is not None and insert.int != _APPEND) or "://" not in paths[0]:
        return None
    if on_root:
        root.plan = top.children[0]  # Coalesce(input): it gathers the tasks' counts
    else:
        producer.plan = sink.children[0]
        sink = _over_coalesce(sink)
    url = paths[0]
    partitioned = protobuf.first(conf, _PARTITION_COLS) is not None
    one_file = not partitioned and not url.endswith("/") and "." in url.rsplit("/", 1)[-1]
    if one_file:
        producer.single_task = producer.single_task or "writes one file (one task)"
    return WriteTarget(producer.id, sink.to_bytes(), url, one_file)


def wrap(target: WriteTarget, slice_plan: bytes, table_path: str) -> bytes:
    """A task's plan: ``Sink(Coalesce(slice_plan))`` writing under ``table_path``."""
    sink = parse_tree(target.sink)
    coalesce = sink.children[0]
    coalesce = coalesce.with_children([parse_tree(slice_plan)])
    fields = list(sink.fields)
    slot = next(i for i, f in enumerate(fields) if f.number == _SINK)
    body = protobuf.parse(fields[slot].data)
    conf_at = next(i for i, f in enumerate(body) if f.number == _SINK_CONF)
    conf = [f for f in protobuf.parse(body[conf_at].data) if f.number != _TABLE_PATHS]
    conf.append(protobuf.message(_TABLE_PATHS, table_path.encode()))
    body[conf_at] = protobuf.message(_SINK_CONF, protobuf.encode(conf))
    fields[slot] = protobuf.message(_SINK, protobuf.encode(body))
    return replace(sink, fields=fields, children=[coalesce]).to_bytes()


def _coalesced_marker(sink: PlanNode) -> bool:
    child = sink.children[0] if sink.children else None
    return child is not None and child.kind == "coalesce_partitions" and child.children[0].kind == "input"


def _over_coalesce(sink: PlanNode) -> PlanNode:
    """``sink`` with a CoalescePartitionsExec between it and its input (input left as it is)."""
    child = sink.children[0]
    body = protobuf.encode([protobuf.message(1, child.to_bytes())])  # CoalescePartitionsExecNode.input
    coalesce = parse_tree(protobuf.encode([protobuf.message(_COALESCE_NODE, body)]))
    return sink.with_children([coalesce])


def _sink_config(sink: PlanNode) -> list[protobuf.Field]:
    field = protobuf.first(sink.fields, _SINK)
    conf = protobuf.first(protobuf.parse(field.data), _SINK_CONF) if field else None
    return protobuf.parse(conf.data) if conf else []
