"""The plan tree: DataFusion 55 ``PhysicalPlanNode`` messages with their children made explicit.

Field numbers come from DataFusion 55's ``datafusion.proto`` (``PhysicalPlanNode.physical_plan_type``),
checked by the test that walks every TPC-H plan and compares the walk with ``ExecutionPlan.children()``.
An unknown node kind, or a field of a node that the walker does not know (``fields.py``), fails
loudly: treating it as opaque could silently drop a subtree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from ematix_flow import protobuf
from ematix_flow.errors import PlanningError
from ematix_flow.planner.fields import check_fields

#: PhysicalPlanNode oneof field number -> our name for the node kind.
NODE_KINDS: dict[int, str] = {
    1: "parquet_scan",
    2: "csv_scan",
    3: "empty",
    4: "projection",
    6: "global_limit",
    7: "local_limit",
    8: "aggregate",
    9: "hash_join",
    10: "sort",
    11: "coalesce_batches",
    12: "filter",
    13: "coalesce_partitions",
    14: "repartition",
    15: "window",
    16: "cross_join",
    17: "avro_scan",
    18: "extension",
    19: "union",
    20: "explain",
    21: "sort_preserving_merge",
    22: "nested_loop_join",
    23: "analyze",
    24: "json_sink",
    25: "symmetric_hash_join",
    26: "interleave",
    27: "placeholder_row",
    28: "csv_sink",
    29: "parquet_sink",
    30: "unnest",
    31: "json_scan",
    32: "cooperative",
    33: "generate_series",
    34: "sort_merge_join",
    35: "memory_scan",
    38: "arrow_scan",
    39: "scalar_subquery",
}

#: Our exchange-input marker: a PhysicalPlanNode field DataFusion does not use. A worker replaces
#: every such node with a scan of the fetched input before it decodes the plan.
INPUT_FIELD = 1000
NODE_KINDS[INPUT_FIELD] = "input"

#: Fields of the kind's message that hold child PhysicalPlanNodes (default: field 1, the input).
CHILD_FIELDS: dict[str, tuple[int, ...]] = {
    "aggregate": (4,),
    "hash_join": (1, 2),
    "cross_join": (1, 2),
    "nested_loop_join": (1, 2),
    "symmetric_hash_join": (1, 2),
    "sort_merge_join": (1, 2),
    "union": (1,),
    "interleave": (1,),
    "analyze": (3,),
    "extension": (2,),
    "scalar_subquery": (1, 2),
}

LEAVES = frozenset(
    {
        "parquet_scan",
        "csv_scan",
        "json_scan",
        "avro_scan",
        "arrow_scan",
        "empty",
        "explain",
        "placeholder_row",
        "generate_series",
        "memory_scan",
        "input",
    }
)

#: Leaves whose partitions are file groups (``base_conf`` = field 1, ``file_groups`` = field 1 in it).
FILE_SCANS = frozenset({"parquet_scan", "csv_scan", "json_scan", "avro_scan", "arrow_scan"})

GATHERS = frozenset({"coalesce_partitions", "sort_preserving_merge"})

#: Deepest plan accepted: far beyond real plans, well within Python's recursion limit.
MAX_PLAN_DEPTH = 400


@dataclass(frozen=True)
class NodeInfo:
    """What the DataFusion API says about one node (pre-order), to pair with its wire form."""

    partitions: int
    line: str
    n_children: int


@dataclass
class PlanNode:
    """One physical plan node: its kind, its own message's fields and its children."""

    kind: str
    number: int
    fields: list[protobuf.Field]
    child_slots: list[int]
    children: list[PlanNode]
    partitions: int = 1
    line: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialize this subtree as a PhysicalPlanNode message."""
        fields = list(self.fields)
        for slot, child in zip(self.child_slots, self.children, strict=True):
            fields[slot] = protobuf.message(fields[slot].number, child.to_bytes())
        return protobuf.encode([protobuf.message(self.number, protobuf.encode(fields))])

    def walk(self) -> Iterator[PlanNode]:
        """Pre-order traversal."""
        yield self
        for c in self.children:
            yield from c.walk()

    def with_children(self, children: list[PlanNode], slots: list[int] | None = None) -> PlanNode:
        """A copy with other children (and, when children were removed, the slots they keep)."""
        if slots is None:
            return replace(self, children=children)
        keep = set(slots)
        removed = [s for s in self.child_slots if s not in keep]
        fields = [f for i, f in enumerate(self.fields) if i not in removed]
        remap = {old: new for new, old in enumerate(i for i in range(len(self.fields)) if i not in removed)}
        return replace(self, fields=fields, child_slots=[remap[s] for s in slots], children=children)


def node_kind(node_bytes: bytes) -> tuple[int, str, bytes]:
    """(oneof field number, kind name, body) of a serialized PhysicalPlanNode."""
    fields = protobuf.parse(node_bytes)
    if len(fields) != 1 or fields[0].wire_type != protobuf.LEN:
        raise PlanningError("not a DataFusion PhysicalPlanNode (expected exactly one node field)")
    number = fields[0].number
    kind = NODE_KINDS.get(number)
    if kind is None:
        raise PlanningError(
            f"unknown DataFusion plan node #{number}: this datafusion version is not supported "
            "(ematix-flow needs datafusion 55.x)"
        )
    return number, kind, fields[0].data


def parse_tree(node_bytes: bytes, depth: int = 0) -> PlanNode:
    """Decode plan bytes into a :class:`PlanNode` tree (wire facts only)."""
    if depth > MAX_PLAN_DEPTH:
        raise PlanningError(f"plan nested deeper than {MAX_PLAN_DEPTH} nodes: refused")
    number, kind, body = node_kind(node_bytes)
    fields = protobuf.parse(body)
    check_fields(kind, fields, file_scan=kind in FILE_SCANS)
    slots: list[int] = []
    if kind not in LEAVES:
        wanted = CHILD_FIELDS.get(kind, (1,))
        slots = [i for i, f in enumerate(fields) if f.number in wanted and f.wire_type == protobuf.LEN]
    children = [parse_tree(fields[i].data, depth + 1) for i in slots]
    return PlanNode(kind, number, fields, slots, children)


def attach_infos(root: PlanNode, infos: list[NodeInfo]) -> PlanNode:
    """Pair the wire tree with the API's view, failing loudly where their structures differ."""
    nodes = list(root.walk())
    if len(nodes) != len(infos):
        raise PlanningError(
            f"plan walk found {len(nodes)} nodes but DataFusion reports {len(infos)}: "
            "the plan encoding changed (is datafusion 55.x installed?)"
        )
    for i, (node, info) in enumerate(zip(nodes, infos, strict=True)):
        if len(node.children) != info.n_children:
            raise PlanningError(
                f"plan node {i} ({node.kind}) has {len(node.children)} children on the wire but "
                f"{info.n_children} in DataFusion ({info.line[:60]})"
            )
        node.partitions = info.partitions
        node.line = info.line
        node.meta["index"] = i
    return root


def input_node(index: int, partitions: int, line: str) -> PlanNode:
    """The marker node standing for exchange input ``index`` of a stage."""
    fields = [protobuf.varint(1, index)]
    return PlanNode("input", INPUT_FIELD, fields, [], [], partitions=partitions, line=line)


def input_index(node: PlanNode) -> int:
    """The input number carried by a marker node."""
    return node.fields[0].int
