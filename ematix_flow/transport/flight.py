"""Flight plumbing shared by workers and submitters: a client pool, actions, error translation.

Errors cross the wire as Flight errors whose ``extra_info`` holds an :class:`ErrorRecord`: a worker
makes one with :func:`remote_error`, a client rebuilds the same FlowError with :func:`translate`.
Failures gRPC raises itself (refused connections, TLS handshakes, deadlines) carry no record; they
are classified by their Flight error class and by whether the peer answered before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight

from ematix_flow.errors import (
    AccessDeniedError,
    ConfigError,
    FlowError,
    PeerUnreachableError,
    PlanningError,
    ProtocolError,
    QueryError,
    StorageError,
    TaskFailedError,
    TLSError,
    first_line,
)
from ematix_flow.transport.messages import ErrorRecord
from ematix_flow.transport.tls import TLSConfig, flight_client_kwargs, location

#: Error classes a worker reports by kind, so the client raises the same class (others: TaskFailedError).
_REMOTE_ERRORS: dict[str, type[FlowError]] = {
    "QueryError": QueryError,
    "PlanningError": PlanningError,
    "ProtocolError": ProtocolError,
    "TaskFailedError": TaskFailedError,
    "PeerUnreachableError": PeerUnreachableError,
    "AccessDeniedError": AccessDeniedError,
    "StorageError": StorageError,  # a bucket this peer cannot reach (names the peer: config is per process)
    "ConfigError": ConfigError,  # e.g. a Flight SQL gateway whose catalog or peers are wrong
    "FlowError": FlowError,
}


def remote_error(
    exc: BaseException,
    *,
    query: str = "",
    stage: int = -1,
    error_class: type[flight.FlightError] = flight.FlightServerError,
) -> flight.FlightError:
    """The Flight error a worker raises for ``exc``: ``<kind>: <one line>``, with its record attached.

    Args:
        exc: What failed (a FlowError of a reported kind keeps it; anything else is a TaskFailedError).
        query: The query id of the task that failed, if any.
        stage: The stage of that task, if any.
        error_class: The Flight error class (e.g. FlightUnauthorizedError for a refused identity).
    """
    name = type(exc).__name__
    kind = name if _REMOTE_ERRORS.get(name) is type(exc) else "TaskFailedError"
    peer, reason = "", ""
    if isinstance(exc, PeerUnreachableError | TaskFailedError):
        peer = exc.peer
    if isinstance(exc, TaskFailedError):
        stage = exc.stage if exc.stage >= 0 else stage
        query = exc.query_id or query
        reason = exc.reason
    record = ErrorRecord(kind, first_line(exc), peer=peer, stage=stage, query=query, reason=reason)
    return error_class(f"{kind}: {record.message}", extra_info=record.to_bytes())


def translate(exc: BaseException, address: str, what: str, *, answered: bool = False) -> FlowError:
    """A one-line FlowError for a Flight failure talking to ``address`` while doing ``what``.

    ``answered``: the peer completed calls before (a failed TLS handshake then means it died).
    """
    record = _record(exc)
    if record is not None:
        return _rebuild(record, address, what)
    return _transport_error(exc, address, what, answered)


def _record(exc: BaseException) -> ErrorRecord | None:
    """The record a worker attached to ``exc``; None for gRPC's own failures and foreign servers."""
    extra = exc.extra_info if isinstance(exc, flight.FlightError) else None
    if not extra:
        return None
    try:
        return ErrorRecord.from_bytes(bytes(extra))
    except ProtocolError:  # another server's extra_info
        return None


def _rebuild(record: ErrorRecord, address: str, what: str) -> FlowError:
    """The FlowError of a worker's record, naming the peer that reported it."""
    cls = _REMOTE_ERRORS.get(record.kind, TaskFailedError)
    msg = record.message
    if cls is TaskFailedError:
        return TaskFailedError(
            f"{what} failed on peer {address}: {msg}",
            peer=address,
            stage=record.stage,
            query_id=record.query,
            reason=record.reason,
        )
    if cls is PeerUnreachableError:  # the peer we called could not reach another one: that one is down
        return PeerUnreachableError(f"{what} on peer {address}: {msg}", peer=record.peer)
    if cls is AccessDeniedError:
        return AccessDeniedError(f"peer {address} refused {what}: {msg}")
    if cls is StorageError:
        return StorageError(f"peer {address}: {msg}")
    return cls(msg)


def _transport_error(exc: BaseException, address: str, what: str, answered: bool) -> FlowError:
    """Classify a failure without a record: gRPC's own (connect, TLS, deadline) or a foreign server's."""
    first = first_line(exc)
    if _tls_handshake_failed(exc):
        if answered and isinstance(exc, flight.FlightUnavailableError):
            # It completed calls over TLS before, so its material is right: it died mid-handshake,
            # or another process took its port. Unreachable (retried elsewhere), not misconfigured.
            return PeerUnreachableError(
                f"peer {address} is unreachable while {what} ({first[:120]}): it answered before, "
                "so it has stopped or restarted",
                peer=address,
            )
        return TLSError(
            f"TLS handshake with peer {address} failed ({first[:120]}): both sides need certificates "
            "from the same CA (flow certs init/issue), or --insecure on both"
        )
    if isinstance(exc, flight.FlightUnavailableError | flight.FlightTimedOutError | ConnectionError):
        return PeerUnreachableError(
            f"peer {address} is unreachable while {what} ({first[:120]}): is flow-worker running there "
            "and is the address in --peers right?",
            peer=address,
        )
    if isinstance(exc, flight.FlightUnauthenticatedError | flight.FlightUnauthorizedError):
        return TLSError(f"peer {address} refused us while {what}: {first[:160]}")
    return TaskFailedError(f"{what} failed on peer {address}: {first[:200]}", peer=address)


def _tls_handshake_failed(exc: BaseException) -> bool:
    """Whether gRPC failed the call in the TLS handshake (a wrong CA or host name, or not TLS there).

    The one text check left: gRPC reports a failed handshake with the same status (UNAVAILABLE, so
    FlightUnavailableError) and no detail bytes as a refused connection; only its message says
    which. Never used for errors that carry our record.
    """
    low = str(exc).lower()
    return any(k in low for k in ("ssl", "handshake", "certificate", "tls"))


class ClientPool:
    """One Flight client per peer address, shared by all threads of a process."""

    def __init__(self, tls: TLSConfig | None) -> None:
        self._tls = tls
        self._clients: dict[str, flight.FlightClient] = {}
        self._lock = threading.Lock()
        self._answered: set[str] = set()  # peers that completed a call: their TLS material is right

    def get(self, address: str) -> flight.FlightClient:
        """The client for ``address`` (created on first use)."""
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                kwargs = flight_client_kwargs(self._tls) if self._tls else {}
                client = flight.FlightClient(location(address, self._tls), **kwargs)
                self._clients[address] = client
            return client

    def drop(self, address: str) -> None:
        """Forget (and close) the client of a peer that failed."""
        with self._lock:
            client = self._clients.pop(address, None)
        if client is not None:
            client.close()

    def action(self, address: str, name: str, body: bytes, timeout: float | None) -> bytes:
        """Run action ``name`` on ``address`` and return its single result body."""
        options = flight.FlightCallOptions(timeout=timeout)
        try:
            results = list(self.get(address).do_action(flight.Action(name, body), options))
        except (flight.FlightError, OSError, pa.ArrowException) as exc:
            raise self._failed(exc, address, name) from exc
        self._answered.add(address)
        if not results:
            return b""
        return bytes(results[0].body.to_pybytes())

    def stream(self, address: str, ticket: bytes, timeout: float | None) -> Iterator[pa.RecordBatch]:
        """Fetch the batches behind ``ticket`` from ``address``."""
        options = flight.FlightCallOptions(timeout=timeout)
        try:
            reader = self.get(address).do_get(flight.Ticket(ticket), options)
            for chunk in reader:
                yield chunk.data
        except (flight.FlightError, OSError, pa.ArrowException) as exc:
            raise self._failed(exc, address, "fetching shuffle data") from exc
        self._answered.add(address)

    def _failed(self, exc: BaseException, address: str, what: str) -> FlowError:
        """``translate``, knowing whether ``address`` completed calls before."""
        return translate(exc, address, what, answered=address in self._answered)

    def close(self) -> None:
        """Close every client."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
