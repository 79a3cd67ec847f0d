"""Output schemas of plan nodes from ``EXPLAIN`` (only needed when a whole stage produced no rows).

Producers report the schema of the batches they write; a stage whose every partition is empty has
none to report, and the Python API exposes no schema on physical plan nodes. So, only then, the
submitter asks DataFusion for ``EXPLAIN`` with ``show_schema`` and reads the schema of the stage's
top node (``schemas.parse_schema``).

EXPLAIN plans the query again, and DataFusion does not always plan it alike: the columns a
projection adds for join keys, and a filter's projection, come in hash-set order. So a node's schema
is EXPLAIN's only where EXPLAIN shows the plan that ran at and below the node; elsewhere it is
rebuilt from the lines of the plan that ran (:func:`_reconciled`): the node's output names in that
plan's order, with each name's type from EXPLAIN. What it cannot rebuild, it asks EXPLAIN again for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from datafusion import SessionContext

from ematix_flow.coordinator_lib.display import bracketed, split_list
from ematix_flow.coordinator_lib.schemas import parse_schema
from ematix_flow.engine.lake.registry import registry, without_statistics
from ematix_flow.errors import PlanningError

#: EXPLAIN tries before giving up on a plan that keeps coming out unlike the one that ran.
EXPLAIN_TRIES = 30


@dataclass(frozen=True)
class Node:
    """One node of EXPLAIN's physical plan: its indentation, display line and output schema."""

    depth: int
    line: str
    schema: pa.Schema


def explain_schemas(ctx: SessionContext, sql: str) -> list[pa.Schema]:
    """Every physical node's output schema, in pre-order, of the plan EXPLAIN makes."""
    return [node.schema for node in explain(ctx, sql)]


def schemas_at(
    ctx: SessionContext, sql: str, lines: Sequence[str], sites: Iterable[int]
) -> dict[int, pa.Schema]:
    """The output schema of each node in ``sites`` (pre-order indices) of the plan that ran.

    ``lines``: the display line of every node of that plan (``PlannedQuery.lines``).
    """
    wanted, found = set(sites), dict[int, pa.Schema]()
    for _ in range(EXPLAIN_TRIES):
        nodes = explain(ctx, sql)
        same_shape = len(nodes) == len(lines) and all(
            _kind(n.line) == _kind(line) for n, line in zip(nodes, lines, strict=True)
        )
        if same_shape:
            for site in wanted - found.keys():
                schema = reconciled(nodes, lines, site)
                if schema is not None:
                    found[site] = schema
        if len(found) == len(wanted):
            return found
    raise PlanningError(
        f"EXPLAIN planned the query unlike the plan that ran, {EXPLAIN_TRIES} times: the schema of a "
        "stage that produced no rows is unknown (run the query again)"
    )


def explain(ctx: SessionContext, sql: str) -> list[Node]:
    """Every node of the physical plan EXPLAIN makes for ``sql``, pre-order."""
    if registry(ctx) is not None:  # planned as plan_query plans a query reading lake tables
        with without_statistics(ctx):
            return _explain(ctx, sql)
    return _explain(ctx, sql)


def _explain(ctx: SessionContext, sql: str) -> list[Node]:
    ctx.sql("SET datafusion.explain.show_schema = true").collect()
    try:
        rows = ctx.sql("EXPLAIN " + sql).to_arrow_table().to_pylist()
    finally:
        ctx.sql("SET datafusion.explain.show_schema = false").collect()
    text = next(r["plan"] for r in rows if r["plan_type"] == "physical_plan")
    out = []
    for line in text.splitlines():
        m = re.search(r", schema=\[(.*)\]\s*$", line)
        shown = line[: m.start()] if m else line
        schema = parse_schema(m.group(1)) if m and m.group(1) else pa.schema([])
        out.append(Node(len(shown) - len(shown.lstrip(" ")), shown.strip(), schema))
    return out


# ----------------------------------------------------------------------------------- rebuilding
#: Nodes whose output schema is their one input's.
_PASS_THROUGH = frozenset(
    {
        "RepartitionExec",
        "CoalescePartitionsExec",
        "CoalesceBatchesExec",
        "SortExec",
        "SortPreservingMergeExec",
        "GlobalLimitExec",
        "LocalLimitExec",
        "CooperativeExec",
        "FilterExec",  # without a projection (that case is read from its line first)
    }
)
#: Join types -> the sides whose columns a join outputs (without a projection), left first.
_JOIN_SIDES = {"Inner": "lr", "Left": "lr", "Right": "lr", "Full": "lr"}
_JOIN_SIDES.update({"LeftSemi": "l", "LeftAnti": "l", "RightSemi": "r", "RightAnti": "r"})
_JOINS = frozenset({"HashJoinExec", "NestedLoopJoinExec", "SortMergeJoinExec", "CrossJoinExec"})


def reconciled(nodes: list[Node], lines: Sequence[str], i: int) -> pa.Schema | None:
    """Node ``i``'s schema in the plan that ran (``lines``), from EXPLAIN's ``nodes``; None if unsure."""
    end = _subtree_end(nodes, i)
    if [n.line for n in nodes[i:end]] == list(lines[i:end]):
        return nodes[i].schema
    children = _children(nodes, i)
    inputs = [reconciled(nodes, lines, c) for c in children]
    known = [s for s in inputs if s is not None]
    if len(known) != len(inputs):
        return None  # an input EXPLAIN planned otherwise than by order alone
    if nodes[i].line == lines[i] and all(s == nodes[c].schema for s, c in zip(known, children, strict=True)):
        return nodes[i].schema  # the same node over the same input schemas
    schema = nodes[i].schema  # the types, by name
    names = _output_names(_kind(lines[i]), lines[i], known, nodes[i])
    if names is None:
        return None
    if len(set(schema.names)) != len(schema.names) or sorted(names) != sorted(schema.names):
        return None
    return pa.schema([schema.field(name) for name in names])


#: Nodes whose output columns follow the order of their own expressions (not of their input's
#: columns): where their line differs from EXPLAIN's only in column indices, so does nothing else.
_OWN_ORDER = frozenset({"AggregateExec"})
_WINDOWS = frozenset({"BoundedWindowAggExec", "WindowAggExec"})
_INDEX = re.compile(r"@\d+")


def _output_names(kind: str, line: str, inputs: list[pa.Schema], explained: Node) -> list[str] | None:
    """The names a node outputs, in order, from its display line and its inputs' schemas.

    ``explained``: the node as EXPLAIN shows it, for nodes whose own expressions come in the same
    order in both plans (their lines differ only in the column indices they read).
    """
    same_exprs = _INDEX.sub("@", line) == _INDEX.sub("@", explained.line)
    if kind in _OWN_ORDER and same_exprs:
        return list(explained.schema.names)
    if kind in _WINDOWS and same_exprs and len(inputs) == 1:  # the input's columns, then the windows'
        return list(inputs[0].names) + list(explained.schema.names[len(inputs[0].names) :])
    if kind in ("UnionExec", "InterleaveExec") and inputs:
        return list(inputs[0].names)
    projected = bracketed(line, ", projection=[")  # a filter's or a join's own projection
    if projected is not None:
        items = split_list(projected)
        return None if items is None else [_item_name(item) for item in items]
    if kind == "ProjectionExec":
        items = split_list(bracketed(line, "ProjectionExec: expr=[") or "")
        return None if items is None else [_item_name(item) for item in items]
    if kind == "ScalarSubqueryExec" and inputs:
        return list(inputs[0].names)  # the main input; the others are the subqueries
    if kind in _PASS_THROUGH and len(inputs) == 1:
        return list(inputs[0].names)
    if kind in _JOINS and len(inputs) == 2:
        join_type = re.search(r"join_type=(\w+)", line)
        sides = _JOIN_SIDES.get(join_type.group(1) if join_type else "Inner")
        if sides is not None:
            return (list(inputs[0].names) if "l" in sides else []) + (
                list(inputs[1].names) if "r" in sides else []
            )
    return None


def _kind(line: str) -> str:
    return line.split(":", 1)[0]


def _subtree_end(nodes: list[Node], i: int) -> int:
    end = i + 1
    while end < len(nodes) and nodes[end].depth > nodes[i].depth:
        end += 1
    return end


def _children(nodes: list[Node], i: int) -> list[int]:
    """Pre-order indices of node ``i``'s children (EXPLAIN indents a level by two spaces)."""
    return [j for j in range(i + 1, _subtree_end(nodes, i)) if nodes[j].depth == nodes[i].depth + 2]


def _item_name(item: str) -> str:
    """The output name of a projection item: ``expr as name``, ``name@index`` or ``name``."""
    depth, cut = 0, -1
    for k, ch in enumerate(item):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if depth == 0 and item.startswith(" as ", k):
            cut = k  # the last " as " outside brackets
    if cut >= 0:
        return item[cut + 4 :]
    return item.rsplit("@", 1)[0] if re.search(r"@\d+$", item) else item
