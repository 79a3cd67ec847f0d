"""Running one task on a worker (or the root stage on a submitter): inputs, plan, outputs."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from datafusion import SessionContext
from datafusion.plan import ExecutionPlan

from ematix_flow.engine import layout
from ematix_flow.engine.exchange import (
    ScanTemplates,
    host_id,
    materialize,
    read_schema,
    schema_bytes,
    unique_names,
)
from ematix_flow.engine.run import decode, write_partitions
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.planner.splice import splice
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import Source, TaskResult, TaskSpec

log = logging.getLogger(__name__)


class TaskRunner:
    """Turns a TaskSpec into a runnable plan, and runs it: shared by workers and submitters."""

    def __init__(
        self,
        ctx: SessionContext,
        pool: ClientPool,
        scratch: Path,
        fetch_timeout: float | None,
        storage: StorageConfig | None = None,
    ) -> None:
        self.ctx = ctx
        self.storage = storage or StorageConfig()
        self.pool = pool
        self.templates = ScanTemplates(scratch / layout.TEMPLATES_DIR)
        self.fetchers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")
        self.fetch_timeout = fetch_timeout

    def _fetch(self, src: Source) -> Iterator[pa.RecordBatch]:
        return self.pool.stream(src.address, src.ticket, self.fetch_timeout)

    def prepare(self, spec: TaskSpec, task_dir: Path) -> tuple[ExecutionPlan, int]:
        """Fetch or locate the task's inputs, splice them into its plan, decode it."""
        scans: dict[int, bytes] = {}
        fetched = 0
        for inp in spec.input_specs():
            groups, nbytes = materialize(inp, task_dir, self._fetch, spec.local_reads, self.fetchers)
            fetched += nbytes
            scans[inp.index] = self.templates.scan(read_schema(inp.schema), groups, inp.names)
        plan = splice(spec.plan, scans) if scans else spec.plan
        return decode(self.ctx, plan, self.storage), fetched

    def run(self, spec: TaskSpec, task_dir: Path, cancel: threading.Event | None = None) -> TaskResult:
        """Run a producer task; its outputs stay in ``task_dir/out`` until the query is released."""
        t0 = time.perf_counter()
        if task_dir.exists():
            shutil.rmtree(task_dir)  # a previous attempt of the same task
        task_dir.mkdir(parents=True)
        try:
            plan, fetched = self.prepare(spec, task_dir)
            out = task_dir / layout.OUT_DIR
            parts = write_partitions(self.ctx, plan, out, cancel, spec.plan)
        finally:
            for p in layout.input_dirs(task_dir):
                shutil.rmtree(p, ignore_errors=True)  # consumed inputs
        schema = next((p.schema for p in parts if p.schema is not None), None)
        disk_schema = None
        names: list[str] = []
        if schema is not None:
            names = list(schema.names)
            disk = pa.schema([f.with_name(n) for f, n in zip(schema, unique_names(names), strict=True)])
            disk_schema = schema_bytes(disk)
        outputs = [
            {"partition": p.partition, "rows": p.rows, "nbytes": p.nbytes, "path": p.path}
            for p in parts
            if p.rows
        ]
        seconds = time.perf_counter() - t0
        rows = sum(p.rows for p in parts)
        log.info("done: %d rows in %d partitions, %.3fs", rows, len(parts), seconds)
        return TaskResult(outputs, disk_schema, names, rows, seconds, host_id(), fetched)
