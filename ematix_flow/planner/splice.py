"""Plan surgery at a task's inputs: scan nodes spliced where the input markers are.

A worker (or the submitter, for the root stage) turns each input of a task into a scan of local IPC
files (``engine/exchange.py``) and calls :func:`splice` to put the scans in the plan; a scan whose
on-disk column names differ from the plan's (made unique) gets :func:`rename_projection` on top.
"""

from __future__ import annotations

from ematix_flow import protobuf
from ematix_flow.errors import ProtocolError
from ematix_flow.planner.nodes import PlanNode, input_index, parse_tree


def rename_projection(child: bytes, unique: list[str], original: list[str]) -> bytes:
    """ProjectionExec over ``child`` renaming ``unique`` columns back to ``original``."""
    exprs = []
    for i, name in enumerate(unique):
        index = [protobuf.varint(2, i)] if i else []  # 0 is the default: left out, as DataFusion does
        column = protobuf.encode([protobuf.message(1, name.encode()), *index])
        exprs.append(protobuf.message(2, protobuf.encode([protobuf.message(1, column)])))
    names = [protobuf.message(3, n.encode()) for n in original]
    body = protobuf.encode([protobuf.message(1, child), *exprs, *names])
    return protobuf.encode([protobuf.message(4, body)])


def splice(plan: bytes, scans: dict[int, bytes]) -> bytes:
    """Replace every input marker in ``plan`` with its scan node.

    Raises:
        ProtocolError: the plan has a marker of an input ``scans`` does not hold.
    """

    def visit(node: PlanNode) -> PlanNode:
        if node.kind == "input":
            idx = input_index(node)
            if idx not in scans:
                raise ProtocolError(f"task plan references input {idx} that the task does not carry")
            return parse_tree(scans[idx])
        return node.with_children([visit(c) for c in node.children])

    return visit(parse_tree(plan)).to_bytes()
