"""Lake-table scans: a template scan made concrete with a snapshot's data files.

A Delta or Iceberg table is registered for planning as a Parquet table over *template* files (empty
Parquet files with the table's columns, partition columns last, ``engine/lakes.py``): DataFusion
plans it as any Parquet scan, with one file group per template file. Before the plan is cut, each
template scan gets the snapshot's files instead (:func:`concretize`): spread over the same number
of groups (big files split into byte ranges), on the table's object store, with each file's
partition values and the partition columns declared as such (they are not in the data files).
Field numbers are DataFusion 55's (``FileScanExecConf``, ``PartitionedFile`` in ``datafusion.proto``).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, replace

from ematix_flow import protobuf
from ematix_flow.errors import PlanningError
from ematix_flow.planner.nodes import FILE_SCANS, PlanNode, parse_tree

_BASE_CONF = 1  # ParquetScanExecNode.base_conf
_GROUPS, _PARTITION_COLS, _STORE = 1, 7, 8  # FileScanExecConf fields
_FILES = 1  # FileGroup.files
_PATH, _SIZE, _VALUES, _RANGE = 1, 2, 4, 5  # PartitionedFile fields

#: Files smaller than this are never split into byte ranges (DataFusion's repartition_file_min_size).
MIN_SPLIT_BYTES = 256 * 1024


@dataclass(frozen=True)
class LakeFile:
    """One data file of a snapshot: its path in the store, size and encoded partition values."""

    path: str  # object-store path, no leading "/" ("t/p=1/part-0.parquet"), as PartitionedFile.path
    size: int
    partition_values: tuple[bytes, ...] = ()  # ScalarValue messages, in partition-column order


@dataclass(frozen=True)
class LakeScan:
    """What a template scan reads instead of its template files."""

    template: str  # the folder of the template files, as the plan names it ("tmp/flow-lake-x/t1/")
    store: str  # the object store URL of the data files ("file://", "s3://lake")
    partition_columns: tuple[str, ...]
    files: tuple[LakeFile, ...]
    label: str  # how explain shows it: "delta orders v3: 4 of 12 files"


def concretize(plan: bytes, scans: list[LakeScan]) -> tuple[bytes, dict[int, str]]:
    """``plan`` with every template scan of ``scans`` reading its snapshot's files.

    Returns the plan bytes and, for each scan replaced, its pre-order node index -> its label.

    Raises:
        PlanningError: a template scan is not a Parquet scan (a lake table read in another way).
    """
    labels: dict[int, str] = {}
    if not scans:
        return plan, labels
    index = -1

    def visit(node: PlanNode) -> PlanNode:
        nonlocal index
        index += 1
        if node.kind in FILE_SCANS:
            scan = _template_of(node, scans)
            if scan is None:
                return node
            if node.kind != "parquet_scan":
                raise PlanningError(f"lake table read by a {node.kind}: only Parquet scans are supported")
            labels[index] = scan.label
            return _concrete(node, scan)
        return node.with_children([visit(c) for c in node.children])

    out = visit(parse_tree(plan)).to_bytes()
    return out, labels


def _conf(node: PlanNode) -> tuple[int, list[protobuf.Field]]:
    for i, f in enumerate(node.fields):
        if f.number == _BASE_CONF:
            return i, protobuf.parse(f.data)
    raise PlanningError(f"{node.kind} has no file scan configuration")


def _paths(conf: list[protobuf.Field]) -> list[str]:
    out = []
    for group in conf:
        if group.number != _GROUPS:
            continue
        for f in protobuf.parse(group.data):
            if f.number == _FILES:
                path = protobuf.first(protobuf.parse(f.data), _PATH)
                out.append(path.data.decode() if path is not None else "")
    return out


def _template_of(node: PlanNode, scans: list[LakeScan]) -> LakeScan | None:
    paths = _paths(_conf(node)[1])
    for scan in scans:
        prefix = scan.template.lstrip("/")
        if paths and all(p.lstrip("/").startswith(prefix) for p in paths):
            return scan
    return None


def _concrete(node: PlanNode, scan: LakeScan) -> PlanNode:
    slot, conf = _conf(node)
    n_groups = sum(1 for f in conf if f.number == _GROUPS)
    groups = [
        protobuf.message(_GROUPS, protobuf.encode([protobuf.message(_FILES, pf) for pf in group]))
        for group in spread(scan.files, n_groups)
    ]
    rest = [f for f in conf if f.number not in (_GROUPS, _STORE, _PARTITION_COLS)]
    cols = [protobuf.message(_PARTITION_COLS, c.encode()) for c in scan.partition_columns]
    new_conf = groups + rest + cols + [protobuf.message(_STORE, scan.store.encode())]
    fields = list(node.fields)
    fields[slot] = protobuf.message(_BASE_CONF, protobuf.encode(new_conf))
    return replace(node, fields=fields)


def spread(files: tuple[LakeFile, ...], n_groups: int) -> list[list[bytes]]:
    """``files`` as ``n_groups`` groups of ``PartitionedFile`` messages of about equal bytes.

    A file bigger than a group's share is split into byte ranges (Parquet readers take the row
    groups whose middle falls in a range), so a table of few big files still reads in parallel.
    """
    total = sum(f.size for f in files)
    share = max(total // max(n_groups, 1), MIN_SPLIT_BYTES)
    pieces: list[tuple[int, bytes]] = []
    for f in files:
        if f.size <= share:
            pieces.append((f.size, _partitioned_file(f)))
            continue
        n = -(-f.size // share)
        bounds = [f.size * i // n for i in range(n + 1)]
        pieces += [(e - s, _partitioned_file(f, s, e)) for s, e in itertools.pairwise(bounds)]
    heap = [(0, i) for i in range(n_groups)]
    groups: list[list[bytes]] = [[] for _ in range(n_groups)]
    for size, piece in sorted(pieces, key=lambda p: -p[0]):
        load, i = heapq.heappop(heap)
        groups[i].append(piece)
        heapq.heappush(heap, (load + size, i))
    return groups


def _partitioned_file(f: LakeFile, start: int | None = None, end: int | None = None) -> bytes:
    fields = [protobuf.message(_PATH, f.path.lstrip("/").encode())]
    if f.size:
        fields.append(protobuf.varint(_SIZE, f.size))
    fields += [protobuf.message(_VALUES, v) for v in f.partition_values]
    if start is not None and end is not None:
        rng = ([protobuf.varint(1, start)] if start else []) + [protobuf.varint(2, end)]
        fields.append(protobuf.message(_RANGE, protobuf.encode(rng)))
    return protobuf.encode(fields)
