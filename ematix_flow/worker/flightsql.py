"""Arrow Flight SQL on a worker: the commands, tickets and actions real clients (ADBC, JDBC) send.

Served on the worker's own port and mTLS. ``GetFlightInfo`` of a ``CommandStatementQuery`` (or a
prepared statement) plans the query read-only and answers its schema with one endpoint whose ticket
is a ``TicketStatementQuery`` (a random handle); ``DoGet`` of that ticket runs it across the mesh and
streams the result. A metadata command's ticket is the command itself. Anything else is refused with
gRPC UNIMPLEMENTED (raised as ``NotImplementedError``: pyarrow has no Flight error class for it)
naming the command and listing the supported ones.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping

import pyarrow as pa
import pyarrow.flight as flight

from ematix_flow import __version__
from ematix_flow.errors import FlowError, ProtocolError
from ematix_flow.flightsql import metadata
from ematix_flow.flightsql.protocol import (
    MESSAGES,
    SESSION_CLOSED,
    SESSION_COOKIE,
    SESSION_NOT_CLOSEABLE,
    SPEC_ACTIONS,
    SPEC_COMMANDS,
    ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult,
    CommandGetCrossReference,
    CommandGetDbSchemas,
    CommandGetPrimaryKeys,
    CommandGetSqlInfo,
    CommandGetTables,
    CommandPreparedStatementQuery,
    CommandStatementQuery,
    Message,
    TicketStatementQuery,
    close_session_result,
    session_from_cookies,
    unpack,
)
from ematix_flow.transport.flight import remote_error
from ematix_flow.worker.gateway import Gateway, SessionKey, Statement

log = logging.getLogger(__name__)

#: The largest Flight SQL command (it carries the SQL text) and action body taken.
MAX_COMMAND_BYTES = 1 << 20
#: Session ids offered and remembered; a cookie naming another one gets no session of its own.
MAX_ISSUED_SESSIONS = 10_000
#: Actions served, with what they do (also listed by ``list_actions``).
ACTIONS = {
    "CreatePreparedStatement": "Flight SQL: prepare a statement (ActionCreatePreparedStatementRequest)",
    "ClosePreparedStatement": "Flight SQL: forget a prepared statement",
    "CloseSession": "Flight SQL: end this cookie session (its CREATE EXTERNAL TABLE tables go)",
}
_METADATA = (
    "CommandGetSqlInfo",
    "CommandGetCatalogs",
    "CommandGetDbSchemas",
    "CommandGetTables",
    "CommandGetTableTypes",
    "CommandGetPrimaryKeys",
    "CommandGetExportedKeys",
    "CommandGetImportedKeys",
    "CommandGetCrossReference",
)
SUPPORTED = ("CommandStatementQuery", "CommandPreparedStatementQuery", *_METADATA)


def label(name: str) -> str:
    """A command or action name for metrics: a name of the specification, else ``other``."""
    return name if name in SPEC_COMMANDS or name in SPEC_ACTIONS else "other"


def unsupported(name: str) -> NotImplementedError:
    """The error an unsupported command gets: gRPC UNIMPLEMENTED, naming it and what is served."""
    return NotImplementedError(
        f"Flight SQL command {name} is not supported by flow-worker (supported: {', '.join(SUPPORTED)})"
    )


def _no_transaction(transaction_id: bytes | None) -> None:
    if transaction_id is not None:
        raise NotImplementedError("Flight SQL transactions are not supported by flow-worker (queries only)")


class SessionCookies(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Reads the Flight SQL session cookie of a call; offers a new one to calls that have none.

    Only Flight SQL's entry points (GetFlightInfo, GetSchema) offer one, so mesh traffic carries none.
    """

    def __init__(self) -> None:
        super().__init__()
        self._issued: OrderedDict[str, None] = OrderedDict()  # the newest MAX_ISSUED_SESSIONS offers
        self._lock = threading.Lock()

    def start_call(self, info: flight.CallInfo, headers: Mapping[str, list[str]]) -> flight.ServerMiddleware:
        """The session of this call: a cookie this worker issued, else none (and an offer)."""
        sid = session_from_cookies(list(headers.get("cookie", [])))
        with self._lock:
            if sid not in self._issued:
                sid = ""  # not ours (made up, or from before a restart): no session of its own
            entry = info.method in (flight.FlightMethod.GET_FLIGHT_INFO, flight.FlightMethod.GET_SCHEMA)
            offer = "" if sid or not entry else secrets.token_hex(16)
            if offer:
                self._issued[offer] = None
                while len(self._issued) > MAX_ISSUED_SESSIONS:
                    self._issued.popitem(last=False)
        return _SessionCall(sid, offer)


class _SessionCall(flight.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, session_id: str, offer: str) -> None:
        self.session_id = session_id
        self.offer = offer

    def sending_headers(self) -> dict[str, str]:
        return {"set-cookie": f"{SESSION_COOKIE}={self.offer}"} if self.offer else {}


def session_key(context: flight.ServerCallContext) -> SessionKey:
    """(certificate identity, cookie session id or "") of a call."""
    identity = context.peer_identity().decode("utf-8", "replace")
    call = context.get_middleware("session")
    return identity, call.session_id if isinstance(call, _SessionCall) else ""


class FlightSqlService:
    """One worker's Flight SQL requests: decoded, answered through its gateway."""

    def __init__(self, gateway: Gateway, count: Callable[[str, str], None] = lambda rpc, name: None) -> None:
        self.gateway = gateway
        self.count = count  # (rpc, command or action name): for metrics
        self.sql_info = metadata.sql_info(__version__, int(gateway.statement_ttl * 1000))

    def _command(self, rpc: str, descriptor: flight.FlightDescriptor) -> tuple[str, bytes]:
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise ProtocolError(
                "Flight SQL takes command descriptors (FlightDescriptor.for_command), not paths"
            )
        command = descriptor.command
        if len(command) > MAX_COMMAND_BYTES:
            raise ProtocolError(f"command of {len(command)} bytes is over the {MAX_COMMAND_BYTES}-byte limit")
        name, payload = unpack(command)
        self.count(rpc, label(name))
        log.debug("flight sql %s %s", rpc, name)
        return name, payload

    def flight_info(self, key: SessionKey, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        """GetFlightInfo: plan a statement (ticket: its handle) or answer a metadata command's schema."""
        name, payload = self._command("GetFlightInfo", descriptor)
        statement = self._statement(key, name, payload, run=True)
        if statement is not None:
            ticket = TicketStatementQuery(statement_handle=self.gateway.hold(statement)).pack()
            schema = statement.schema
        else:
            schema, ticket = self._metadata(key, name, payload).schema, descriptor.command
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    def schema(self, key: SessionKey, descriptor: flight.FlightDescriptor) -> pa.Schema:
        """GetSchema: the schema a command returns (nothing runs, no handle is made)."""
        name, payload = self._command("GetSchema", descriptor)
        statement = self._statement(key, name, payload, run=False)
        return statement.schema if statement is not None else self._metadata(key, name, payload).schema

    def _statement(self, key: SessionKey, name: str, payload: bytes, *, run: bool) -> Statement | None:
        """The statement a query command names (None for other commands); ``run``: as for execution."""
        if name == "CommandStatementQuery":
            query = CommandStatementQuery.from_bytes(payload)
            _no_transaction(query.transaction_id)
            return (self.gateway.execute if run else self.gateway.prepare)(key, query.query)
        if name == "CommandPreparedStatementQuery":
            handle = CommandPreparedStatementQuery.from_bytes(payload).prepared_statement_handle
            prepared = self.gateway.lookup(key[0], handle, take=False)
            return self.gateway.execute(key, prepared.sql) if run else prepared
        return None

    def _metadata(self, key: SessionKey, name: str, payload: bytes) -> pa.Table:
        if name not in _METADATA:
            raise unsupported(name)
        cmd: Message = MESSAGES[name].from_bytes(payload)
        if isinstance(cmd, CommandGetSqlInfo):
            return metadata.sql_info_table(self.sql_info, cmd.info)
        if isinstance(cmd, CommandGetTables):
            return metadata.tables(cmd, self.gateway.tables(key))
        if isinstance(cmd, CommandGetDbSchemas):
            return metadata.db_schemas(cmd)
        if isinstance(cmd, CommandGetPrimaryKeys | CommandGetCrossReference):  # no table has keys
            schema = (
                metadata.PRIMARY_KEYS_SCHEMA
                if name == "CommandGetPrimaryKeys"
                else metadata.FOREIGN_KEYS_SCHEMA
            )
            return schema.empty_table()
        return metadata.catalogs() if name == "CommandGetCatalogs" else metadata.table_types()

    def stream(self, context: flight.ServerCallContext, ticket: bytes) -> flight.FlightDataStream:
        """DoGet: run a statement (its handle is used up) or answer a metadata command."""
        key = session_key(context)
        name, payload = unpack(ticket)
        self.count("DoGet", label(name))
        if name != "TicketStatementQuery":
            return flight.RecordBatchStream(self._metadata(key, name, payload))
        handle = TicketStatementQuery.from_bytes(payload).statement_handle
        statement = self.gateway.lookup(key[0], handle, take=True)
        batches = self.gateway.run(statement, context.is_cancelled)
        return flight.GeneratorStream(statement.schema, _one_line_errors(batches))

    def action(self, key: SessionKey, kind: str, body: bytes) -> list[bytes]:
        """DoAction of a Flight SQL action: its result bodies."""
        self.count("DoAction", label(kind))
        if kind not in ACTIONS:
            raise NotImplementedError(
                f"Flight SQL action {kind} is not supported by flow-worker (supported: {', '.join(ACTIONS)})"
            )
        if len(body) > MAX_COMMAND_BYTES:
            raise ProtocolError(
                f"{kind} body of {len(body)} bytes is over the {MAX_COMMAND_BYTES}-byte limit"
            )
        if kind == "CloseSession":
            closed = self.gateway.close_session(key)
            return [close_session_result(SESSION_CLOSED if closed else SESSION_NOT_CLOSEABLE)]
        name, payload = unpack(body)
        if kind == "CreatePreparedStatement" and name == "ActionCreatePreparedStatementRequest":
            request = ActionCreatePreparedStatementRequest.from_bytes(payload)
            _no_transaction(request.transaction_id)
            statement = self.gateway.prepare(key, request.query)
            result = ActionCreatePreparedStatementResult(
                prepared_statement_handle=self.gateway.hold(statement),
                dataset_schema=statement.schema.serialize().to_pybytes(),
            )
            return [result.pack()]
        if kind == "ClosePreparedStatement" and name == "ActionClosePreparedStatementRequest":
            handle = ActionClosePreparedStatementRequest.from_bytes(payload).prepared_statement_handle
            self.gateway.release(key[0], handle)
            return []
        raise ProtocolError(f"{kind} takes an Action{kind}Request, not a {name}")


def _one_line_errors(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A result stream whose failures reach the client as one-line Flight errors."""
    try:
        yield from batches
    except FlowError as exc:
        log.warning("a Flight SQL result failed: %s", exc)
        raise remote_error(exc) from exc
    except Exception as exc:
        log.exception("a Flight SQL result failed")
        raise remote_error(exc) from exc
