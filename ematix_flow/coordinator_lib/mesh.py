"""``Mesh``: the public entry point that plans a query, drives it on the peers, streams the result."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from types import TracebackType
from typing import Any

import datafusion
import pyarrow as pa
from datafusion import AggregateUDF, ScalarUDF

from ematix_flow.coordinator_lib.local import LocalWorker, spawn_worker
from ematix_flow.coordinator_lib.planning import PlannedQuery, dataframe, plan_query
from ematix_flow.coordinator_lib.progress import ROOT_PROGRESS_SECONDS, ProgressHook, QueryProgress
from ematix_flow.coordinator_lib.report import RunReport, StageReport, render_graph
from ematix_flow.coordinator_lib.schemas import explain_schemas
from ematix_flow.coordinator_lib.state import Assignment, QueryState
from ematix_flow.coordinator_lib.via import ViaClient
from ematix_flow.engine.digest import hash_digest
from ematix_flow.engine.exchange import schema_bytes, unique_names
from ematix_flow.engine.run import decode, stream_partitions
from ematix_flow.engine.settings import execution_context, planning_context
from ematix_flow.errors import (
    ConfigError,
    FlowError,
    PeerMismatchError,
    PeerUnreachableError,
    QueryCancelledError,
    QueryTimeoutError,
    TaskFailedError,
)
from ematix_flow.transport.certs import init_certs
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import PeerInfo, TaskResult
from ematix_flow.transport.tls import TLSConfig
from ematix_flow.worker.tasks import TaskRunner

log = logging.getLogger(__name__)

DEFAULT_MIN_TASK_BYTES = 4 * 1024 * 1024
DEFAULT_LOCAL_BELOW_BYTES = 0  # the adaptive gate is off unless asked for

#: How often a query is re-planned with more exchanges kept inside stages (see _exchanges_to_keep).
MAX_REPLANS = 3

#: A peer found down is asked again (with a short hello) after this many seconds.
RECHECK_SECONDS = 5.0
#: How often a query with a ``stop`` callback checks it while its stages run.
STOP_POLL_SECONDS = 0.25
#: After a cancel, how long running tasks get to stop before the query's files are released anyway.
CANCEL_WAIT_SECONDS = 10.0
RECHECK_TIMEOUT = 2.0


def _exchanges_to_keep(planned: PlannedQuery, exc: TaskFailedError, keep: dict[int, str]) -> dict[int, str]:
    """Exchanges to stop cutting after a stage failed because of where it was cut.

    A spliced input scan cannot declare the orderings and constant columns DataFusion knew at the
    exchange, and some operators assert on them when they start (a window over a sort that relied
    on a constant column). Such failures are deterministic and raised before any work; the engine
    boundary that caught one gave it ``reason`` CUT. The stage's input exchanges are then kept
    inside it, and the query re-planned.
    """
    if exc.stage < 0 or exc.reason != TaskFailedError.CUT:
        return {}
    detail = str(exc).split("DataFusion error: ", 1)[-1]
    reason = f"stage {exc.stage} failed when cut there: {detail[:160]}"
    stage = planned.graph[exc.stage]
    return {i.exchange: reason for i in stage.inputs if i.exchange >= 0 and i.exchange not in keep}


class _Progress:
    """Sends snapshots of one attempt of a query to a progress hook (a no-op without one)."""

    def __init__(
        self, hook: ProgressHook | None, state: QueryState | None, report: RunReport, t0: float
    ) -> None:
        self.hook, self.state, self.report, self.t0 = hook, state, report, t0
        self.last = 0.0

    def __call__(self, *, finished: bool = False) -> None:
        """Report now."""
        if self.hook is None:
            return
        self.last = time.perf_counter()
        rows = self.report.rows
        stages = self.state.snapshot(rows) if self.state is not None else ()
        query_id = self.state.query_id if self.state is not None else self.report.query_id
        self.hook(QueryProgress(query_id, self.last - self.t0, stages, rows, finished))

    def streaming(self) -> None:
        """Report while the result streams, at most every ROOT_PROGRESS_SECONDS."""
        if self.hook is not None and time.perf_counter() - self.last >= ROOT_PROGRESS_SECONDS:
            self()


class Mesh:
    """A connection to a mesh of ``flow-worker`` peers; any process can submit queries through it.

    Example:
        >>> with Mesh.local(workers=3) as mesh:  # doctest: +SKIP
        ...     mesh.register_parquet("lineitem", "data/tpch-sf0.1/lineitem.parquet")
        ...     mesh.sql("SELECT count(*) FROM lineitem")
    """

    def __init__(
        self,
        peers: Sequence[str],
        tls: TLSConfig | None = None,
        *,
        insecure: bool = False,
        partitions: int | None = None,
        min_task_bytes: int = DEFAULT_MIN_TASK_BYTES,
        local_reads: bool = True,
        local_below_bytes: int = DEFAULT_LOCAL_BELOW_BYTES,
        max_attempts: int = 3,
        query_timeout: float | None = None,
        connect_timeout: float = 5.0,
        task_timeout: float | None = None,
        settings: dict[str, str] | None = None,
        via: str | None = None,
        memory_limit: int | None = None,
    ) -> None:
        """Connect to ``peers`` ("host:port") over mutual TLS (``insecure=True``: plaintext).

        ``settings`` are DataFusion settings for the planning context (they override ours).
        ``memory_limit`` (bytes) caps DataFusion's memory for what runs in this process (the root stage),
        spilling to its scratch dir where it can.
        A query that scans fewer than ``local_below_bytes`` runs in-process on the submitter (the
        adaptive gate; 0 turns it off): shipping it would cost more than running it.

        ``via="HOST:PORT"`` submits through that peer instead (Arrow Flight SQL): it plans each query with
        its own view of the data and drives it on its mesh; this process plans nothing and needs no access
        to the data. ``peers`` may then be empty; ``sql``, ``sql_batches``, ``schema``, ``tables`` and the
        ``register_*`` methods (as ``CREATE EXTERNAL TABLE`` in this Mesh's session on the peer) work; the
        peer drives the stages, so no progress snapshots arrive and ``last_run`` holds no stages.
        """
        self.via = via.strip() if via else None
        self.peers = [p.strip() for p in peers if p.strip()]
        if not self.peers and self.via is None:
            raise ConfigError("no peers given: pass at least one HOST:PORT (or use Mesh.local)")
        if tls is None and not insecure:
            raise ConfigError("no TLS material: pass tls=TLSConfig.from_dir('certs') or insecure=True")
        self.tls = tls
        self.workers: list[LocalWorker] = []
        self.last_run: RunReport | None = None
        self._owned_dir: Path | None = None
        self._closed = False
        self._down: dict[str, float] = {}  # peer -> when it was last found down
        self._via: ViaClient | None = None
        if self.via is not None:
            if partitions is not None or settings:
                raise ConfigError(
                    "partitions and settings are the planning peer's with via=...: leave them out"
                )
            self._via = ViaClient(self.via, tls, timeout=query_timeout, connect_timeout=connect_timeout)
            self.peer_info: dict[str, PeerInfo] = {}
            return
        self.partitions = partitions or max(4, 2 * len(self.peers))
        self.min_task_bytes = min_task_bytes
        self.local_reads = local_reads
        self.local_below_bytes = local_below_bytes
        self.max_attempts = max_attempts
        self.query_timeout = query_timeout
        self.task_timeout = task_timeout
        self._pool = ClientPool(tls)
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="flow-task")
        self._ctx = planning_context(self.partitions, settings)
        self._scratch = Path(tempfile.mkdtemp(prefix="flow-submit-"))
        spill = self._scratch / "_spill"
        if memory_limit:
            spill.mkdir()
        ctx = execution_context(memory_limit=memory_limit, spill_dir=str(spill) if memory_limit else None)
        self._runner = TaskRunner(ctx, self._pool, self._scratch, fetch_timeout=task_timeout)
        self._queries = 0
        self._open: dict[str, set[str]] = {}  # query id -> peers that may hold its files
        try:
            self.peer_info = self._hello(connect_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    @classmethod
    def local(
        cls,
        workers: int = 3,
        *,
        insecure: bool = False,
        work_dir: str | os.PathLike[str] | None = None,
        log_level: str = "warning",
        **options: Any,
    ) -> Mesh:
        """Spawn ``workers`` flow-worker processes on 127.0.0.1 with fresh mTLS certificates."""
        if workers < 1:
            raise ConfigError("Mesh.local needs at least one worker")
        base = Path(tempfile.mkdtemp(prefix="flow-local-", dir=work_dir))
        tls_dir = None if insecure else base / "certs"
        spawned: list[LocalWorker] = []
        try:
            if tls_dir is not None:
                init_certs(tls_dir, ["127.0.0.1", "localhost"])
            with ThreadPoolExecutor(max_workers=workers) as ex:
                futures = [
                    ex.submit(spawn_worker, tls_dir, base / "work", log_level=log_level)
                    for _ in range(workers)
                ]
                for f in futures:
                    try:
                        spawned.append(f.result())
                    except FlowError:
                        continue
                for f in futures:
                    f.result()  # re-raise the first start failure
            tls = TLSConfig.from_dir(tls_dir) if tls_dir else None
            mesh = cls([w.address for w in spawned], tls, insecure=insecure, **options)
        except BaseException:
            for w in spawned:
                w.stop()
            shutil.rmtree(base, ignore_errors=True)
            raise
        mesh.workers = spawned
        mesh._owned_dir = base
        return mesh

    def _hello(self, timeout: float, peers: Sequence[str] | None = None) -> dict[str, PeerInfo]:
        """Ask peers who they are; unreachable ones are marked down (all of them down: an error)."""
        mine = hash_digest()
        asked = list(self.peers if peers is None else peers)
        futures = {p: self._executor.submit(self._pool.action, p, "hello", b"", timeout) for p in asked}
        infos: dict[str, PeerInfo] = {}
        failures: list[PeerUnreachableError] = []
        for p, f in futures.items():
            try:
                infos[p] = PeerInfo.from_bytes(f.result())
                self._down.pop(p, None)
            except PeerUnreachableError as exc:
                self._down[p] = time.monotonic()
                failures.append(exc)
        if peers is None and not infos:
            raise failures[0]
        for failure in failures:  # the mesh goes on without them
            log.warning("peer %s is down, continuing without it: %s", failure.peer, failure)
        for p, info in infos.items():
            if info.hash_digest != mine or info.datafusion_version != datafusion.__version__:
                raise PeerMismatchError(
                    f"peer {p} partitions data differently (datafusion {info.datafusion_version}, digest "
                    f"{info.hash_digest}; here {datafusion.__version__}, {mine}): "
                    "install the same ematix-flow and datafusion on every peer"
                )
        return infos

    @property
    def peers_alive(self) -> list[str]:
        """Peers not known to be down (a down peer is asked again every few seconds)."""
        return [p for p in self.peers if p not in self._down]

    def _recheck_down(self) -> None:
        """Peers found down a while ago get a quick hello: one that answers rejoins."""
        due = [p for p, when in self._down.items() if time.monotonic() - when >= RECHECK_SECONDS]
        if due:
            self._hello(RECHECK_TIMEOUT, due)

    # ------------------------------------------------------------------ tables
    def _resolve(self, name: str, path: str | os.PathLike[str]) -> str:
        p = Path(path).expanduser().resolve()
        if not p.exists():
            raise ConfigError(f"table {name}: no such file or directory: {path}")
        return str(p)

    def register_parquet(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a Parquet file or a folder of Parquet files as table ``name``."""
        if self._via is not None:
            return self._via.register(name, "parquet", path, options)
        self._register(name, lambda: self._ctx.register_parquet(name, self._resolve(name, path), **options))

    def register_csv(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a CSV file or folder (options go to DataFusion's ``register_csv``)."""
        if self._via is not None:
            return self._via.register(name, "csv", path, options)
        self._register(name, lambda: self._ctx.register_csv(name, self._resolve(name, path), **options))

    def register_json(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a newline-delimited JSON file or folder."""
        if self._via is not None:
            return self._via.register(name, "json", path, options)
        self._register(name, lambda: self._ctx.register_json(name, self._resolve(name, path), **options))

    def tables(self) -> dict[str, pa.Schema]:
        """Every registered table and its Arrow schema (``via``: what this session on the peer sees)."""
        if self._via is not None:
            return self._via.tables()
        schema = self._ctx.catalog().schema()
        return {name: schema.table(name).schema for name in sorted(schema.names())}

    def schema(self, sql: str, *, read_only: bool = False) -> pa.Schema:
        """The schema of the result of ``sql``, planned without running it.

        ``read_only=True`` refuses DDL, DML and SET statements (QueryError) where planning would run them.
        """
        if self._via is not None:
            return self._via.schema(sql)
        return dataframe(self._ctx, sql, read_only=read_only).schema()

    def register_udf(self, function: ScalarUDF | AggregateUDF) -> None:
        """Register a Python scalar or aggregate UDF: it travels inside plans, pickled.

        Workers refuse such plans unless they run with ``--allow-udfs`` (a UDF is code).
        """
        self._planning_here("register_udf")
        if isinstance(function, AggregateUDF):
            self._ctx.register_udaf(function)
        else:
            self._ctx.register_udf(function)

    def _register(self, name: str, action: Any) -> None:
        if self._ctx.table_exist(name):
            self._ctx.deregister_table(name)
        try:
            action()
        except FlowError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"cannot register table {name}: {first}") from exc

    # ------------------------------------------------------------------ queries
    def explain(
        self,
        sql: str,
        analyze: bool = False,
        *,
        timeout: float | None = None,
        progress: ProgressHook | None = None,
    ) -> str:
        """The stage graph of ``sql``, readable (and whether the adaptive gate keeps it in-process).

        ``analyze=True`` runs the query (its rows are counted, not kept) and says, per stage, what it
        did: tasks, peers, rows, bytes written / read / fetched over Flight, wall time; plus the
        total time and result rows. ``Mesh.analyze`` gives the same as a ``RunReport``.
        """
        if analyze:
            return self.analyzed_text(self.analyze(sql, timeout=timeout, progress=progress))
        self._planning_here("explain")
        planned = plan_query(self._ctx, sql)
        if planned.local_plan is not None:
            return f"{self._local_reason(planned)}\n{planned.local_plan.display_indent()}"
        text = render_graph(planned.graph, len(self.peers))
        if self._runs_locally(planned):
            text = f"{self._local_reason(planned)}\n{text}"
        return text

    def analyze(
        self, sql: str, *, timeout: float | None = None, progress: ProgressHook | None = None
    ) -> RunReport:
        """Run ``sql``, dropping its rows, and return what it did (``RunReport.to_dict()`` for JSON)."""
        self._planning_here("analyze")
        for _ in self._batches(sql, [], timeout, progress):
            pass
        assert self.last_run is not None
        return self.last_run

    def analyzed_text(self, report: RunReport) -> str:
        """The stage graph of a run, each stage with what it did (``explain(sql, analyze=True)``)."""
        if report.graph is None:
            ran = f"Ran in-process in {report.seconds:.3f}s: {report.rows:,} result rows"
            return f"{self.explain(report.sql)}\n{ran}"
        return render_graph(report.graph, len(self.peers), report)

    def _planning_here(self, what: str) -> None:
        """Refuse what needs this process's own planner when a peer plans (``via``)."""
        if self._via is not None:
            raise ConfigError(
                f"Mesh.{what} needs the planner of this process, but peer {self.via} plans its queries "
                "(via=...): connect with peers=[...] and the data paths instead, or send EXPLAIN as SQL"
            )

    def _runs_locally(self, planned: PlannedQuery) -> bool:
        return planned.local_plan is not None or planned.scan_bytes < self.local_below_bytes

    def _local_reason(self, planned: PlannedQuery) -> str:
        if planned.local_plan is not None:
            return f"Runs in-process on the submitter: {planned.local_reason}"
        return (
            f"Runs in-process on the submitter: it scans {planned.scan_bytes / 1e6:.1f} MB, under the "
            f"{self.local_below_bytes / 1e6:.1f} MB adaptive gate (Mesh(local_below_bytes=0) distributes it)"
        )

    def sql(
        self, sql: str, *, timeout: float | None = None, progress: ProgressHook | None = None
    ) -> pa.Table:
        """Run ``sql`` on the mesh and return the whole result.

        ``timeout`` (seconds) bounds the whole query: past it, its tasks are cancelled on every peer
        and QueryTimeoutError is raised. ``progress`` is called with a ``QueryProgress`` snapshot
        (stages, tasks done / running / failed, rows) whenever a task is launched, ends or fails.
        """
        schema: list[pa.Schema] = []
        batches = list(self._batches(sql, schema, timeout, progress))
        if not batches:
            return schema[0].empty_table()
        return pa.Table.from_batches(batches, schema=batches[0].schema)

    def sql_batches(
        self,
        sql: str,
        *,
        timeout: float | None = None,
        progress: ProgressHook | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Generator[pa.RecordBatch, None, None]:
        """Run ``sql`` on the mesh and yield the result batch by batch (``progress``: as for ``sql``).

        Close the generator (or the Mesh) to stop early: either releases the query's files on the peers.
        ``stop`` is polled while stages run (every ``STOP_POLL_SECONDS``): once it returns True the
        query's tasks are cancelled on every peer and QueryCancelledError is raised (a Flight SQL
        gateway passes "has the client gone").
        """
        return self._batches(sql, [], timeout, progress, stop)

    def _batches(
        self,
        sql: str,
        schema_out: list[pa.Schema],
        timeout: float | None = None,
        hook: ProgressHook | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Generator[pa.RecordBatch, None, None]:
        if self._closed:
            raise ConfigError("this Mesh is closed: open a new one")
        if self._via is not None:
            yield from self._via_batches(self._via, sql, schema_out, timeout)
            return
        t0 = time.perf_counter()
        timeout = timeout if timeout is not None else self.query_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        keep: dict[int, str] = {}
        planned = plan_query(self._ctx, sql)
        schema_out.append(planned.logical_schema)
        if self._runs_locally(planned):
            yield from self._in_process(planned, t0, hook)
            return
        for attempt in range(MAX_REPLANS + 1):
            if attempt:
                planned = plan_query(self._ctx, sql, keep)
            query_id = uuid.uuid4().hex
            self._queries += 1
            self._recheck_down()
            state = QueryState(
                query_id,
                planned.graph,
                self.peers,
                sql=planned.sql,
                min_task_bytes=self.min_task_bytes,
                local_reads=self.local_reads,
                offset=self._queries,
                max_attempts=self.max_attempts,
                down=set(self._down),
            )
            stages = [
                StageReport(s.id, s.kind, inputs=[i.stage for i in s.inputs]) for s in planned.graph.stages
            ]
            report = RunReport(
                query_id, sql, stages, schema=planned.logical_schema, kept=dict(keep), graph=planned.graph
            )
            progress = _Progress(hook, state, report, t0)
            self._open[query_id] = set(self.peers)
            try:
                first, rest = self._start(state, planned, deadline, progress, stop)
                break
            except BaseException as exc:
                self._finish(report, state, t0)
                more: dict[int, str] = {}
                if isinstance(exc, TaskFailedError) and attempt < MAX_REPLANS:
                    more = _exchanges_to_keep(planned, exc, keep)
                if not more:
                    raise
                log.info(
                    "query=%s: re-planning, keeping exchanges: %s", query_id, "; ".join(set(more.values()))
                )
                keep.update(more)
        try:
            if first is not None:
                report.rows += first.num_rows
                yield first
            for batch in rest:
                if deadline is not None and time.monotonic() > deadline:
                    raise QueryTimeoutError(f"query timed out after {timeout:g} s while streaming its result")
                report.rows += batch.num_rows
                progress.streaming()
                yield batch
            state.root_finished(report.rows)
            progress(finished=True)
        finally:
            rest.close()
            self._finish(report, state, t0)

    def _via_batches(
        self, via: ViaClient, sql: str, schema_out: list[pa.Schema], timeout: float | None
    ) -> Generator[pa.RecordBatch, None, None]:
        """Run ``sql`` through the peer that plans it; ``last_run`` holds its schema, rows and time."""
        t0 = time.perf_counter()
        schema, batches = via.sql(sql, timeout)
        schema_out.append(schema)
        report = RunReport("", sql, [], schema=schema, note=f"planned and driven by peer {via.address}")
        self.last_run = report
        try:
            for batch in batches:
                report.rows += batch.num_rows
                yield batch
        finally:
            report.seconds = time.perf_counter() - t0

    def _in_process(
        self, planned: PlannedQuery, t0: float, hook: ProgressHook | None
    ) -> Generator[pa.RecordBatch, None, None]:
        """Run the whole plan here (the adaptive gate): no stages, no peers."""
        report = RunReport(uuid.uuid4().hex, planned.sql, [], schema=planned.logical_schema)
        report.note = self._local_reason(planned)
        progress = _Progress(hook, None, report, t0)
        progress()
        if planned.local_plan is not None:
            ctx, plan = self._ctx, planned.local_plan
        else:
            ctx = self._runner.ctx
            plan = decode(ctx, planned.plan_bytes)
        try:
            for batch in stream_partitions(ctx, plan):
                report.rows += batch.num_rows
                progress.streaming()
                yield batch
            progress(finished=True)
        finally:
            report.seconds = time.perf_counter() - t0
            self.last_run = report

    def _start(
        self,
        state: QueryState,
        planned: PlannedQuery,
        deadline: float | None,
        progress: _Progress,
        stop: Callable[[], bool] | None = None,
    ) -> tuple[pa.RecordBatch | None, Generator[pa.RecordBatch, None, None]]:
        """Run every stage but the root, then start the root: its first batch and the rest.

        The root reads all of its inputs before it yields anything, so when a peer holding some of
        them is gone, their producers are re-run on live peers and the root starts again.
        """
        root = planned.graph.root
        while True:
            self._run_stages(state, planned, deadline, progress, stop)
            state.root_started()
            progress()
            try:
                self._fill_schemas(state, planned, root.inputs)
                spec = state.root_spec()
                plan, state.root_fetched = self._runner.prepare(spec, self._scratch / state.query_id)
                rest = stream_partitions(self._runner.ctx, plan)
                return next(rest, None), rest
            except PeerUnreachableError as exc:
                self._peer_failed(state, None, exc)
            except TaskFailedError as exc:
                exc.stage = root.id if exc.stage < 0 else exc.stage
                raise

    def _peer_failed(self, state: QueryState, a: Assignment | None, exc: PeerUnreachableError) -> None:
        """A peer is gone: the state re-plans around it (or raises when it cannot), the mesh notes it."""
        peer = exc.peer or (a.peer if a else "")
        log.warning("query=%s: peer %s is down (%s); re-running what it held", state.query_id, peer, exc)
        if a is not None:
            state.task_failed(a, exc)
        else:
            state.peer_down(peer)
            state.root_attempts += 1
            state.root_status = "pending"
            if state.root_attempts > state.max_attempts or not state.live_peers:
                raise exc
        self._down[peer] = time.monotonic()

    def _finish(self, report: RunReport, state: QueryState, t0: float) -> None:
        """Record what ran and release the query's files (idempotent)."""
        if report.query_id in self._open:
            report.collect(state, t0)
            report.seconds = time.perf_counter() - t0
            self.last_run = report
        self._release(report.query_id)

    def _run_stages(
        self,
        state: QueryState,
        planned: PlannedQuery,
        deadline: float | None,
        progress: _Progress,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        running: dict[Future[bytes], Assignment] = {}
        try:
            while True:
                launched = 0
                for stage in state.launchable():
                    self._fill_schemas(state, planned, stage.inputs)
                    for a in state.launch(stage):
                        fut = self._executor.submit(
                            self._pool.action, a.peer, "run_task", a.spec.to_bytes(), self.task_timeout
                        )
                        running[fut] = a
                        launched += 1
                if launched:
                    progress()
                if not running:
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise QueryTimeoutError(
                        f"query timed out with {len(running)} tasks still running: its tasks were cancelled "
                        "(give it more time with --timeout / Mesh.sql(..., timeout=))"
                    )
                if stop is not None:
                    left = STOP_POLL_SECONDS if left is None else min(left, STOP_POLL_SECONDS)
                done, _ = wait(running, timeout=left, return_when=FIRST_COMPLETED)
                if stop is not None and stop():
                    raise QueryCancelledError(
                        f"query {state.query_id} was stopped with {len(running)} tasks running: they were "
                        "cancelled on every peer"
                    )
                for fut in done:
                    a = running.pop(fut)
                    try:
                        body = fut.result()
                    except PeerUnreachableError as exc:
                        self._peer_failed(state, a, exc)
                        progress()
                        continue
                    except TaskFailedError as exc:
                        exc.stage = a.stage if exc.stage < 0 else exc.stage
                        raise
                    state.task_done(a, TaskResult.from_bytes(body))
                    progress()
        except BaseException:
            if running:  # stop in-flight tasks, then let them end before their files are released
                self._cancel(state.query_id, {a.peer for a in running.values()})
                wait(running, timeout=CANCEL_WAIT_SECONDS)
            raise

    def _cancel(self, query_id: str, peers: set[str]) -> None:
        """Ask peers to stop a query's tasks (best effort, short timeouts)."""
        futures = [
            self._executor.submit(self._pool.action, p, "cancel", query_id.encode(), RECHECK_TIMEOUT)
            for p in peers
            if p not in self._down
        ]
        for f in futures:
            try:
                f.result()
            except FlowError as exc:
                log.info("query=%s cancel failed: %s", query_id, exc)

    def _fill_schemas(self, state: QueryState, planned: PlannedQuery, inputs: Sequence[Any]) -> None:
        """Give producers that wrote no rows a schema (from EXPLAIN: only needed in that case)."""
        missing = [planned.graph[i.stage] for i in inputs if state.runs[i.stage].schema is None]
        if not missing:
            return
        schemas = explain_schemas(self._ctx, planned.sql)
        for stage in missing:
            schema = schemas[stage.site]
            names = list(schema.names)
            disk = pa.schema([f.with_name(n) for f, n in zip(schema, unique_names(names), strict=True)])
            state.set_schema(stage.id, schema_bytes(disk), names)

    def _release(self, query_id: str) -> None:
        """Remove a query's files from its peers; once only (the stream's end or close, first wins).

        Peers answer at once (they delete in the background), so when a query returns its files are gone.
        """
        peers = self._open.pop(query_id, None)
        if peers is None:
            return
        shutil.rmtree(self._scratch / query_id, ignore_errors=True)
        live = [p for p in peers if p not in self._down]  # a dead peer's files went with it
        for f in [self._executor.submit(self._release_on, p, query_id) for p in live]:
            f.result()

    def _release_on(self, peer: str, query_id: str) -> None:
        try:
            self._pool.action(peer, "release", query_id.encode(), 10.0)
        except FlowError as exc:
            log.warning("query=%s release on %s failed: %s", query_id, peer, exc)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Disconnect; stop the workers this Mesh started and remove their files.

        Queries whose result stream is still open are released first.
        """
        self._closed = True
        if self._via is not None:
            self._via.close()
            return
        for query_id in list(self._open):
            self._release(query_id)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pool.close()
        for w in self.workers:
            w.stop()
        self.workers = []
        shutil.rmtree(self._scratch, ignore_errors=True)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> Mesh:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
