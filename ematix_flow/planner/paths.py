"""The files a plan touches: every file scan's inputs and every file sink's outputs, read off the wire.

A worker checks these against its ``--data-root`` list before it decodes a plan. Field numbers are
DataFusion 55's (``FileScanExecConf`` and ``FileSinkConfig`` in ``datafusion.proto``); an unknown node
kind fails in :func:`~ematix_flow.planner.nodes.parse_tree`, so no subtree escapes the walk.
"""

from __future__ import annotations

from dataclasses import dataclass

from ematix_flow import protobuf
from ematix_flow.planner.nodes import FILE_SCANS, PlanNode, parse_tree

#: Sink nodes (``DataSinkExec``) and where their ``FileSinkConfig`` sits: node field 2 (the sink),
#: then its field 1 (the config).
FILE_SINKS = frozenset({"json_sink", "csv_sink", "parquet_sink"})
_SCAN_CONF, _SCAN_GROUPS, _SCAN_STORE = 1, 1, 8  # <Kind>ScanExecNode.base_conf; FileScanExecConf fields
_GROUP_FILES, _FILE_PATH = 1, 1  # FileGroup.files; PartitionedFile.path
_SINK, _SINK_CONF = 2, 1  # <Kind>SinkExecNode.sink; <Kind>Sink.config
_SINK_STORE, _SINK_FILES, _SINK_TABLE_PATHS = 1, 2, 3  # FileSinkConfig fields


@dataclass(frozen=True)
class FileAccess:
    """One file or directory a plan reads or writes."""

    path: str  # as the plan names it: object-store path ("tmp/x.parquet") or URL ("file:///tmp/out/")
    store: str  # the object store URL ("file:///" for local files)
    write: bool
    node: str  # the plan node kind that touches it

    @property
    def url(self) -> str:
        """The whole URL: ``s3://lake/t/part-0.parquet``, ``file:///tmp/x.parquet``."""
        if "://" in self.path:
            return self.path
        return f"{self.store.rstrip('/')}/{self.path.lstrip('/')}"


def file_accesses(plan: bytes) -> list[FileAccess]:
    """Every file the serialized physical plan reads (scans) or writes (sinks)."""
    out: list[FileAccess] = []
    for node in parse_tree(plan).walk():
        if node.kind in FILE_SCANS:
            out += _scan_files(node)
        elif node.kind in FILE_SINKS:
            out += _sink_files(node)
    return out


def _first(fields: list[protobuf.Field], number: int) -> protobuf.Field | None:
    return next((f for f in fields if f.number == number and f.wire_type == protobuf.LEN), None)


def _all(fields: list[protobuf.Field], number: int) -> list[bytes]:
    return [f.data for f in fields if f.number == number and f.wire_type == protobuf.LEN]


def _partitioned_file_paths(files: list[bytes]) -> list[str]:
    paths = []
    for f in files:
        path = _first(protobuf.parse(f), _FILE_PATH)
        paths.append(path.data.decode("utf-8", "replace") if path else "")
    return paths


def _scan_files(node: PlanNode) -> list[FileAccess]:
    conf_field = _first(node.fields, _SCAN_CONF)
    if conf_field is None:
        return []
    conf = protobuf.parse(conf_field.data)
    store_field = _first(conf, _SCAN_STORE)
    store = store_field.data.decode("utf-8", "replace") if store_field else ""
    files = [f for g in _all(conf, _SCAN_GROUPS) for f in _all(protobuf.parse(g), _GROUP_FILES)]
    return [FileAccess(p, store, False, node.kind) for p in _partitioned_file_paths(files)]


def _sink_files(node: PlanNode) -> list[FileAccess]:
    sink = _first(node.fields, _SINK)
    conf_field = _first(protobuf.parse(sink.data), _SINK_CONF) if sink else None
    if conf_field is None:
        return []
    conf = protobuf.parse(conf_field.data)
    store_field = _first(conf, _SINK_STORE)
    store = store_field.data.decode("utf-8", "replace") if store_field else ""
    paths = [p.decode("utf-8", "replace") for p in _all(conf, _SINK_TABLE_PATHS)]
    paths += _partitioned_file_paths(_all(conf, _SINK_FILES))
    return [FileAccess(p, store, True, node.kind) for p in paths]
