"""Running a decoded task plan: every partition drained concurrently.

Draining a partitioned hash join's partitions one after another can deadlock through dynamic
filters (DESIGN.md), so all partitions of a plan always run at the same time, one thread each.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from datafusion import SessionContext
from datafusion.plan import ExecutionPlan

from ematix_flow.engine import layout, stores
from ematix_flow.engine.exchange import unique_names
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import AccessDeniedError, FlowError, ProtocolError, TaskFailedError, first_line

#: The most partitions any node of a task plan may have (each output partition runs on a thread).
MAX_PARTITIONS = 1024

#: DataFusion's refusal of an inline (pickled) Python UDF in a session with UDF inlining off.
_UDF_REFUSED = re.compile(r"Refusing to deserialize inline Python (\w+) UDF '([^']*)'")
#: DataFusion failures that mean "this stage cannot start over spliced inputs", not "the data or the
#: peer is bad": a spliced input scan cannot declare the orderings and constant columns DataFusion
#: knew at the exchange, and some operators assert on them when they start.
_CUT_FAILURES = (
    "Internal error",  # an operator's assertion on orderings / partitioning its input cannot declare
    "column types must match schema types",  # nested field names pyarrow renames (a map's entries)
    # a window over a sort that left out its PARTITION BY columns because a filter below the exchange
    # pinned them to one value (BoundedWindowAggExec checks that when it starts, as an Execution error)
    "Expects PARTITION BY expression to be ordered",
)


@dataclass(frozen=True)
class PartitionOutput:
    """One output partition written to disk."""

    partition: int
    rows: int
    nbytes: int
    path: str
    schema: pa.Schema | None


def decode(ctx: SessionContext, plan: bytes, storage: StorageConfig | None = None) -> ExecutionPlan:
    """Decode task plan bytes in ``ctx``; a plan wider than MAX_PARTITIONS anywhere is refused.

    ``storage``: register a store on ``ctx`` for every bucket the plan reads or writes, from this
    process's configuration (plans carry URLs, never credentials) before decoding it.
    """
    if storage is not None:
        stores.register(ctx, stores.plan_urls(plan), storage)
    try:
        decoded = ExecutionPlan.from_bytes(ctx, plan)
    except BaseException as exc:  # a malformed plan can make DataFusion's decoder panic
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        m = _UDF_REFUSED.search(str(exc))
        if m:
            raise AccessDeniedError(
                f"the plan carries Python {m.group(1)} UDF {m.group(2)!r}: this worker runs without "
                "--allow-udfs (a UDF is code: allow it only where every mesh member is trusted)"
            ) from exc
        raise TaskFailedError(
            f"could not decode the task plan: {first_line(exc, 300)}", reason=TaskFailedError.CUT
        ) from exc
    stack = [decoded]
    while stack:  # every partition runs on a thread of its own: their number is bounded
        node = stack.pop()
        if node.partition_count > MAX_PARTITIONS:
            raise ProtocolError(
                f"plan node with {node.partition_count} partitions: the limit is {MAX_PARTITIONS}"
            )
        stack.extend(node.children())
    return decoded


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic surfaced by pyo3 (a BaseException, not an Exception)."""
    return type(exc).__name__ == "PanicException"


def _execution_error(exc: BaseException, source: bytes = b"") -> FlowError:
    """Classify DataFusion's plain exception text, once, where it is caught (the engine boundary).

    ``source``: the serialized plan; the buckets it names are read from it only when an object store
    failed (never on the way of a task that succeeds).
    """
    if isinstance(exc, FlowError):
        return exc
    text = str(exc)
    failure = stores.is_storage_failure(text) and stores.storage_failure(
        text, stores.store_urls(source) if source else ()
    )
    if failure:
        return failure
    if "Resources exhausted" in text:
        detail = first_line(text.split("Resources exhausted:", 1)[-1], 200)
        return TaskFailedError(
            f"out of memory under the worker's --memory-limit ({detail}): raise the limit or add peers"
        )
    line = first_line(exc, 300)
    reason = TaskFailedError.CUT if any(m in line for m in _CUT_FAILURES) else ""
    return TaskFailedError(f"execution failed: {line}", reason=reason)


def write_partitions(
    ctx: SessionContext,
    plan: ExecutionPlan,
    out_dir: Path,
    cancel: threading.Event | None = None,
    source: bytes = b"",
) -> list[PartitionOutput]:
    """Run every partition of ``plan`` concurrently, each written to ``out_dir/p<k>.arrow``.

    Setting ``cancel`` stops every partition at its next batch (the task then fails as cancelled).
    ``source``: the serialized plan (to name its buckets if an object store fails).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    n = plan.partition_count
    results: list[PartitionOutput | None] = [None] * n
    errors: list[BaseException] = []

    def drain(p: int) -> None:
        path = out_dir / layout.output_name(p)
        writer: pa.ipc.RecordBatchFileWriter | None = None
        rows = 0
        schema = None
        names: list[str] = []
        renamed = False
        try:
            for rb in ctx.execute(plan, p):
                if cancel is not None and cancel.is_set():
                    raise TaskFailedError("cancelled by the submitter")
                batch = rb.to_pyarrow()
                if batch.num_rows == 0:
                    continue
                if writer is None:
                    schema = batch.schema
                    names = unique_names(schema.names)
                    disk = pa.schema([f.with_name(nm) for f, nm in zip(schema, names, strict=True)])
                    writer = pa.ipc.new_file(str(path), disk)
                    renamed = names != schema.names
                if renamed:
                    batch = batch.rename_columns(names)
                writer.write_batch(batch)
                rows += batch.num_rows
        except BaseException as exc:
            errors.append(exc)
        finally:
            if writer is not None:
                writer.close()
        size = path.stat().st_size if writer is not None else 0
        results[p] = PartitionOutput(p, rows, size, str(path) if rows else "", schema)

    threads = [threading.Thread(target=drain, args=(p,), name=f"drain-{p}") for p in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise _execution_error(errors[0], source) from errors[0]
    return [r for r in results if r is not None]


def stream_partitions(
    ctx: SessionContext, plan: ExecutionPlan, capacity: int = 16, source: bytes = b""
) -> Generator[pa.RecordBatch, None, None]:
    """Yield the batches of every partition of ``plan`` as they come (partitions run concurrently).

    ``source``: the serialized plan (to name its buckets if an object store fails).
    """
    n = plan.partition_count
    if n == 1:
        try:
            for rb in ctx.execute(plan, 0):
                yield rb.to_pyarrow()
        except Exception as exc:
            raise _execution_error(exc, source) from exc
        return
    try:
        # every partition's stream is made here, before any batch is out: an operator that refuses
        # to start (a cut the submitter re-plans, engine/run.py) fails before the caller saw rows
        streams = [ctx.execute(plan, p) for p in range(n)]
    except Exception as exc:
        raise _execution_error(exc, source) from exc
    q: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(maxsize=capacity)
    stop = threading.Event()

    def put(item: pa.RecordBatch | BaseException | None) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def drain(p: int) -> None:
        try:
            for rb in streams[p]:
                if stop.is_set():
                    return
                put(rb.to_pyarrow())
        except BaseException as exc:
            put(exc)
        finally:
            put(None)

    threads = [threading.Thread(target=drain, args=(p,), daemon=True) for p in range(n)]
    for t in threads:
        t.start()
    done = 0
    try:
        while done < n:
            item = q.get()
            if item is None:
                done += 1
            elif isinstance(item, BaseException):
                raise _execution_error(item, source) from item
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
