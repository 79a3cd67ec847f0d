"""Submitting through a peer: ``Mesh(via="HOST:PORT")`` and ``flow sql --via`` speak Flight SQL to it.

The peer plans the query with its own view of the data and drives it across the mesh; this side does
no planning and needs no access to the data: it sends the SQL (``GetFlightInfo`` with
``CommandStatementQuery``) and streams the result (``DoGet`` of the statement's ticket), over the same
mutual TLS as every other hop. A client cookie keeps one Flight SQL session per ``ViaClient``, so
tables it creates (``CREATE EXTERNAL TABLE``) are its own until it closes.

``ViaMesh`` is what ``Mesh(via=...)`` makes: a ``Mesh`` whose methods go through a ``ViaClient``.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from datafusion import AggregateUDF, ScalarUDF

from ematix_flow.coordinator_lib.mesh import DEFAULT_LOCAL_BELOW_BYTES, DEFAULT_MIN_TASK_BYTES, Mesh
from ematix_flow.coordinator_lib.progress import ProgressHook
from ematix_flow.coordinator_lib.report import RunReport
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError, FlowError, QueryTimeoutError, first_line
from ematix_flow.flightsql import metadata
from ematix_flow.flightsql.ddl import CreateTable
from ematix_flow.flightsql.protocol import (
    SESSION_COOKIE,
    ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult,
    CommandGetSqlInfo,
    CommandGetTables,
    CommandStatementQuery,
    Message,
    unpack,
)
from ematix_flow.transport.flight import translate
from ematix_flow.transport.messages import PeerInfo
from ematix_flow.transport.tls import TLSConfig, flight_client_kwargs, location
from ematix_flow.urls import folder_url, is_url

log = logging.getLogger(__name__)


class _CookieJar(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Keeps the session cookie the peer sets and sends it back on every call."""

    def __init__(self) -> None:
        self.cookie = ""
        self._lock = threading.Lock()

    def start_call(self, info: flight.CallInfo) -> flight.ClientMiddleware:
        return _CookieCall(self)


class _CookieCall(flight.ClientMiddleware):  # type: ignore[misc]
    def __init__(self, jar: _CookieJar) -> None:
        self.jar = jar

    def sending_headers(self) -> dict[str, str]:
        return {"cookie": self.jar.cookie} if self.jar.cookie else {}

    def received_headers(self, headers: Mapping[str, list[str]]) -> None:
        for value in headers.get("set-cookie", []):
            pair = value.split(";", 1)[0].strip()
            if pair.startswith(SESSION_COOKIE + "="):
                with self.jar._lock:
                    self.jar.cookie = self.jar.cookie or pair  # the first session we were given is ours


#: What a command does, for error messages.
_WHAT = {
    "CommandStatementQuery": "running a query",
    "CommandGetSqlInfo": "connecting",
    "CommandGetTables": "listing tables",
}


class ViaClient:
    """A Flight SQL client of one peer, using the mesh's TLS material (``tls=None``: plaintext)."""

    def __init__(
        self,
        address: str,
        tls: TLSConfig | None,
        *,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.timeout = timeout
        kwargs: dict[str, Any] = flight_client_kwargs(tls) if tls else {}
        self._client = flight.FlightClient(location(address, tls), middleware=[_CookieJar()], **kwargs)
        try:  # a first call: the peer answers (or we fail here) and gives this client its session cookie
            for _ in self.run(CommandGetSqlInfo(info=(0,)), connect_timeout)[1]:
                pass
        except BaseException:
            self._client.close()
            raise

    def _options(self, timeout: float | None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(timeout=timeout if timeout is not None else self.timeout)

    def _error(self, exc: BaseException, what: str, timeout: float | None) -> FlowError:
        if isinstance(exc, flight.FlightTimedOutError):
            return QueryTimeoutError(
                f"{what} through peer {self.address} timed out after {timeout or self.timeout:g} s "
                "(give it more time with --timeout / Mesh.sql(..., timeout=))"
            )
        return translate(exc, self.address, what)

    def schema(self, sql: str) -> pa.Schema:
        """The schema ``sql`` returns, planned by the peer: nothing runs.

        Asked as a prepared statement, closed at once, not with GetSchema: pyarrow's GetSchema loses a
        Flight error's ``extra_info`` on both ends (apache/arrow#43556), so a refusal (QueryError...)
        would arrive without the record that names its kind.
        """
        request = ActionCreatePreparedStatementRequest(query=sql).pack()
        answer = self._action("CreatePreparedStatement", request, "planning a query")
        result = ActionCreatePreparedStatementResult.from_bytes(unpack(answer)[1])
        close = ActionClosePreparedStatementRequest(result.prepared_statement_handle).pack()
        try:
            self._action("ClosePreparedStatement", close, "closing a prepared statement")
        except FlowError as exc:  # the peer drops it after its statement TTL anyway
            log.info("ClosePreparedStatement on %s failed: %s", self.address, exc)
        return pa.ipc.read_schema(pa.py_buffer(result.dataset_schema))

    def _action(self, name: str, body: bytes, what: str) -> bytes:
        """Run Flight SQL action ``name``; the body of its first result (b"" when there is none)."""
        try:
            results = list(self._client.do_action(flight.Action(name, body), self._options(None)))
        except (flight.FlightError, OSError, pa.ArrowException) as exc:
            raise self._error(exc, what, None) from exc
        return bytes(results[0].body.to_pybytes()) if results else b""

    def run(
        self, command: Message, timeout: float | None = None
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Send a command; its result's schema and a generator of its batches (every endpoint in turn)."""
        options = self._options(timeout)
        what = _WHAT.get(type(command).__name__, type(command).__name__)
        descriptor = flight.FlightDescriptor.for_command(command.pack())
        try:
            info = self._client.get_flight_info(descriptor, options)
        except (flight.FlightError, OSError, pa.ArrowException) as exc:
            raise self._error(exc, what, timeout) from exc

        def batches() -> Iterator[pa.RecordBatch]:
            for endpoint in info.endpoints:
                try:
                    reader = self._client.do_get(endpoint.ticket, options)
                    for chunk in reader:
                        yield chunk.data
                except (flight.FlightError, OSError, pa.ArrowException) as exc:
                    raise self._error(exc, what, timeout) from exc

        return info.schema, batches()

    def sql(self, sql: str, timeout: float | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run ``sql`` on the peer: the result's schema and its batches as they stream."""
        return self.run(CommandStatementQuery(query=sql), timeout)

    def execute(self, sql: str) -> None:
        """Run a statement whose result is of no interest (CREATE EXTERNAL TABLE)."""
        for _ in self.sql(sql)[1]:
            pass

    def register(
        self, name: str, kind: str, path: str | os.PathLike[str], options: Mapping[str, Any]
    ) -> None:
        """Register table ``name`` in this session on the peer (``path`` is the peer's, absolute)."""
        if options:
            raise ConfigError(
                f"table {name}: reader options ({', '.join(options)}) cannot be sent through a peer (via=...)"
            )
        text = os.fspath(path)
        if kind == "iceberg":
            pass  # iceberg://CATALOG/namespace.table: a catalog of the peer's storage file
        elif is_url(text):
            text = folder_url(text)  # the peer resolves the bucket with its own --storage / environment
        elif not text.startswith("/"):
            raise ConfigError(
                f"table {name}: {text!r} must be an absolute path or a URL: with via=..., the peer reads "
                "it, not us"
            )
        self.execute(CreateTable(name, kind, text, replace=True).to_sql())

    def tables(self) -> dict[str, pa.Schema]:
        """The tables this session sees on the peer (its catalog and our own), with their schemas."""
        schema, batches = self.run(CommandGetTables(include_schema=True))
        return metadata.schemas_from_tables(pa.Table.from_batches(list(batches), schema=schema))

    def close(self) -> None:
        """End the session on the peer (its CREATE EXTERNAL TABLE tables go) and disconnect."""
        try:
            list(self._client.do_action(flight.Action("CloseSession", b""), self._options(5.0)))
        except (flight.FlightError, OSError, pa.ArrowException) as exc:
            log.info("CloseSession on %s failed: %s", self.address, first_line(exc, 200))
        self._client.close()


class ViaMesh(Mesh):
    """A Mesh whose queries a peer plans and drives (``Mesh(via="HOST:PORT")`` makes one).

    ``sql``, ``sql_batches``, ``schema``, ``tables`` and the ``register_*`` methods go to the peer
    over Flight SQL; what needs a planner in this process (``explain``, ``analyze``, UDFs) is refused.
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
        """Connect to peer ``via`` (see ``Mesh``); ``partitions`` and ``settings`` are refused.

        The options that shape tasks (``min_task_bytes``, ``local_reads``, ...) are the peer's own:
        they are accepted and ignored here.
        """
        # Mesh.__init__ is not called: nothing here plans, spawns or talks to the peers themselves
        address = via.strip() if via else ""
        self.via = address
        self.peers = [p.strip() for p in peers if p.strip()]
        if tls is None and not insecure:
            raise ConfigError("no TLS material: pass tls=TLSConfig.from_dir('certs') or insecure=True")
        self.tls = tls
        self.workers = []
        self.last_run = None
        self._owned_dir = None
        self._closed = False
        if partitions is not None or settings:
            raise ConfigError("partitions and settings are the planning peer's with via=...: leave them out")
        self._client = ViaClient(address, tls, timeout=query_timeout, connect_timeout=connect_timeout)
        self.peer_info: dict[str, PeerInfo] = {}

    @property
    def peers_alive(self) -> list[str]:
        """The peers given (this side asks none of them: the planning peer knows which are down)."""
        return list(self.peers)

    def register_parquet(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a Parquet file or folder (the peer's absolute path) in this session on the peer."""
        return self._client.register(name, "parquet", path, options)

    def register_csv(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a CSV file or folder (the peer's absolute path) in this session on the peer."""
        return self._client.register(name, "csv", path, options)

    def register_json(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a newline-delimited JSON file or folder (the peer's) in this session on the peer."""
        return self._client.register(name, "json", path, options)

    def register_delta(
        self,
        name: str,
        uri: str | os.PathLike[str],
        *,
        version: int | None = None,
        timestamp: datetime.datetime | str | None = None,
        storage: str | os.PathLike[str] | StorageConfig | None = None,
    ) -> None:
        """Register the Delta table at ``uri`` (the peer's path, or a URL) in this session on the peer.

        The peer reads its latest version; ``version``, ``timestamp`` and ``storage`` are refused here.
        """
        if version is not None or timestamp is not None or storage is not None:
            raise ConfigError(
                f"table {name}: time travel and storage= cannot be sent through a peer (via=...); "
                "register it on a Mesh that plans here"
            )
        return self._client.register(name, "delta", uri, {})

    def register_iceberg(
        self,
        name: str,
        table: str,
        *,
        catalog: str | Mapping[str, str] = "default",
        snapshot_id: int | None = None,
        storage: str | os.PathLike[str] | StorageConfig | None = None,
    ) -> None:
        """Register an Iceberg table of a catalog named in the peer's storage file, in this session.

        ``catalog`` must be a name (properties and ``snapshot_id`` are refused: the peer plans).
        """
        if not isinstance(catalog, str) or snapshot_id is not None or storage is not None:
            raise ConfigError(
                f"table {name}: through a peer (via=...), name a catalog of its --storage file; "
                "catalog properties, snapshot_id and storage= are for a Mesh that plans here"
            )
        return self._client.register(name, "iceberg", f"iceberg://{catalog}/{table}", {})

    def tables(self) -> dict[str, pa.Schema]:
        """The tables this session sees on the peer, with their schemas."""
        return self._client.tables()

    def schema(self, sql: str, *, read_only: bool = False) -> pa.Schema:
        """The schema of the result of ``sql``, planned by the peer without running it."""
        return self._client.schema(sql)

    def register_udf(self, function: ScalarUDF | AggregateUDF) -> None:
        """Refused: a UDF travels in plans made here, and the peer plans."""
        raise self._no_planner("register_udf")

    def explain(
        self,
        sql: str,
        analyze: bool = False,
        *,
        timeout: float | None = None,
        progress: ProgressHook | None = None,
    ) -> str:
        """Refused: send ``EXPLAIN ...`` as SQL instead."""
        raise self._no_planner("analyze" if analyze else "explain")

    def analyze(
        self, sql: str, *, timeout: float | None = None, progress: ProgressHook | None = None
    ) -> RunReport:
        """Refused: the peer drives the stages, so no stage report arrives here."""
        raise self._no_planner("analyze")

    def _no_planner(self, what: str) -> ConfigError:
        return ConfigError(
            f"Mesh.{what} needs the planner of this process, but peer {self.via} plans its queries "
            "(via=...): connect with peers=[...] and the data paths instead, or send EXPLAIN as SQL"
        )

    def _batches(
        self,
        sql: str,
        schema_out: list[pa.Schema],
        timeout: float | None = None,
        hook: ProgressHook | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Generator[pa.RecordBatch, None, None]:
        """Run ``sql`` through the peer that plans it; ``last_run`` holds its schema, rows and time."""
        if self._closed:
            raise ConfigError("this Mesh is closed: open a new one")
        t0 = time.perf_counter()
        schema, batches = self._client.sql(sql, timeout)
        schema_out.append(schema)
        report = RunReport("", sql, [], schema=schema, note=f"planned and driven by peer {self.via}")
        self.last_run = report
        try:
            for batch in batches:
                report.rows += batch.num_rows
                yield batch
        finally:
            report.seconds = time.perf_counter() - t0

    def close(self) -> None:
        """End the session on the peer (its CREATE EXTERNAL TABLE tables go) and disconnect."""
        self._closed = True
        self._client.close()
