"""Cutting a physical plan into stages at its exchanges.

A hash ``RepartitionExec`` becomes a *shuffle* stage (its subtree; each task writes every hash
partition of its share of the input). The child of a ``CoalescePartitionsExec`` or
``SortPreservingMergeExec`` becomes a *gather* stage (each task writes its own partitions; the
consumer reads them all). What is left at the top is the *root* stage, run by the submitter.
A small build side that DataFusion planned as ``CollectLeft`` arrives through a gather and is read
whole by every probe task: a broadcast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ematix_flow import protobuf
from ematix_flow.planner.nodes import (
    FILE_SCANS,
    GATHERS,
    NodeInfo,
    PlanNode,
    attach_infos,
    input_node,
    parse_tree,
)
from ematix_flow.planner.scans import scan_bytes

StageKind = Literal["root", "shuffle", "gather"]
InputMode = Literal["shuffle", "gather"]

_PARTITIONING = 5  # RepartitionExecNode.partitioning
_HASH = 2  # Partitioning.hash

#: Join types whose CollectLeft/nested-loop form emits unmatched BUILD rows: with a broadcast build
#: side, every task would emit them, so such a stage must run as one task (DESIGN.md, trap).
_BUILD_PRESERVING = re.compile(r"join_type=(Left|Full|LeftSemi|LeftAnti|LeftMark)\b")


@dataclass(frozen=True)
class StageInput:
    """An exchange feeding a stage: which producer stage, and how its outputs are read."""

    index: int
    stage: int
    mode: InputMode
    width: int  # shuffle: hash partitions at the site; gather: partitions of the producer body
    exchange: int = -1  # pre-order index of the exchange node (repartition / coalesce / merge) in the plan


@dataclass
class Stage:
    """A plan fragment between exchanges, run as one or more tasks."""

    id: int
    kind: StageKind
    plan: PlanNode
    inputs: list[StageInput]
    site: int = 0  # pre-order index of the stage's top node in the whole plan (its output schema)
    single_task: str | None = None
    kept: str | None = None  # why exchanges were kept inside this stage instead of cut

    @property
    def split_partitions(self) -> int:
        """Partitions the stage's tasks divide among themselves."""
        if self.kind == "shuffle":
            return self.plan.children[0].partitions
        return self.plan.partitions

    @property
    def output_partitions(self) -> int:
        """Partitions each task of a shuffle stage writes (the hash width); else the split count."""
        return self.plan.partitions


@dataclass
class StageGraph:
    """Stages in dependency order: every producer before its consumers; the root last."""

    stages: list[Stage]

    @property
    def root(self) -> Stage:
        """The stage the submitter runs."""
        return self.stages[-1]

    def __getitem__(self, stage_id: int) -> Stage:
        return self.stages[stage_id]

    @property
    def scan_bytes(self) -> int:
        """Bytes every file scan of the query reads."""
        return sum(scan_bytes(n) for s in self.stages for n in s.plan.walk() if n.kind in FILE_SCANS)

    def consumers(self, stage_id: int) -> list[int]:
        """Ids of the stages reading ``stage_id``'s output."""
        return [s.id for s in self.stages if any(i.stage == stage_id for i in s.inputs)]


def is_hash_repartition(node: PlanNode) -> bool:
    """True for a ``RepartitionExec`` with hash partitioning (a shuffle)."""
    if node.kind != "repartition":
        return False
    part = protobuf.first(node.fields, _PARTITIONING)
    return part is not None and any(f.number == _HASH for f in protobuf.parse(part.data))


def single_task_reason(plan: PlanNode) -> str | None:
    """Why a stage must not be split across tasks, or None when it can be."""
    for node in plan.walk():
        if node.kind == "input":
            continue
        collect = node.kind == "nested_loop_join" or (
            node.kind == "hash_join" and "mode=CollectLeft" in node.line
        )
        m = _BUILD_PRESERVING.search(node.line) if collect else None
        if m:
            return (
                f"{m.group(1)} join over a broadcast build side emits unmatched build rows once per task "
                "(runs as one task)"
            )
    return None


#: The exchange between the submitter and the top of the plan; keeping it runs that top on the submitter.
ROOT_EXCHANGE = 0


def _index(node: PlanNode) -> int:
    index = node.meta.get("index", -1)
    return index if isinstance(index, int) else -1


def build_graph(plan_bytes: bytes, infos: list[NodeInfo], keep: dict[int, str] | None = None) -> StageGraph:
    """Cut serialized plan bytes, paired with DataFusion's node infos, into a stage graph.

    ``keep`` maps exchange nodes (pre-order index) that must NOT be cut to the reason: their
    subtree then stays inside the consuming stage, which runs as one task.
    """
    root = attach_infos(parse_tree(plan_bytes), infos)
    keep = keep or {}
    stages: list[Stage] = []

    def build(body: PlanNode, kind: StageKind) -> int:
        inputs: list[StageInput] = []
        kept: list[str] = []

        def visit(node: PlanNode, top: bool) -> PlanNode:
            if not (top and kind == "shuffle") and (is_hash_repartition(node) or node.kind in GATHERS):
                if _index(node) in keep:
                    kept.append(keep[_index(node)])
                elif node.kind == "repartition":
                    sid = build(node, "shuffle")
                    inputs.append(StageInput(len(inputs), sid, "shuffle", node.partitions, _index(node)))
                    return input_node(inputs[-1].index, node.partitions, node.line)
                else:
                    child = node.children[0]
                    sid = build(child, "gather")
                    inputs.append(StageInput(len(inputs), sid, "gather", child.partitions, _index(node)))
                    return node.with_children([input_node(inputs[-1].index, child.partitions, child.line)])
            return node.with_children([visit(c, False) for c in node.children])

        new_body = visit(body, True)
        stage = Stage(len(stages), kind, new_body, inputs, max(0, _index(body)))
        stage.single_task = single_task_reason(new_body)
        if kept:
            stage.kept = "; ".join(sorted(set(kept)))
            stage.single_task = stage.single_task or f"exchange kept inside the stage ({stage.kept})"
        stages.append(stage)
        return stage.id

    build(root, "root")
    top = stages[-1]
    if ROOT_EXCHANGE not in keep and any(n.kind in FILE_SCANS for n in top.plan.walk()):
        # scans left at the top (e.g. a plain filter, no exchange): the peers run them, the submitter gathers
        top.kind = "gather"
        marker = input_node(0, top.plan.partitions, top.plan.line)
        gather = StageInput(0, top.id, "gather", top.plan.partitions, ROOT_EXCHANGE)
        stages.append(Stage(len(stages), "root", marker, [gather]))
    return StageGraph(stages)
