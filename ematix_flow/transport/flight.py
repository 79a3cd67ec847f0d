"""Flight plumbing shared by workers and submitters: a client pool, actions, error translation."""

from __future__ import annotations

import re
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
    TaskFailedError,
    TLSError,
)
from ematix_flow.transport.tls import TLSConfig, flight_client_kwargs, location

#: Error classes a worker reports by name, so the submitter can raise the same class.
_REMOTE_ERRORS: dict[str, type[FlowError]] = {
    "QueryError": QueryError,
    "PlanningError": PlanningError,
    "ProtocolError": ProtocolError,
    "TaskFailedError": TaskFailedError,
    "PeerUnreachableError": PeerUnreachableError,
    "AccessDeniedError": AccessDeniedError,
    "ConfigError": ConfigError,  # e.g. a Flight SQL gateway whose catalog or peers are wrong
    "FlowError": FlowError,
}
_UNREACHABLE = re.compile(r"peer (\S+) is unreachable")


def remote_error(exc: BaseException) -> flight.FlightServerError:
    """The Flight error a worker raises for ``exc``: ``<ErrorClass>: <one line>``."""
    kind = type(exc).__name__ if type(exc).__name__ in _REMOTE_ERRORS else "TaskFailedError"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return flight.FlightServerError(f"{kind}: {first}")


def translate(exc: BaseException, address: str, what: str) -> FlowError:
    """A one-line FlowError for a Flight failure talking to ``address`` while doing ``what``."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    for line in text.splitlines():  # our own "<Kind>: message" survives inside Flight's detail text
        for name, cls in _REMOTE_ERRORS.items():
            marker = f"{name}: "
            if marker in line:
                msg = line.split(marker, 1)[1].split(". Detail:")[0].strip()
                if cls is TaskFailedError:
                    return TaskFailedError(f"{what} failed on peer {address}: {msg}", peer=address)
                if cls is PeerUnreachableError:  # the peer we called could not reach another one
                    m = _UNREACHABLE.search(msg)
                    other = m.group(1) if m else ""
                    return PeerUnreachableError(f"{what} on peer {address}: {msg}", peer=other)
                if cls is AccessDeniedError:
                    return AccessDeniedError(f"peer {address} refused {what}: {msg}")
                return cls(msg)
    low = text.lower()
    if any(k in low for k in ("ssl", "handshake", "certificate", "tls")):
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
        """``translate``, knowing which peers answered before.

        A peer that completed calls over TLS and now cannot even connect died mid-handshake (gRPC
        then names the handshake): it is unreachable, not misconfigured.
        """
        error = translate(exc, address, what)
        died = isinstance(exc, flight.FlightUnavailableError) and address in self._answered
        if isinstance(error, TLSError) and died:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return PeerUnreachableError(
                f"peer {address} is unreachable while {what} ({first[:120]}): it answered before, "
                "so it has stopped or restarted",
                peer=address,
            )
        return error

    def close(self) -> None:
        """Close every client."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
