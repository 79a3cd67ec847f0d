"""The protobuf fields of each plan node kind that the plan walker knows, and the check that says so.

The walker (``nodes.parse_tree``) finds a node's children by field number and carries every other
field as opaque bytes. A field it does not know could be a child plan it would not see (its input
markers never spliced, its scans never sliced) or a setting that slicing leaves inconsistent: either
way a peer could run another plan than DataFusion made. So every field of every node must be in
:data:`KNOWN_FIELDS`, or the walker raises :class:`UnknownFieldError` naming the node, the field and
the fix: the submitter then runs the plan uncut, in-process (``planning.plan_query``), and a worker
refuses the task.

The table is DataFusion 55's encoding: the fields of ``datafusion.proto``'s ``*ExecNode`` messages
(numbers and wire types) as of DataFusion 50, joined with every (field, wire type) that DataFusion 55
wrote for the plans of tests/test_plan_fields.py (TPC-H, TPC-DS, operator forms, fuzzed queries, at
1, 2 and 4 partitions, and their task slices). That test fails when DataFusion writes a field the
table lacks; a new DataFusion version must pass it before the lock moves.
"""

from __future__ import annotations

from importlib.metadata import version

from ematix_flow import protobuf
from ematix_flow.errors import UnknownFieldError

V, L = protobuf.VARINT, protobuf.LEN
#: The DataFusion release whose encoding the table was verified against (the locked one).
VERIFIED_WITH = "55.0.0"

#: node kind -> {field number: wire type}.
KNOWN_FIELDS: dict[str, dict[int, int]] = {
    "parquet_scan": {1: L, 3: L, 4: L},
    "csv_scan": {1: L, 2: V, 3: L, 4: L, 5: L, 6: L, 7: V, 8: V},
    "json_scan": {1: L},
    "avro_scan": {1: L},
    "arrow_scan": {1: L},
    "memory_scan": {1: L, 2: L, 3: L, 4: L, 5: V, 6: V},
    "empty": {1: L, 2: V},
    "placeholder_row": {1: L, 2: V},
    "generate_series": {1: L, 2: V, 3: L, 4: L, 5: L, 6: L},
    "explain": {1: L, 2: L, 3: V},
    "analyze": {1: V, 2: V, 3: L, 4: L},
    "projection": {1: L, 2: L, 3: L},
    "filter": {1: L, 2: L, 3: V, 9: L, 10: V, 11: V},
    "global_limit": {1: L, 2: V, 3: V},
    "local_limit": {1: L, 2: V},
    "aggregate": {1: L, 2: L, 3: V, 4: L, 5: L, 6: L, 7: L, 8: L, 9: L, 10: L, 11: L, 12: V, 14: L},
    "hash_join": {1: L, 2: L, 3: L, 4: V, 6: V, 7: V, 8: L, 9: L, 10: V, 11: L, 12: V},
    "symmetric_hash_join": {1: L, 2: L, 3: L, 4: V, 6: V, 7: V, 8: L, 9: L, 10: L},
    "sort_merge_join": {1: L, 2: L, 3: L, 4: V, 5: L, 6: L, 7: V},
    "nested_loop_join": {1: L, 2: L, 3: V, 4: L, 5: L},
    "cross_join": {1: L, 2: L},
    "sort": {1: L, 2: L, 3: V, 4: V, 5: L},
    "sort_preserving_merge": {1: L, 2: L, 3: V},
    "coalesce_batches": {1: L, 2: V, 3: V},
    "coalesce_partitions": {1: L, 2: V},
    "repartition": {1: L, 5: L, 6: V},  # 6: preserve_order
    "window": {1: L, 2: L, 5: L, 7: L, 8: L, 9: L},
    "union": {1: L},
    "interleave": {1: L},
    "unnest": {1: L, 2: L, 3: L, 4: L, 5: L},
    "cooperative": {1: L},
    "extension": {1: L, 2: L},
    "json_sink": {1: L, 2: L, 3: L, 4: L},
    "csv_sink": {1: L, 2: L, 3: L, 4: L},
    "parquet_sink": {1: L, 2: L, 3: L, 4: L},
    "scalar_subquery": {1: L, 2: L},
    "input": {1: V},  # our exchange-input marker (nodes.INPUT_FIELD)
}

#: ``FileScanExecConf`` (field 1 of every file scan), whose file groups slicing rewrites.
SCAN_CONF_FIELDS: dict[int, int] = {1: L, 2: L, 4: L, 5: L, 6: L, 7: L, 8: L, 9: L, 11: L, 12: V, 13: L}

_WIRE_NAMES = {protobuf.VARINT: "varint", protobuf.LEN: "length-delimited", 1: "64-bit", 5: "32-bit"}


def field_problem(kind: str, fields: list[protobuf.Field], known: dict[int, int] | None = None) -> str | None:
    """What in one node's fields the walker does not know (None: every field is known)."""
    table = KNOWN_FIELDS.get(kind) if known is None else known
    if table is None:
        return f"plan node kind {kind} has no verified field list"
    for f in fields:
        if table.get(f.number) != f.wire_type:
            wire = _WIRE_NAMES.get(f.wire_type, str(f.wire_type))
            return f"plan node {kind} carries protobuf field #{f.number} ({wire}) unknown to the plan walker"
    return None


def check_fields(kind: str, fields: list[protobuf.Field], file_scan: bool = False) -> None:
    """Raise UnknownFieldError when a node (or a file scan's ``base_conf``) has a field the walker lacks."""
    problem = field_problem(kind, fields)
    conf = protobuf.first(fields, 1) if file_scan and problem is None else None
    if conf is not None:
        problem = field_problem(f"{kind} base_conf", protobuf.parse(conf.data), SCAN_CONF_FIELDS)
    if problem is None:
        return
    installed = version("datafusion")
    if installed != VERIFIED_WITH:
        raise UnknownFieldError(
            f"{problem}: datafusion {installed} encodes plans unlike the {VERIFIED_WITH} "
            f"ematix-flow was verified with (install datafusion=={VERIFIED_WITH})"
        )
    raise UnknownFieldError(
        f"{problem}: ematix-flow's field table misses it for datafusion {installed} "
        "(please report the query as a bug)"
    )
