"""The worker's Arrow Flight server: run tasks, serve their outputs, release queries."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.tasks import TaskRunner
from ematix_flow.errors import (
    AccessDeniedError,
    FlowError,
    PeerUnreachableError,
    ProtocolError,
    TaskFailedError,
    first_line,
)
from ematix_flow.flightsql.protocol import SPEC_ACTIONS, is_flight_sql, unpack
from ematix_flow.logs import task_context
from ematix_flow.transport.flight import ClientPool, remote_error
from ematix_flow.transport.messages import MAX_MESSAGE_BYTES, OutputRef, PeerInfo, TaskResult, TaskSpec
from ematix_flow.transport.tls import TLSConfig, flight_server_kwargs, location
from ematix_flow.worker.admission import Admission
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
from ematix_flow.worker.loops import expire_queries, watch_peers
from ematix_flow.worker.policy import AccessPolicy
from ematix_flow.worker.status import StatusViews
from ematix_flow.worker.store import WorkStore
from ematix_flow.worker.telemetry import Metrics, PeerBook, ProcessMeter, QueryLog, TaskOutcome

if TYPE_CHECKING:
    from ematix_flow.worker.http import HttpServer, TLSFiles

log = logging.getLogger(__name__)
T = TypeVar("T")

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
        storage: StorageConfig | None = None,
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
        self.storage = storage or StorageConfig()  # this worker's buckets: plans name URLs only
        ctx = execution_context(
            memory_limit=self.limits.memory_limit,
            spill_dir=str(work_dir / layout.SPILL_DIR),
            allow_udfs=self.policy.allow_udfs,
        )
        self.runner = TaskRunner(ctx, self.pool, work_dir, fetch_timeout=300.0, storage=self.storage)
        self.admission = Admission(self.limits.max_tasks, self.limits.max_disk, self.store.used_bytes)
        self._stop = threading.Event()
        self.meter = ProcessMeter()
        self.queries = QueryLog(self.address)
        self.peer_book = PeerBook(self.peers)
        self.metrics = Metrics(self.meter)
        self.metrics.tasks_running.set_function(lambda: self.admission.active)
        self.metrics.tasks_queued.set_function(lambda: self.admission.queued)
        self.metrics.peers_up.set_function(self.peer_book.up)
        self.catalog = catalog or Catalog()
        wildcard = host.strip("[]") in ("0.0.0.0", "::", "") and not advertise  # cannot name itself
        mesh_peers = ([] if wildcard else [self.address]) + [p for p in self.peers if p != self.address]
        self.gateway = Gateway(
            mesh_peers,
            tls,
            self.catalog,
            self.policy,
            memory_limit=self.limits.memory_limit,
            storage=self.storage,
        )
        self.flight_sql = FlightSqlService(
            self.gateway, lambda rpc, name: self.metrics.flight_sql.labels(rpc=rpc, command=name).inc()
        )
        self.status = StatusViews(
            name=self.name,
            address=self.address,
            peers=self.peers,
            pool=self.pool,
            admission=self.admission,
            store=self.store,
            catalog=self.catalog,
            peer_book=self.peer_book,
            queries=self.queries,
            metrics=self.metrics,
            meter=self.meter,
            stop=self._stop,
        )
        self.http: HttpServer | None = None
        loop_args = (self.store, self.admission, self.queries, self.limits.query_ttl, self._stop)
        threading.Thread(target=expire_queries, args=loop_args, name="janitor", daemon=True).start()
        if self.peers:
            peer_args = (self.peers, self.pool, self.peer_book, self._stop, self.status.started)
            threading.Thread(target=watch_peers, args=peer_args, name="peer-health", daemon=True).start()

    # ----------------------------------------------------------------- actions
    def _authorize(self, context: flight.ServerCallContext, what: str) -> None:
        """Refuse a caller whose certificate identity is not allowed (mTLS already proved the CA)."""
        identity = context.peer_identity().decode("utf-8", "replace")
        try:
            self.policy.check_peer(identity)
        except AccessDeniedError as exc:
            log.warning("refused %s from %s (identity %r): not allowed", what, context.peer(), identity)
            raise remote_error(exc, error_class=flight.FlightUnauthorizedError) from exc

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
                        raise self._failed(kind, exc, spec) from exc
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
                yield flight.Result(self.status.status_answer())
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
    def _failed(kind: str, exc: BaseException, spec: TaskSpec | None = None) -> BaseException:
        """Log a failed action once and return the one-line Flight error its caller gets.

        The error carries its record (see ``remote_error``), with the task's query and stage if any.
        """
        query, stage = (spec.query_id, spec.stage) if spec else ("", -1)
        out: BaseException = exc  # FlightError: already translated (and logged) further in;
        if isinstance(exc, flight.FlightError):  # GeneratorExit, SystemExit...: not ours to translate
            return out
        if isinstance(exc, NotImplementedError):  # gRPC UNIMPLEMENTED: Flight SQL clients may fall back
            log.info("%s: %s", kind, exc)
            return out
        if isinstance(exc, FlowError):
            log.warning("action %s failed: %s", kind, exc)
            out = remote_error(exc, query=query, stage=stage)
        elif isinstance(exc, Exception):
            log.exception("action %s failed", kind)
            out = remote_error(exc, query=query, stage=stage)
        elif is_panic(exc):
            log.error("action %s: the engine panicked: %s", kind, first_line(exc))
            out = remote_error(TaskFailedError(f"the engine failed: {exc}"), query=query, stage=stage)
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
            tasks_running=self.admission.active,
            tasks_queued=self.admission.queued,
            http=self.status.http_url,
        )

    def _run_task(self, spec: TaskSpec, submitter: str = "") -> bytes:
        spec.input_specs()  # malformed inputs: a ProtocolError before anything else
        self.policy.check_plan(spec.plan)  # before decoding: paths, extension nodes
        task_dir = self.store.task_dir(spec.query_id, spec.stage, spec.task)
        log.debug("starting")
        slot = self.admission.queue(spec.query_id)
        kind = self.queries.task_started(spec.query_id, spec.stage, spec.info, submitter)
        result: TaskResult | None = None
        error: BaseException | None = None
        try:
            self.admission.start(slot)  # waits for a --max-tasks slot; refused if cancelled or disk full
            result = self.runner.run(spec, task_dir, slot.cancel)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.admission.finish(slot, succeeded=result is not None)
            self._count(spec, kind, result, error, slot.cancelled)
            if slot.cancelled:
                self.store.release(spec.query_id)  # files a cancelled task wrote after the cancel
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

    def _cancel(self, query_id: str) -> None:
        """Stop the query's running tasks at their next batch and drop its files (also future tasks)."""
        self.admission.cancel(query_id)
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
            raise remote_error(ProtocolError(f"bad ticket: {exc}")) from exc
        try:
            size = path.stat().st_size
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except FileNotFoundError as exc:
            raise remote_error(
                ProtocolError(
                    f"no output for query {ref.query_id} stage {ref.stage} task {ref.task} "
                    f"partition {ref.partition} (released, or never written)"
                ),
                query=ref.query_id,
                stage=ref.stage,
            ) from exc
        self.metrics.shuffle_bytes.labels(direction="out").inc(size)
        return flight.RecordBatchStream(table)

    # ----------------------------------------------------------------- status (worker/http.py)
    def serve_http(self, listen: str, tls: TLSFiles | None) -> str:
        """Serve health, metrics, the status API and page on ``listen``; returns the base URL."""
        from ematix_flow.worker.http import HttpServer, create_app

        server = HttpServer(create_app(self.status), listen, tls, self.policy.check_peer)
        server.start()
        self.http, self.status.http_url = server, server.url
        return server.url

    def close_all(self) -> None:
        """Stop serving and remove the work dir."""
        self._stop.set()
        self.gateway.close()
        self.shutdown()
        if self.http is not None:
            self.http.stop()
        self.status.close()
        self.pool.close()
        self.runner.fetchers.shutdown(wait=False, cancel_futures=True)
        self.store.destroy()
