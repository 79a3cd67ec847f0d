"""Exchange inputs: fetch (or read in place) the producer partitions a task needs, splice them in.

Fetched data is written as Arrow IPC files and read back by an Arrow file-scan node spliced where the
plan has an input marker (an in-memory table would embed the data in the plan bytes: 3x slower).
The scan node is made from a per-schema template, never by registering files in a new context.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from datafusion import SessionConfig, SessionContext

from ematix_flow.engine import layout
from ematix_flow.errors import ProtocolError
from ematix_flow.planner.nodes import parse_tree
from ematix_flow.planner.scans import with_file_groups
from ematix_flow.planner.splice import rename_projection
from ematix_flow.transport.messages import InputSpec, Source

Fetch = Callable[[Source], Iterator[pa.RecordBatch]]


@functools.cache
def host_id() -> str:
    """An id of this machine: a consumer with the same id may read a producer's files in place."""
    parts = [socket.gethostname()]
    for p in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        with contextlib.suppress(OSError):
            parts.append(Path(p).read_text().strip())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique: a plan may repeat a name, an Arrow file scan silently may not."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}#dup{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def schema_bytes(schema: pa.Schema) -> bytes:
    """IPC-serialized schema."""
    return bytes(schema.serialize().to_pybytes())


def read_schema(data: bytes) -> pa.Schema:
    """Parse an IPC-serialized schema."""
    try:
        return pa.ipc.read_schema(pa.py_buffer(data))
    except (pa.ArrowException, ValueError) as exc:
        raise ProtocolError(f"malformed schema in task input: {exc}") from exc


def merge_nullability(first: bytes, other: bytes) -> bytes:
    """``first``'s schema with each field nullable where either schema has it nullable.

    Tasks of one stage can report different nullability (a task whose UNION keeps only a branch
    with a non-nullable column); the consumer must declare the column nullable if any task may
    write NULLs into it.
    """
    a, b = read_schema(first), read_schema(other)
    if len(a) != len(b) or all(fa.nullable or not fb.nullable for fa, fb in zip(a, b, strict=True)):
        return first
    fields = [fa.with_nullable(fa.nullable or fb.nullable) for fa, fb in zip(a, b, strict=True)]
    return schema_bytes(pa.schema(fields, metadata=a.metadata))


class ScanTemplates:
    """Arrow file-scan node bytes per schema, made once from an empty IPC file."""

    def __init__(self, scratch: Path) -> None:
        self._scratch = scratch
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._ctx: SessionContext | None = None

    def scan(self, schema: pa.Schema, groups: list[list[tuple[str, int]]], names: list[str]) -> bytes:
        """A scan node reading ``groups`` of IPC files with ``schema``, renamed to ``names``."""
        raw = schema_bytes(schema)
        key = hashlib.sha256(raw).hexdigest()[:24]
        with self._lock:
            template = self._cache.get(key)
            if template is None:
                template = self._make(key, schema)
                self._cache[key] = template
        scan = with_file_groups(template, groups)
        if names != schema.names:
            scan = rename_projection(scan, schema.names, names)
        return scan

    def _make(self, key: str, schema: pa.Schema) -> bytes:
        self._scratch.mkdir(parents=True, exist_ok=True)
        path = self._scratch / f"template-{key}.arrow"
        with pa.ipc.new_file(str(path), schema):
            pass
        if self._ctx is None:
            config = SessionConfig().with_target_partitions(1).with_repartition_file_scans(False)
            self._ctx = SessionContext(config)
        name = f"t{key}"
        self._ctx.register_arrow(name, str(path))
        plan = self._ctx.table(name).execution_plan()
        self._ctx.deregister_table(name)
        nodes = list(parse_tree(plan.to_bytes()).walk())
        leaves = [n for n in nodes if not n.children]
        if len(leaves) != 1 or leaves[0].kind != "arrow_scan":
            raise ProtocolError(f"unexpected plan for an Arrow file scan: {[n.kind for n in nodes]}")
        return leaves[0].to_bytes()


def materialize(
    spec: InputSpec,
    task_dir: Path,
    fetch: Fetch,
    local_reads: bool,
    pool: ThreadPoolExecutor,
) -> tuple[list[list[tuple[str, int]]], int]:
    """Local files (path, size) per scan partition of one input, and the bytes fetched over Flight."""
    me = host_id()
    groups = spec.sources()
    out: list[list[tuple[str, int]]] = [[] for _ in groups]
    jobs = []
    for g, sources in enumerate(groups):
        for n, src in enumerate(sources):
            if local_reads and src.host_id == me and layout.is_shuffle_file(src.path):
                out[g].append((src.path, src.nbytes))
            else:
                dest = layout.input_path(task_dir, spec.index, g, n)
                jobs.append((g, pool.submit(_fetch_to_file, fetch, src, dest)))
    fetched = 0
    for g, fut in jobs:
        got = fut.result()
        if got is not None:
            out[g].append(got)
            fetched += got[1]
    return out, fetched


def _fetch_to_file(fetch: Fetch, src: Source, dest: Path) -> tuple[str, int] | None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer: pa.ipc.RecordBatchFileWriter | None = None
    try:
        for batch in fetch(src):
            if writer is None:
                writer = pa.ipc.new_file(str(dest), batch.schema)
            writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        return None  # nothing arrived: nothing to scan
    return str(dest), dest.stat().st_size
