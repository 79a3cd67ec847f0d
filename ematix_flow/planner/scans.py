"""File-scan editing: the file groups (byte ranges) that make a scan's partitions."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ematix_flow import protobuf
from ematix_flow.errors import PlanningError
from ematix_flow.planner.nodes import FILE_SCANS, PlanNode

_BASE_CONF = 1  # <Kind>ScanExecNode.base_conf
_FILE_GROUPS = 1  # FileScanExecConf.file_groups
_FILES = 1  # FileGroup.files
_PATH, _SIZE, _RANGE = 1, 2, 5  # PartitionedFile.path / size / range
_START, _END = 1, 2  # FileRange.start / end


@dataclass(frozen=True)
class FileSlice:
    """One file (or a byte range of it) in a file group."""

    path: str
    size: int
    start: int | None = None
    end: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes this slice covers."""
        if self.start is not None and self.end is not None:
            return self.end - self.start
        return self.size


def _base_conf(node: PlanNode) -> tuple[int, list[protobuf.Field]]:
    if node.kind not in FILE_SCANS:
        raise PlanningError(f"{node.kind} is not a file scan")
    for i, f in enumerate(node.fields):
        if f.number == _BASE_CONF:
            return i, protobuf.parse(f.data)
    raise PlanningError(f"{node.kind} has no file scan configuration")


def file_groups(node: PlanNode) -> list[list[FileSlice]]:
    """The scan's file groups, one per output partition."""
    _, conf = _base_conf(node)
    groups = []
    for g in conf:
        if g.number != _FILE_GROUPS:
            continue
        files = []
        for f in protobuf.parse(g.data):
            if f.number != _FILES:
                continue
            pf = {x.number: x for x in protobuf.parse(f.data)}
            path = pf[_PATH].data.decode() if _PATH in pf else ""
            size = pf[_SIZE].int if _SIZE in pf else 0
            start = end = None
            if _RANGE in pf:
                rng = {x.number: x.int for x in protobuf.parse(pf[_RANGE].data)}
                start, end = rng.get(_START, 0), rng.get(_END, 0)
            files.append(FileSlice("/" + path.lstrip("/"), size, start, end))
        groups.append(files)
    return groups


def scan_bytes(node: PlanNode, keep: list[int] | None = None) -> int:
    """Bytes read by the scan's file groups (all, or those in ``keep``)."""
    groups = file_groups(node)
    chosen = groups if keep is None else [groups[i] for i in keep]
    return sum(f.nbytes for g in chosen for f in g)


def keep_groups(node: PlanNode, keep: list[int]) -> PlanNode:
    """A copy of the scan reading only file groups ``keep`` (in that order)."""
    slot, conf = _base_conf(node)
    groups = [f for f in conf if f.number == _FILE_GROUPS]
    if any(i >= len(groups) for i in keep):
        raise PlanningError(f"scan has {len(groups)} file groups, task asked for {keep}")
    rest = [f for f in conf if f.number != _FILE_GROUPS]
    new_conf = protobuf.encode([groups[i] for i in keep] + rest)
    fields = list(node.fields)
    fields[slot] = protobuf.message(_BASE_CONF, new_conf)
    return replace(node, fields=fields, partitions=len(keep))


def encode_file_groups(groups: list[list[tuple[str, int]]]) -> list[protobuf.Field]:
    """FileGroup fields for ``groups`` of (absolute path, size) files, as DataFusion encodes them.

    (A size of 0 is the field's default: left out, as protobuf encoders do.)
    """
    out = []
    for files in groups:
        pfs = []
        for p, s in files:
            file = [protobuf.message(_PATH, p.lstrip("/").encode())] + (
                [protobuf.varint(_SIZE, s)] if s else []
            )
            pfs.append(protobuf.message(_FILES, protobuf.encode(file)))
        out.append(protobuf.message(_FILE_GROUPS, protobuf.encode(pfs)))
    return out


def with_file_groups(scan_bytes_: bytes, groups: list[list[tuple[str, int]]]) -> bytes:
    """Scan-node bytes like ``scan_bytes_`` but reading ``groups`` (a template scan made concrete)."""
    (node,) = protobuf.parse(scan_bytes_)
    body = protobuf.parse(node.data)
    out_body = []
    for f in body:
        if f.number == _BASE_CONF:
            rest = [x for x in protobuf.parse(f.data) if x.number != _FILE_GROUPS]
            f = protobuf.message(_BASE_CONF, protobuf.encode(encode_file_groups(groups) + rest))
        out_body.append(f)
    return protobuf.encode([protobuf.message(node.number, protobuf.encode(out_body))])
