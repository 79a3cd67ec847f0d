"""The worker's Arrow Flight server: run tasks, serve their outputs, release queries."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import datafusion
import pyarrow as pa
import pyarrow.flight as flight

from ematix_flow import __version__
from ematix_flow.engine import layout
from ematix_flow.engine.digest import hash_digest
from ematix_flow.engine.exchange import host_id
from ematix_flow.engine.run import is_panic
from ematix_flow.engine.settings import execution_context
from ematix_flow.errors import (
    AccessDeniedError,
    FlowError,
    PeerUnreachableError,
    ProtocolError,
    TaskFailedError,
)
from ematix_flow.flightsql.protocol import SPEC_ACTIONS, is_flight_sql, unpack
from ematix_flow.logs import task_context
from ematix_flow.transport.flight import ClientPool, remote_error
from ematix_flow.transport.messages import MAX_MESSAGE_BYTES, OutputRef, PeerInfo, TaskResult, TaskSpec
from ematix_flow.transport.tls import TLSConfig, flight_server_kwargs, location
from ematix_flow.worker.catalog import Catalog
from ematix_flow.worker.flightsql import ACTIONS as SQL_ACTIONS
from ematix_flow.worker.flightsql import (
    MAX_COMMAND_BYTES,
    FlightSqlService,
    SessionCookies,
    label,
    session_key,
)
from ematix_flow.worker.gateway import Gateway
from ematix_flow.worker.limits import WorkerLimits
from ematix_flow.worker.policy import AccessPolicy
from ematix_flow.worker.store import WorkStore
from ematix_flow.worker.tasks import TaskRunner
from ematix_flow.worker.telemetry import Metrics, PeerBook, ProcessMeter, QueryLog, TaskOutcome

if TYPE_CHECKING:
    from ematix_flow.worker.http import HttpServer, TLSFiles

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a cancelled query id is remembered (a task of it arriving late is refused meanwhile).
CANCEL_MEMORY_SECONDS = 600.0
#: How often a worker asks its --peers whether they are alive, and how long it waits for an answer.
PEER_CHECK_SECONDS = 5.0
PEER_CHECK_TIMEOUT = 2.0
#: For this long after start, peers that never answered are asked every second (they may be starting too).
PEER_FIRST_CONTACT_SECONDS = 30.0
#: How long ``/api/queries`` waits for each peer's ``status`` answer.
STATUS_TIMEOUT = 2.0

ACTIONS = {
    "hello": "who this peer is: version, engine digest, peers it knows",
    "run_task": "run one task (msgpack TaskSpec); answers a TaskResult",
    "release": "remove every file held for a query id",
    "cancel": "stop the running tasks of a query id and remove its files",
    "status": "this worker's status and the queries it ran tasks for, as JSON",
    **SQL_ACTIONS,
}
#: The largest body each action takes, in bytes: a bigger one is refused before it is parsed.
MAX_ACTION_BODY = {
    "hello": 64,
    "run_task": MAX_MESSAGE_BYTES,
    "release": 128,
    "cancel": 128,
    "status": 64,
    **dict.fromkeys(SQL_ACTIONS, MAX_COMMAND_BYTES),
}
#: The largest ticket ``do_get`` takes (an OutputRef is ~60 bytes, a Flight SQL ticket ~70 to a few hundred).
MAX_TICKET_BYTES = 1024


class WorkerServer(flight.FlightServerBase):  # type: ignore[misc]
    """A mesh peer: every action a submitter or another peer may call."""

    def __init__(
        self,
        listen: str,
        *,
        tls: TLSConfig | None,
        work_dir: Path,
        peers: list[str] | None = None,
        name: str = "",
        limits: WorkerLimits | None = None,
        policy: AccessPolicy | None = None,
        catalog: Catalog | None = None,
        advertise: str = "",
    ) -> None:
        """Serve on ``listen``; ``advertise`` is the address peers know it by (default: ``listen``'s)."""
        kwargs: dict[str, Any] = flight_server_kwargs(tls) if tls else {}
        super().__init__(location(listen, tls), middleware={"session": SessionCookies()}, **kwargs)
        host = listen.rsplit(":", 1)[0]
        self.listen_address = f"{host}:{self.port}"  # where it serves
        self.address = advertise or self.listen_address  # the address peers know it by
        self.tls = tls
        self.name = name or (tls.common_name() if tls else self.address)
        self.peers = list(peers or [])
        self.store = WorkStore(work_dir)
        self.pool = ClientPool(tls)
        self.limits = limits or WorkerLimits()
        self.policy = policy or AccessPolicy()
        ctx = execution_context(
            memory_limit=self.limits.memory_limit,
            spill_dir=str(work_dir / layout.SPILL_DIR),
            allow_udfs=self.policy.allow_udfs,
        )
        self.runner = TaskRunner(ctx, self.pool, work_dir, fetch_timeout=300.0)
        self._slots = threading.BoundedSemaphore(max(1, self.limits.max_tasks))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}  # query id -> set when cancelled
        self._running: dict[str, int] = {}  # query id -> tasks running now
        self._cancelled_at: dict[str, float] = {}
        self.tasks_run = 0
        self._active = 0  # tasks holding a slot
        self._queued = 0  # tasks waiting for one
        self._started = time.monotonic()
        self.meter = ProcessMeter()
        self.queries = QueryLog(self.address)
        self.peer_book = PeerBook(self.peers)
        self.metrics = Metrics(self.meter)
        self.metrics.tasks_running.set_function(lambda: self._active)
        self.metrics.tasks_queued.set_function(lambda: self._queued)
        self.metrics.peers_up.set_function(self.peer_book.up)
        self.catalog = catalog or Catalog()
        wildcard = host.strip("[]") in ("0.0.0.0", "::", "") and not advertise  # cannot name itself
        mesh_peers = ([] if wildcard else [self.address]) + [p for p in self.peers if p != self.address]
        self.gateway = Gateway(
            mesh_peers, tls, self.catalog, self.policy, memory_limit=self.limits.memory_limit
        )
        self.flight_sql = FlightSqlService(
            self.gateway, lambda rpc, name: self.metrics.flight_sql.labels(rpc=rpc, command=name).inc()
        )
        self.instance = uuid.uuid4().hex  # tells this process apart when it is listed in its own --peers
        self.http: HttpServer | None = None
        self.http_url = ""
        self._disk = (0.0, 0)  # (time.monotonic(), bytes): work dir use, measured at most once a second
        self._asker = ThreadPoolExecutor(max_workers=8, thread_name_prefix="status")
        threading.Thread(target=self._janitor, name="janitor", daemon=True).start()
        if self.peers:
            threading.Thread(target=self._watch_peers, name="peer-health", daemon=True).start()

    # ----------------------------------------------------------------- actions
    def _authorize(self, context: flight.ServerCallContext, what: str) -> None:
        """Refuse a caller whose certificate identity is not allowed (mTLS already proved the CA)."""
        identity = context.peer_identity().decode("utf-8", "replace")
        try:
            self.policy.check_peer(identity)
        except AccessDeniedError as exc:
            log.warning("refused %s from %s (identity %r): not allowed", what, context.peer(), identity)
            raise flight.FlightUnauthorizedError(f"AccessDeniedError: {exc}") from exc

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        """The actions this worker answers."""
        self._authorize(context, "list_actions")
        return list(ACTIONS.items())

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Any:
        """Dispatch one action; errors reach the caller as one-line Flight errors."""
        kind = action.type
        self._authorize(context, f"action {kind[:40]!r}")
        body = action.body.to_pybytes() if action.body is not None else b""
        try:
            limit = MAX_ACTION_BODY.get(kind)
            if limit is not None and len(body) > limit:
                raise ProtocolError(f"{kind} body of {len(body)} bytes is over the {limit}-byte limit")
            if kind == "run_task":
                spec = TaskSpec.from_bytes(body)
                layout.check_query_id(spec.query_id)
                submitter = context.peer_identity().decode("utf-8", "replace") or context.peer()
                with task_context(spec.query_id, spec.stage, spec.task):  # tags its log lines
                    try:
                        result = self._run_task(spec, submitter)
                    except BaseException as exc:
                        raise self._failed(kind, exc) from exc
                yield flight.Result(result)  # outside: Flight may resume a generator in another context
            elif kind == "hello":
                yield flight.Result(self._hello().to_bytes())
            elif kind == "release":
                query_id = layout.check_query_id(body.decode("utf-8", "replace"))
                self.store.release(query_id)
                self.queries.finish(query_id, "release")
            elif kind == "cancel":
                self._cancel(layout.check_query_id(body.decode("utf-8", "replace")))
                yield flight.Result(b"ok")
            elif kind == "status":
                answer = {"status": self.status_view(), "queries": self.query_views()}
                yield flight.Result(json.dumps(answer, separators=(",", ":")).encode())
            elif kind in SPEC_ACTIONS:  # Flight SQL (unsupported ones: UNIMPLEMENTED, named)
                for result in self.flight_sql.action(session_key(context), kind, body):
                    yield flight.Result(result)
            else:  # a client mistake: answered as a ProtocolError, logged without a traceback
                raise ProtocolError(
                    f"unknown action {kind[:40]!r}: this worker knows {', '.join(sorted(ACTIONS))}"
                )
        except BaseException as exc:
            raise self._failed(kind, exc) from exc

    @staticmethod
    def _failed(kind: str, exc: BaseException) -> BaseException:
        """Log a failed action once and return the one-line Flight error its caller gets."""
        out: BaseException = exc  # FlightError: already translated (and logged) further in;
        if isinstance(exc, flight.FlightError):  # GeneratorExit, SystemExit...: not ours to translate
            return out
        if isinstance(exc, NotImplementedError):  # gRPC UNIMPLEMENTED: Flight SQL clients may fall back
            log.info("%s: %s", kind, exc)
            return out
        if isinstance(exc, FlowError):
            log.warning("action %s failed: %s", kind, exc)
            out = remote_error(exc)
        elif isinstance(exc, Exception):
            log.exception("action %s failed", kind)
            out = remote_error(exc)
        elif is_panic(exc):
            log.error("action %s: the engine panicked: %s", kind, str(exc).splitlines()[:1])
            out = remote_error(TaskFailedError(f"the engine failed: {exc}"))
        return out

    def _hello(self) -> PeerInfo:
        return PeerInfo(
            name=self.name,
            address=self.address,
            version=__version__,
            datafusion_version=datafusion.__version__,
            host_id=host_id(),
            hash_digest=hash_digest(),
            peers=self.peers,
            peers_down=self.peer_book.down(),
            tasks_running=self._active,
            tasks_queued=self._queued,
            http=self.http_url,
        )

    def _run_task(self, spec: TaskSpec, submitter: str = "") -> bytes:
        spec.input_specs()  # malformed inputs: a ProtocolError before anything else
        self.policy.check_plan(spec.plan)  # before decoding: paths, extension nodes
        task_dir = self.store.task_dir(spec.query_id, spec.stage, spec.task)
        log.debug("starting")
        with self._lock:
            cancel = self._cancels.setdefault(spec.query_id, threading.Event())
            self._running[spec.query_id] = self._running.get(spec.query_id, 0) + 1
            self._queued += 1
        kind = self.queries.task_started(spec.query_id, spec.stage, spec.info, submitter)
        result: TaskResult | None = None
        error: BaseException | None = None
        slot = False
        try:
            self._slots.acquire()  # at most max_tasks at once; the others wait here
            slot = True
            with self._lock:
                self._queued -= 1
                self._active += 1
            if cancel.is_set():
                raise TaskFailedError("cancelled by the submitter")
            self._check_disk()
            result = self.runner.run(spec, task_dir, cancel)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._lock:
                if slot:
                    self._active -= 1
                else:
                    self._queued -= 1
                self._running[spec.query_id] -= 1
                if not self._running[spec.query_id]:
                    del self._running[spec.query_id]
                    if not cancel.is_set():
                        self._cancels.pop(spec.query_id, None)
            if slot:
                self._slots.release()
            self._count(spec, kind, result, error, cancel.is_set())
            if cancel.is_set():
                self.store.release(spec.query_id)  # files a cancelled task wrote after the cancel
        with self._lock:
            self.tasks_run += 1
        assert result is not None  # set whenever nothing was raised
        return result.to_bytes()

    def _count(
        self,
        spec: TaskSpec,
        kind: str,
        result: TaskResult | None,
        error: BaseException | None,
        cancelled: bool,
    ) -> None:
        """Metrics and the query log for one ended task."""
        if result is not None:
            nbytes = sum(int(o.get("nbytes", 0)) for o in result.outputs)
            self.queries.task_ended(spec.query_id, spec.stage, "done", result.rows, nbytes)
            self.metrics.tasks.labels(state="done").inc()
            self.metrics.task_seconds.labels(stage_kind=kind).observe(result.seconds)
            self.metrics.shuffle_bytes.labels(direction="in").inc(result.fetched_bytes)
            return
        outcome: TaskOutcome = "cancelled" if cancelled else "failed"
        retried = isinstance(error, PeerUnreachableError)  # the submitter runs it elsewhere
        self.queries.task_ended(spec.query_id, spec.stage, outcome, retried=retried)
        self.metrics.tasks.labels(state=outcome).inc()

    def _check_disk(self) -> None:
        """Refuse a task while the work dir holds more than --max-disk."""
        limit = self.limits.max_disk
        if limit is not None and (used := self.store.used_bytes()) > limit:
            raise TaskFailedError(
                f"work dir full: {used / 1e6:.0f} MB held, --max-disk is {limit / 1e6:.0f} MB "
                "(raise it, add peers, or wait for running queries to finish)"
            )

    def _cancel(self, query_id: str) -> None:
        """Stop the query's running tasks at their next batch and drop its files (also future tasks)."""
        with self._lock:
            self._cancels.setdefault(query_id, threading.Event()).set()
            self._cancelled_at[query_id] = time.monotonic()
            now = time.monotonic()
            for old in [q for q, t in self._cancelled_at.items() if now - t > CANCEL_MEMORY_SECONDS]:
                self._cancelled_at.pop(old, None)
                if old not in self._running:
                    self._cancels.pop(old, None)
        self.store.release(query_id)

    # ----------------------------------------------------------------- Flight SQL (worker/flightsql.py)
    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        """Flight SQL: plan a statement (its ticket runs it), or describe a metadata command's result."""
        self._authorize(context, "get_flight_info")
        return self._sql_call(
            "GetFlightInfo", lambda: self.flight_sql.flight_info(session_key(context), descriptor)
        )

    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        """Flight SQL: the schema a command returns; nothing runs."""
        self._authorize(context, "get_schema")
        schema = self._sql_call("GetSchema", lambda: self.flight_sql.schema(session_key(context), descriptor))
        return flight.SchemaResult(schema)

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        """Updates, ingestion and statement parameters (DoPut): refused, the mesh answers queries only."""
        self._authorize(context, "do_put")
        name = "(a path descriptor)"
        if descriptor.descriptor_type == flight.DescriptorType.CMD and is_flight_sql(descriptor.command):
            name = self._sql_call("DoPut", lambda: unpack(descriptor.command)[0])
        self.flight_sql.count("DoPut", label(name))
        raise NotImplementedError(
            f"Flight SQL command {name} over DoPut is not supported by flow-worker: it answers queries only "
            "(no updates, ingestion or statement parameters)"
        )

    def _sql_call(self, rpc: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except BaseException as exc:
            raise self._failed(rpc, exc) from exc

    # ----------------------------------------------------------------- data
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        """Stream one output partition (ticket: msgpack OutputRef) or a Flight SQL result (ticket: an Any).

        A bad ticket gets a one-line Flight error.
        """
        self._authorize(context, "do_get")
        if len(ticket.ticket) <= MAX_COMMAND_BYTES and is_flight_sql(ticket.ticket):  # a command's own ticket
            return self._sql_call("DoGet", lambda: self.flight_sql.stream(context, ticket.ticket))
        try:
            if len(ticket.ticket) > MAX_TICKET_BYTES:
                raise ProtocolError(f"{len(ticket.ticket)} bytes, the limit is {MAX_TICKET_BYTES}")
            ref = OutputRef.from_bytes(ticket.ticket)
            path = self.store.output_path(ref)
        except ProtocolError as exc:
            raise flight.FlightServerError(f"ProtocolError: bad ticket: {exc}") from exc
        try:
            size = path.stat().st_size
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except FileNotFoundError as exc:
            raise flight.FlightServerError(
                f"ProtocolError: no output for query {ref.query_id} stage {ref.stage} task {ref.task} "
                f"partition {ref.partition} (released, or never written)"
            ) from exc
        self.metrics.shuffle_bytes.labels(direction="out").inc(size)
        return flight.RecordBatchStream(table)

    def _watch_peers(self) -> None:
        """Ask every ``--peers`` entry ``hello`` now and every few seconds; remember what each answered."""
        while True:
            for peer in self.peers:
                try:
                    info = PeerInfo.from_bytes(self.pool.action(peer, "hello", b"", PEER_CHECK_TIMEOUT))
                except FlowError as exc:
                    before = self.peer_book.failed(peer)
                    if before == "up":
                        log.warning("peer %s is down: %s", peer, exc)
                    elif before == "unknown":
                        log.info("peer %s does not answer yet: %s", peer, exc)
                else:
                    if self.peer_book.answered(peer, info) == "down":
                        log.info("peer %s is back", peer)
            starting = time.monotonic() - self._started < PEER_FIRST_CONTACT_SECONDS
            if self._stop.wait(1.0 if starting and self.peer_book.unseen() else PEER_CHECK_SECONDS):
                return

    def _janitor(self) -> None:
        """Remove files of queries nobody released (their submitter vanished) once idle for the TTL."""
        period = max(0.5, min(60.0, self.limits.query_ttl / 4))
        while not self._stop.wait(period):
            for query_id in self.store.queries():
                with self._lock:
                    busy = query_id in self._running
                idle = self.store.idle_seconds(query_id)
                if not busy and idle > self.limits.query_ttl:
                    log.info("query=%s: expired after %.0fs without a release", query_id, idle)
                    self.store.release(query_id)
                    self.queries.finish(query_id, "expire")
            self.queries.expire(self.limits.query_ttl)

    # ----------------------------------------------------------------- status (worker/http.py)
    def serve_http(self, listen: str, tls: TLSFiles | None) -> str:
        """Serve health, metrics, the status API and page on ``listen``; returns the base URL."""
        from ematix_flow.worker.http import HttpServer, create_app

        server = HttpServer(create_app(self), listen, tls, self.policy.check_peer)
        server.start()
        self.http, self.http_url = server, server.url
        return server.url

    def work_dir_bytes(self) -> int:
        """Bytes the work dir holds for queries (measured at most once a second)."""
        at, used = self._disk
        if time.monotonic() - at >= 1.0:
            used = self.store.used_bytes()
            self._disk = (time.monotonic(), used)
        return used

    def readiness(self) -> str:
        """Why this worker takes no tasks now, "" when it does (for ``/readyz``)."""
        if self._stop.is_set():
            return "shutting down"
        limit = self.limits.max_disk
        if limit is not None and (used := self.work_dir_bytes()) > limit:
            return f"work dir holds {used:,} bytes, over --max-disk {limit:,}"
        max_tasks = max(1, self.limits.max_tasks)
        if self._active >= max_tasks and self._queued:
            return f"all {max_tasks} --max-tasks slots busy, {self._queued} tasks queued"
        return ""

    def status_view(self) -> dict[str, Any]:
        """Who this worker is, its load and its peers (``/api/status``)."""
        return {
            "name": self.name,
            "address": self.address,
            "instance": self.instance,
            "version": __version__,
            "datafusion_version": datafusion.__version__,
            "uptime_seconds": time.monotonic() - self._started,
            "http": self.http_url,
            "load": {
                "tasks_running": self._active,
                "tasks_queued": self._queued,
                "max_tasks": max(1, self.limits.max_tasks),
                "cpu_percent": self.meter.cpu_percent(),
                "memory_bytes": self.meter.memory_bytes(),
                "work_dir_bytes": self.work_dir_bytes(),
            },
            "peers": self.peer_book.views(),
            "tables": self.catalog.names,
        }

    def query_views(self) -> list[dict[str, Any]]:
        """The queries this worker ran tasks for, newest first."""
        return self.queries.views()

    def ask_peers(self) -> tuple[dict[str, bytes], list[str]]:
        """Every ``--peers`` entry's ``status`` answer, in parallel; down ones are not asked but listed."""
        down = set(self.peer_book.down())
        futures = {
            p: self._asker.submit(self.pool.action, p, "status", b"", STATUS_TIMEOUT)
            for p in self.peers
            if p not in down
        }
        answers: dict[str, bytes] = {}
        unreachable = sorted(down)
        for peer, future in futures.items():
            try:
                answers[peer] = future.result()
            except FlowError as exc:
                log.info("peer %s did not answer status: %s", peer, exc)
                unreachable.append(peer)
        return answers, unreachable

    def metrics_text(self) -> bytes:
        """Prometheus text format of this worker's metrics."""
        from prometheus_client import generate_latest

        return generate_latest(self.metrics.registry)

    def close_all(self) -> None:
        """Stop serving and remove the work dir."""
        self._stop.set()
        self.gateway.close()
        self.shutdown()
        if self.http is not None:
            self.http.stop()
        self._asker.shutdown(wait=False, cancel_futures=True)
        self.pool.close()
        self.runner.fetchers.shutdown(wait=False, cancel_futures=True)
        self.store.destroy()
