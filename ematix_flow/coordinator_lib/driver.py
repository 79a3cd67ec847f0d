"""Driving one query on the peers: the re-plan loop, its stages, the root stage, cancel and release.

``QueryState`` decides (which tasks run, where, again, or when to give up); this module is its I/O
shell: it sends tasks to peers, feeds their results and failures back, runs the root stage in this
process, and cancels and releases the query's files on the peers when it ends.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from datafusion import SessionContext

from ematix_flow.coordinator_lib.membership import RECHECK_TIMEOUT, Membership
from ematix_flow.coordinator_lib.planning import PlannedQuery, plan_query
from ematix_flow.coordinator_lib.progress import ROOT_PROGRESS_SECONDS, ProgressHook, QueryProgress
from ematix_flow.coordinator_lib.report import RunReport, StageReport
from ematix_flow.coordinator_lib.stage_schemas import schemas_at
from ematix_flow.coordinator_lib.state import Assignment, QueryState
from ematix_flow.engine.exchange import schema_bytes, unique_names
from ematix_flow.engine.run import decode, stream_partitions
from ematix_flow.engine.tasks import TaskRunner
from ematix_flow.errors import (
    FlowError,
    PeerUnreachableError,
    QueryCancelledError,
    QueryTimeoutError,
    TaskFailedError,
)
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import TaskResult

log = logging.getLogger(__name__)

#: How often a query is re-planned with more exchanges kept inside stages (see _exchanges_to_keep).
MAX_REPLANS = 3
#: How often a query with a ``stop`` callback checks it while its stages run.
STOP_POLL_SECONDS = 0.25
#: After a cancel, how long running tasks get to stop before the query's files are released anyway.
CANCEL_WAIT_SECONDS = 10.0


def _exchanges_to_keep(planned: PlannedQuery, exc: TaskFailedError, keep: dict[int, str]) -> dict[int, str]:
    """Exchanges to stop cutting after a stage failed because of where it was cut.

    A spliced input scan cannot declare the orderings and constant columns DataFusion knew at the
    exchange, and some operators assert on them when they start (a window over a sort that relied
    on a constant column). Such failures are deterministic and raised before any work; the engine
    boundary that caught one gave it ``reason`` CUT. The stage's input exchanges are then kept
    inside it, and the query re-planned. A stage with none to keep failed where it was cut from its
    consumer (a task's share of a union drops the union's other inputs, and with them what an
    aggregate above decides its strategy by): the exchange its consumer reads it through is kept.
    """
    if exc.stage < 0 or exc.reason != TaskFailedError.CUT:
        return {}
    detail = str(exc).split("DataFusion error: ", 1)[-1]
    reason = f"stage {exc.stage} failed when cut there: {detail[:160]}"
    exchanges = {i.exchange for i in planned.graph[exc.stage].inputs if i.exchange >= 0}
    if not exchanges:
        exchanges = {i.exchange for s in planned.graph.stages for i in s.inputs if i.stage == exc.stage}
    return {e: reason for e in exchanges if e >= 0 and e not in keep}


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


@dataclass(frozen=True)
class RunOptions:
    """How one query's tasks run: the Mesh's settings when the query starts."""

    min_task_bytes: int
    local_reads: bool
    max_attempts: int
    task_timeout: float | None


class Submitter:
    """This process's side of a Mesh's queries: what they share, and the files they may still hold.

    Args:
        ctx: The planning context (tables, UDFs, settings).
        membership: The peers and which of them are down.
        pool: The Flight clients to the peers.
        executor: Threads for calls to peers.
        runner: Runs root stages here (and whole queries, under the adaptive gate).
        scratch: This Mesh's own folder for the root stages' inputs.
    """

    def __init__(
        self,
        ctx: SessionContext,
        membership: Membership,
        pool: ClientPool,
        executor: ThreadPoolExecutor,
        runner: TaskRunner,
        scratch: Path,
    ) -> None:
        self.ctx = ctx
        self.membership = membership
        self.pool = pool
        self.executor = executor
        self.runner = runner
        self.scratch = scratch
        self.open: dict[str, set[str]] = {}  # query id -> peers that may hold its files
        self.queries = 0  # attempts started so far (each places its first tasks one peer further on)

    def cancel(self, query_id: str, peers: set[str]) -> None:
        """Ask peers to stop a query's tasks (best effort, short timeouts)."""
        futures = [
            self.executor.submit(self.pool.action, p, "cancel", query_id.encode(), RECHECK_TIMEOUT)
            for p in peers
            if not self.membership.is_down(p)
        ]
        for f in futures:
            try:
                f.result()
            except FlowError as exc:
                log.info("query=%s cancel failed: %s", query_id, exc)

    def release(self, query_id: str) -> None:
        """Remove a query's files from its peers; once only (the stream's end or close, first wins).

        Peers answer at once (they delete in the background), so when a query returns its files are gone.
        """
        peers = self.open.pop(query_id, None)
        if peers is None:
            return
        shutil.rmtree(self.scratch / query_id, ignore_errors=True)
        live = [p for p in peers if not self.membership.is_down(p)]  # a dead peer's files went with it
        for f in [self.executor.submit(self._release_on, p, query_id) for p in live]:
            f.result()

    def release_all(self) -> None:
        """Release every query whose result stream is still open."""
        for query_id in list(self.open):
            self.release(query_id)

    def _release_on(self, peer: str, query_id: str) -> None:
        try:
            self.pool.action(peer, "release", query_id.encode(), 10.0)
        except FlowError as exc:
            log.warning("query=%s release on %s failed: %s", query_id, peer, exc)


class QueryDriver:
    """One query, from its plan to its last batch, on the peers or (adaptive gate) in this process.

    Args:
        submitter: What the Mesh's queries share.
        sql: The query's text.
        planned: Its first plan.
        options: How its tasks run.
        t0: When it started (``time.perf_counter``).
        timeout: Seconds it may take (None: no limit); ``deadline`` is its end on ``time.monotonic``.
        deadline: See ``timeout``.
        hook: Gets progress snapshots.
        stop: Polled while stages run: True cancels the query.
        publish: Gets the ``RunReport`` of each attempt when it ends (the Mesh's ``last_run``).
    """

    def __init__(
        self,
        submitter: Submitter,
        sql: str,
        planned: PlannedQuery,
        options: RunOptions,
        *,
        t0: float,
        timeout: float | None,
        deadline: float | None,
        hook: ProgressHook | None,
        stop: Callable[[], bool] | None,
        publish: Callable[[RunReport], None],
    ) -> None:
        self.sub = submitter
        self.sql = sql
        self.planned = planned
        self.options = options
        self.t0, self.timeout, self.deadline = t0, timeout, deadline
        self.hook, self.stop, self.publish = hook, stop, publish
        self.states: list[QueryState] = []  # one per plan tried (a re-plan makes another)
        self.ran_in_process = False  # the plan ran uncut here (the adaptive gate, or past MAX_REPLANS)

    # ------------------------------------------------------------------ the two ways to run
    def in_process(self, reason: str) -> Generator[pa.RecordBatch, None, None]:
        """Run the whole plan here (the adaptive gate): no stages, no peers; ``reason`` says why."""
        planned = self.planned
        self.ran_in_process = True
        report = RunReport(uuid.uuid4().hex, planned.sql, [], schema=planned.logical_schema)
        report.note = reason
        progress = _Progress(self.hook, None, report, self.t0)
        progress()
        if planned.local_plan is not None:
            ctx, plan = planned.planned_in or self.sub.ctx, planned.local_plan
        else:
            ctx = self.sub.runner.ctx
            plan = decode(ctx, planned.plan_bytes, self.sub.runner.storage)
        try:
            for batch in stream_partitions(ctx, plan, source=planned.plan_bytes):
                report.rows += batch.num_rows
                progress.streaming()
                yield batch
            progress(finished=True)
        finally:
            report.seconds = time.perf_counter() - self.t0
            self.publish(report)

    def batches(self) -> Generator[pa.RecordBatch, None, None]:
        """Run the query's stages on the peers and stream the root stage's result from here.

        A stage that fails because of where it was cut (``_exchanges_to_keep``) makes the query
        re-plan with those exchanges kept inside it, up to ``MAX_REPLANS`` times; a query still
        failing so then runs in-process here (the plan DataFusion made, uncut), as DataFusion would.
        """
        planned = self.planned
        keep: dict[int, str] = {}
        for attempt in range(MAX_REPLANS + 1):
            if attempt:
                planned = plan_query(self.sub.ctx, self.sql, keep)
            state, report = self._new_attempt(planned, keep)
            progress = _Progress(self.hook, state, report, self.t0)
            self.sub.open[state.query_id] = set(self.sub.membership.peers)
            try:
                first, rest = self._start(state, planned, progress)
                break
            except BaseException as exc:
                self._finish(report, state)
                more: dict[int, str] = {}
                if isinstance(exc, TaskFailedError) and exc.reason == TaskFailedError.CUT:
                    more = _exchanges_to_keep(planned, exc, keep)
                    if more and attempt == MAX_REPLANS:
                        first_cause = next(iter(more.values()))
                        reason = f"still failing when cut after {MAX_REPLANS} re-plans ({first_cause})"
                        log.info("query=%s: running in-process: %s", state.query_id, reason)
                        yield from self.in_process(f"Ran in-process on the submitter: its plan {reason}")
                        return
                if not more:
                    raise
                log.info(
                    "query=%s: re-planning, keeping exchanges: %s",
                    state.query_id,
                    "; ".join(set(more.values())),
                )
                keep.update(more)
        try:
            if first is not None:
                report.rows += first.num_rows
                yield first
            for batch in rest:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise QueryTimeoutError(
                        f"query timed out after {self.timeout:g} s while streaming its result"
                    )
                report.rows += batch.num_rows
                progress.streaming()
                yield batch
            state.root_finished(report.rows)
            progress(finished=True)
        finally:
            rest.close()
            self._finish(report, state)

    # ------------------------------------------------------------------ one attempt
    def _new_attempt(self, planned: PlannedQuery, keep: dict[int, str]) -> tuple[QueryState, RunReport]:
        """A fresh query id, state and report for one plan of the query."""
        query_id = uuid.uuid4().hex
        self.sub.queries += 1
        members = self.sub.membership
        members.recheck()
        state = QueryState(
            query_id,
            planned.graph,
            members.peers,
            sql=planned.sql,
            min_task_bytes=self.options.min_task_bytes,
            local_reads=self.options.local_reads,
            offset=self.sub.queries,
            max_attempts=self.options.max_attempts,
            down=set(members.down),
            write=planned.write,
        )
        self.states.append(state)
        stages = [StageReport(s.id, s.kind, inputs=[i.stage for i in s.inputs]) for s in planned.graph.stages]
        report = RunReport(
            query_id, self.sql, stages, schema=planned.logical_schema, kept=dict(keep), graph=planned.graph
        )
        return state, report

    def _start(
        self, state: QueryState, planned: PlannedQuery, progress: _Progress
    ) -> tuple[pa.RecordBatch | None, Generator[pa.RecordBatch, None, None]]:
        """Run every stage but the root, then start the root: its first batch and the rest.

        The root reads all of its inputs before it yields anything, so when a peer holding some of
        them is gone, their producers are re-run on live peers and the root starts again.
        """
        root = planned.graph.root
        runner = self.sub.runner
        while True:
            self._run_stages(state, planned, progress)
            state.root_started()
            progress()
            try:
                self._fill_schemas(state, planned, root.inputs)
                spec = state.root_spec()
                plan, state.root_fetched = runner.prepare(spec, self.sub.scratch / state.query_id)
                rest = stream_partitions(runner.ctx, plan, source=spec.plan)
                return next(rest, None), rest
            except PeerUnreachableError as exc:
                self._peer_failed(state, None, exc)
            except TaskFailedError as exc:
                exc.stage = root.id if exc.stage < 0 else exc.stage
                raise

    def _peer_failed(self, state: QueryState, a: Assignment | None, exc: PeerUnreachableError) -> None:
        """A peer is gone: the state re-plans around it (or raises when it gives up), membership notes it."""
        peer = exc.peer or (a.peer if a else "")
        log.warning("query=%s: peer %s is down (%s); re-running what it held", state.query_id, peer, exc)
        if a is not None:
            state.task_failed(a, exc)
        else:
            state.root_failed(exc)
        self.sub.membership.mark_down(peer)

    def _finish(self, report: RunReport, state: QueryState) -> None:
        """Record what ran and release the query's files (idempotent)."""
        if report.query_id in self.sub.open:
            report.collect(state, self.t0)
            report.seconds = time.perf_counter() - self.t0
            self.publish(report)
        self.sub.release(report.query_id)

    def _run_stages(self, state: QueryState, planned: PlannedQuery, progress: _Progress) -> None:
        """Launch every stage but the root as its inputs complete, until all are done."""
        sub, stop, deadline = self.sub, self.stop, self.deadline
        running: dict[Future[bytes], Assignment] = {}
        try:
            while True:
                launched = 0
                for stage in state.launchable():
                    self._fill_schemas(state, planned, stage.inputs)
                    for a in state.launch(stage):
                        spec = a.spec.to_bytes()
                        fut = sub.executor.submit(
                            sub.pool.action, a.peer, "run_task", spec, self.options.task_timeout
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
                sub.cancel(state.query_id, {a.peer for a in running.values()})
                wait(running, timeout=CANCEL_WAIT_SECONDS)
            raise

    def _fill_schemas(self, state: QueryState, planned: PlannedQuery, inputs: Sequence[Any]) -> None:
        """Give producers that wrote no rows a schema (from EXPLAIN: only needed in that case)."""
        missing = [planned.graph[i.stage] for i in inputs if state.runs[i.stage].schema is None]
        if not missing:
            return
        ctx = planned.planned_in or self.sub.ctx  # the plan's own context
        schemas = schemas_at(ctx, planned.sql, planned.lines, [stage.site for stage in missing])
        for stage in missing:
            schema = schemas[stage.site]
            names = list(schema.names)
            disk = pa.schema([f.with_name(n) for f, n in zip(schema, unique_names(names), strict=True)])
            state.set_schema(stage.id, schema_bytes(disk), names)
