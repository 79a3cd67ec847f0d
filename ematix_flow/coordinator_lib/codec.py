"""Plans DataFusion 55's plan codec cannot carry faithfully: they run on the submitter, not on peers.

A peer runs the plan it decodes from the submitter's bytes (``ExecutionPlan.from_bytes``). Where the
codec loses something on the way, the peer runs another plan than the one DataFusion planned, and
the answer is wrong with no error. ``plan_query`` asks :func:`codec_problem` about every plan; a
plan with a problem runs in-process on the submitter (``PlannedQuery.local_plan``), and the problem
is the reason ``Mesh.explain`` and the run report give. Two checks, cheapest first:

- the known gaps (:data:`CODEC_GAPS`): losses the decoded plan does not show, because the node's
  display text survives while the setting behind it does not. Found by their display text.
- the round trip: the plan is decoded here, in the planning context, and encoded again; every node's
  display line, partition count and child count, and the re-encoded bytes (which hold what the codec
  carries: expressions, schemas, options), must equal the original's. Two differences that change
  no row are normalised explicitly (:func:`_normal_line`, :func:`_is_union_coercion`).

Cost (2-core machine, 4 partitions): 0.7 ms per TPC-H plan (median; 1.2 ms at most), which makes
``plan_query`` 4.4 -> 5.4 ms; TPC-DS 2.2 ms median, 28 ms for q14's 0.5 MB plan. Decoding is most of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from datafusion import SessionContext
from datafusion.plan import ExecutionPlan

from ematix_flow import protobuf
from ematix_flow.coordinator_lib.display import bracketed, split_list
from ematix_flow.errors import ProtocolError, first_line
from ematix_flow.planner.nodes import NodeInfo, PlanNode, attach_infos, parse_tree


@dataclass(frozen=True)
class CodecGap:
    """A loss of DataFusion 55's plan codec that a round trip does not show.

    ``nodes``: the display names of the nodes it affects; ``found``: whether such a node's display
    line says the plan depends on what is lost; ``reason``: the user's explanation.
    """

    nodes: tuple[str, ...]
    found: Callable[[str], object]
    reason: str


#: Window functions DataFusion computes differently once it reverses their window (lag <-> lead,
#: nth_value from the other end): the codec writes the function's name only, so a peer computes
#: the reversed window with the function as written.
_REVERSIBLE = ("lag(", "lead(", "nth_value(")
_BOUND = re.compile(r"(Preceding|Following)\(\w+\((\w+|NULL)\)\)|CurrentRow")


def reversed_window(line: str) -> bool:
    """Whether a window node holds a lag / lead / nth_value whose frame DataFusion reversed.

    The expression's name keeps the frame as written; its ``frame:`` shows the one it runs with.
    """
    items = split_list(bracketed(line, "wdw=[") or "") or []  # "NAME: Field {..}", "frame: ..", ...
    for expr, frame in pairwise(items):
        name = expr.partition(": ")[0]
        if not (frame.startswith("frame: ") and name.startswith(_REVERSIBLE)):
            continue
        if _frame_text(frame.removeprefix("frame: ")) not in name:
            return True
    return False


def _frame_text(frame: str) -> str:
    """A frame as a window's name shows it: ``RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW``.

    ``BoundedWindowAggExec`` shows it so already; ``WindowAggExec`` shows the struct
    (``WindowFrame { units: Range, start_bound: CurrentRow, end_bound: Following(Int64(NULL)), .. }``).
    """
    if not frame.startswith("WindowFrame {"):
        return frame
    units = re.search(r"units: (\w+)", frame)
    bounds = [_bound_text(m) for m in _BOUND.finditer(frame)]
    if units is None or len(bounds) != 2:
        return frame
    return f"{units.group(1).upper()} BETWEEN {bounds[0]} AND {bounds[1]}"


def _bound_text(m: re.Match[str]) -> str:
    if m.group(0) == "CurrentRow":
        return "CURRENT ROW"
    value = "UNBOUNDED" if m.group(2) == "NULL" else m.group(2)
    return f"{value} {m.group(1).upper()}"


#: The known gaps. Each was found by running the decoded plan next to the original in one process.
CODEC_GAPS: tuple[CodecGap, ...] = (
    # PhysicalWindowExprNode has no null-treatment field: first_value, last_value, nth_value, lag and
    # lead decode as RESPECT NULLS, while the expression's name (the display) keeps "IGNORE NULLS".
    # Aggregates carry it (AggregateExec's first_value / last_value / array_agg IGNORE NULLS survive).
    CodecGap(
        ("BoundedWindowAggExec", "WindowAggExec"),
        re.compile(r"\bIGNORE NULLS\b").search,
        "DataFusion 55's plan codec drops IGNORE NULLS of window functions "
        "(a peer would compute RESPECT NULLS)",
    ),
    # DataFusion reverses a window to reuse the sort another window needs: lag becomes lead over
    # the reversed frame. The codec writes "lag" and the reversed frame, and a peer computes lag.
    CodecGap(
        ("BoundedWindowAggExec", "WindowAggExec"),
        reversed_window,
        "DataFusion 55's plan codec loses the reversal of a lag / lead / nth_value window that "
        "DataFusion reversed to share a sort (a peer would compute it in the other direction)",
    ),
)


def node_infos(plan: ExecutionPlan) -> list[NodeInfo]:
    """DataFusion's view of every node, pre-order: partition count, first display line, child count."""
    out: list[NodeInfo] = []

    def walk(node: ExecutionPlan) -> None:
        text = node.display().strip()
        children = node.children()
        out.append(NodeInfo(node.partition_count, text.splitlines()[0] if text else "", len(children)))
        for c in children:
            walk(c)

    walk(plan)
    return out


def codec_problem(ctx: SessionContext, plan_bytes: bytes, infos: list[NodeInfo]) -> str | None:
    """Why the plan encoded as ``plan_bytes`` (``infos``: its nodes) must not be shipped, or None."""
    return known_gap(infos) or roundtrip_difference(ctx, plan_bytes, infos)


def known_gap(infos: list[NodeInfo]) -> str | None:
    """The reason of the first known codec gap (:data:`CODEC_GAPS`) the plan depends on, or None."""
    for info in infos:
        name = _node_name(info.line)
        for gap in CODEC_GAPS:
            if name in gap.nodes and gap.found(info.line):
                return gap.reason
    return None


def roundtrip_difference(ctx: SessionContext, plan_bytes: bytes, infos: list[NodeInfo]) -> str | None:
    """What differs between the plan and the plan DataFusion decodes from its bytes, or None."""
    trip = _round_trip(ctx, plan_bytes)
    if isinstance(trip, str):
        return f"DataFusion 55 cannot decode the plan it encoded ({trip})"
    decoded, plan_bytes, again = trip
    want = [_normal(i) for i in infos]
    got = [_normal(i) for i in node_infos(decoded)]
    if again == plan_bytes and got == want:
        return None  # the common case: nothing to align
    original = attach_infos(parse_tree(plan_bytes), want)
    return _difference(original, attach_infos(parse_tree(again), got), parent="")


def slice_difference(ctx: SessionContext, plan_bytes: bytes) -> str | None:
    """What DataFusion changes in plan bytes made by slicing and splicing (no display to compare).

    The decoded plan, encoded again, must hold the same nodes with the same fields, but for the
    projections the decoder puts over union inputs (:func:`_is_union_coercion`).
    """
    trip = _round_trip(ctx, plan_bytes)
    if isinstance(trip, str):
        return f"DataFusion 55 cannot decode the plan ({trip})"
    decoded, plan_bytes, again = trip
    if again == plan_bytes:
        return None
    return _difference(
        parse_tree(plan_bytes), attach_infos(parse_tree(again), node_infos(decoded)), "", False
    )


def _round_trip(ctx: SessionContext, plan_bytes: bytes) -> tuple[ExecutionPlan, bytes, bytes] | str:
    """The decoded plan, and its bytes before and after (pickled Python functions masked); or why not."""
    try:
        decoded = ExecutionPlan.from_bytes(ctx, plan_bytes)
        again = decoded.to_bytes()
    except Exception as exc:
        return first_line(exc, 200)
    return decoded, _without_python_functions(plan_bytes), _without_python_functions(again)


# ----------------------------------------------------------------------------------- comparison
def _difference(a: PlanNode, b: PlanNode, parent: str, shown: bool = True) -> str | None:
    """The first node (pre-order) where the decoded tree ``b`` differs from the original ``a``.

    ``shown``: ``a`` carries its display line and partitions too (they are compared then).
    """
    if parent == "union" and _is_union_coercion(b) and not _same(a, b, shown):
        b = b.children[0]  # a projection the decoder put over a union input: skip it
    if not _same(a, b, shown):
        return _describe(a, b)
    for ca, cb in zip(a.children, b.children, strict=True):
        found = _difference(ca, cb, a.kind, shown)
        if found is not None:
            return found
    return None


def _same(a: PlanNode, b: PlanNode, shown: bool = True) -> bool:
    return (
        a.kind == b.kind
        and (not shown or (a.line == b.line and a.partitions == b.partitions))
        and len(a.children) == len(b.children)
        and _own_fields(a) == _own_fields(b)
    )


def _own_fields(node: PlanNode) -> list[object]:
    """The node's message without its children: expressions, schemas, options."""
    children = set(node.child_slots)
    return [f for i, f in enumerate(node.fields) if i not in children]


def _describe(a: PlanNode, b: PlanNode) -> str:
    what = "DataFusion 55's plan codec changes this plan"
    name = _node_name(a.line)
    if a.kind != b.kind or len(a.children) != len(b.children):
        return f"{what}: `{_clip(a.line)}` decodes as `{_clip(b.line)}`"
    if a.line != b.line:
        before, after = _changed_part(a.line[len(name) + 2 :], b.line[len(name) + 2 :])
        return f"{what}: {name} `{before}` decodes as `{after}`"
    if a.partitions != b.partitions:
        return f"{what}: {name} has {a.partitions} partitions, {b.partitions} once decoded"
    return f"{what}: {name} encodes differently once decoded (`{_clip(a.line)}`)"


def _clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _changed_part(a: str, b: str, context: int = 30) -> tuple[str, str]:
    """Two lines whole when short, else their differing middle with ``context`` characters around it."""
    if max(len(a), len(b)) <= 100:
        return a, b
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    lo = max(0, start - context)
    head = "..." if lo else ""
    return (
        head + a[lo : len(a) - end + context] + ("..." if end > context else ""),
        head + b[lo : len(b) - end + context] + ("..." if end > context else ""),
    )


def _node_name(line: str) -> str:
    return line.split(":", 1)[0]


# ----------------------------------------------------------------------------------- normalising
#: How datafusion-python marks a Python function (UDF, UDAF, UDWF) it pickles into a plan.
_PYTHON_FUNCTION = b"DFPYUD"


def _without_python_functions(buf: bytes) -> bytes:
    """``buf`` with every pickled Python function cut down to its marker (``DFPYUDF`` etc.).

    A function pickled again after a round trip differs in the pickle's memo (strings that were one
    object become two), not in what it computes, so the bytes of a plan with a UDF never match as
    they are. Only messages that re-encode byte-exactly are entered, so a string is never rewritten.
    """
    if _PYTHON_FUNCTION not in buf:
        return buf
    try:
        fields = protobuf.parse(buf)
    except ProtocolError:
        return buf
    if protobuf.encode(fields) != buf:
        return buf
    out = []
    for f in fields:
        if f.wire_type == protobuf.LEN and isinstance(f.value, bytes):
            marked = f.value.startswith(_PYTHON_FUNCTION)
            f = protobuf.Field(
                f.number, f.wire_type, f.value[:7] if marked else _without_python_functions(f.value)
            )
        out.append(f)
    return protobuf.encode(out)


def _normal(info: NodeInfo) -> NodeInfo:
    line = _normal_line(info.line)
    return info if line == info.line else NodeInfo(info.partitions, line, info.n_children)


#: Parquet read-order hints the codec does not carry: with them a scan reads its row groups sorted
#: by their statistics (or in reverse) so that a TopK above stops early. DataFusion marks such a scan
#: ``Inexact`` and keeps the SortExec above it: the hints change the order rows arrive in, never the
#: rows, and the sort above orders them anyway.
_READ_ORDER_HINT = ", sort_order_for_reorder=["
_REVERSE_HINT = ", reverse_row_groups=true"


def _normal_line(line: str) -> str:
    """A node's display line without what the codec drops harmlessly (the read-order hints)."""
    if not line.startswith("DataSourceExec:"):
        return line
    start = line.find(_READ_ORDER_HINT)
    if start >= 0:
        end = _closing_bracket(line, start + len(_READ_ORDER_HINT) - 1)
        line = line[:start] + line[end + 1 :]
    return line.replace(_REVERSE_HINT, "")


def _closing_bracket(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text) - 1


#: One column of a projection, kept as it is or cast: ``name@i as name`` / ``CAST(name@i AS T) as name``.
_COLUMN = re.compile(
    r"(?:CAST\((?P<cast>[^@]*)@(?P<ci>\d+) AS [^()]*(?:\([^()]*\))?\)|(?P<col>[^@]*)@(?P<i>\d+))"
    r" as (?P<alias>[^,\]]*)(?:, |\]$)"
)


def _is_union_coercion(node: PlanNode) -> bool:
    """Whether ``node`` is the projection DataFusion's decoder puts over a UNION input.

    Decoding a UnionExec whose inputs' fields differ (in nullability, as in TPC-DS q05 and q77) wraps
    each input in a projection that keeps every column in place, cast to the union's type. The union
    already declared those types, so the rows do not change. Only a projection of exactly that shape
    (each column i at position i under its own name, kept or cast) is skipped.
    """
    prefix = "ProjectionExec: expr=["
    if node.kind != "projection" or len(node.children) != 1 or not node.line.startswith(prefix):
        return False
    pos, position = len(prefix), 0
    while pos < len(node.line):
        m = _COLUMN.match(node.line, pos)
        if m is None:
            return False
        name, index = (m["cast"], m["ci"]) if m["cast"] is not None else (m["col"], m["i"])
        if name != m["alias"] or int(index) != position:
            return False
        pos, position = m.end(), position + 1
    return position > 0
