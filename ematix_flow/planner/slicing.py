"""Per-task plan slices: a task computes only its share of a stage's partitions.

Slicing follows *partition lineage*: which partitions of every leaf a task needs so that it computes
exactly its share of the stage's partitions. File scans keep only their file groups in that share;
a UNION branch the task owns none of is cut out (feeding it empty input would make a global
aggregate above it emit an extra all-NULL row); the build side of a broadcast join is read whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from ematix_flow.errors import UnsplittableError
from ematix_flow.planner.nodes import FILE_SCANS, GATHERS, PlanNode, input_index
from ematix_flow.planner.scans import keep_groups, scan_bytes
from ematix_flow.planner.stages import Stage

Parts = list[int] | None  # None: all partitions


@dataclass(frozen=True)
class TaskSlice:
    """One task's plan and the partitions of each stage input it reads."""

    plan: bytes
    inputs: dict[int, Parts]  # input index -> partitions needed; absent: the task reads none
    scan_bytes: int


def split(partitions: int, tasks: int) -> list[list[int]]:
    """Divide ``range(partitions)`` into ``tasks`` contiguous, near-equal shares."""
    tasks = max(1, min(tasks, partitions))
    return [list(range(t * partitions // tasks, (t + 1) * partitions // tasks)) for t in range(tasks)]


def slice_stage(stage: Stage, parts: Parts) -> TaskSlice:
    """The plan of the task that computes ``parts`` of ``stage`` (None: the whole stage)."""
    needs: dict[int, Parts] = {}
    nbytes = 0

    def visit(node: PlanNode, s: Parts) -> PlanNode:
        nonlocal nbytes
        if s is not None and s == list(range(node.partitions)):
            s = None
        if node.kind == "input":
            needs[input_index(node)] = s
            return node
        if node.kind in FILE_SCANS:
            nbytes += scan_bytes(node, s)
            return node if s is None else keep_groups(node, s)
        if not node.children:
            if s is not None:
                raise UnsplittableError(f"cannot take partitions {s} of a {node.kind} leaf")
            return node
        kids = node.children
        if s is None:
            return node.with_children([visit(c, None) for c in kids])
        if node.kind == "union":
            kept: list[PlanNode] = []
            slots: list[int] = []
            offset = 0
            for slot, child in zip(node.child_slots, kids, strict=True):
                sub = [p - offset for p in s if offset <= p < offset + child.partitions]
                offset += child.partitions
                if sub:
                    kept.append(visit(child, sub))
                    slots.append(slot)
            # one branch left: the branch itself, as DataFusion decodes a one-input union
            return kept[0] if len(kept) == 1 else node.with_children(kept, slots)
        broadcast = node.kind == "hash_join" and "mode=CollectLeft" in node.line
        if broadcast or node.kind in ("cross_join", "nested_loop_join"):
            return node.with_children([visit(kids[0], None), visit(kids[1], s)])
        if node.kind == "scalar_subquery":
            return node.with_children([visit(kids[0], s)] + [visit(k, None) for k in kids[1:]])
        if node.kind in ("hash_join", "sort_merge_join", "symmetric_hash_join", "interleave"):
            return node.with_children([visit(k, s) for k in kids])
        if node.kind == "repartition":
            raise UnsplittableError("a repartition kept inside the stage needs all of its input")
        if node.kind in GATHERS:
            return node.with_children([visit(kids[0], None)])
        if len(kids) == 1 and kids[0].partitions == node.partitions:
            return node.with_children([visit(kids[0], s)])
        raise UnsplittableError(f"no partition lineage through {node.kind} ({node.line[:60]})")

    if stage.kind == "shuffle":
        top = stage.plan
        plan = top.with_children([visit(top.children[0], parts)])
    else:
        plan = visit(stage.plan, parts)
    return TaskSlice(plan.to_bytes(), needs, nbytes)


def plan_tasks(stage: Stage, tasks: int) -> list[tuple[Parts, TaskSlice]]:
    """Slices for up to ``tasks`` tasks of ``stage`` (one whole-stage task when it cannot split)."""
    total = stage.split_partitions
    if tasks <= 1 or total <= 1 or stage.single_task:
        return [(None, slice_stage(stage, None))]
    shares = split(total, tasks)
    try:
        return [(s, slice_stage(stage, s)) for s in shares]
    except UnsplittableError as exc:
        stage.single_task = str(exc)
        return [(None, slice_stage(stage, None))]
