"""Errors across the wire: a worker's typed record in Flight's ``extra_info``, rebuilt by the client.

No processes: the record is made and read directly, and once through a small in-process Flight
server (gRPC carries ``extra_info`` in the call's trailers).
"""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pyarrow.flight as flight
import pytest
from datafusion import SessionContext

from ematix_flow.engine.run import _execution_error, decode
from ematix_flow.errors import (
    AccessDeniedError,
    ConfigError,
    FlowError,
    PeerUnreachableError,
    PlanningError,
    ProtocolError,
    QueryCancelledError,
    QueryError,
    QueryTimeoutError,
    TaskFailedError,
    TLSError,
    UnsplittableError,
    first_line,
)
from ematix_flow.transport.flight import ClientPool, remote_error, translate
from ematix_flow.transport.messages import ErrorRecord

PEER = "10.0.0.1:7000"  # the peer we called
OTHER = "10.0.0.2:7000"  # a peer it could not reach
WHAT = "run_task"
MESSAGE = "something went wrong (fix it)"


def _unreachable(message: str) -> PeerUnreachableError:
    return PeerUnreachableError(message, peer=OTHER)


#: Every kind that travels: what the worker raised -> the class and message the client raises.
ROUND_TRIPS: dict[str, tuple[FlowError, type[FlowError], str]] = {
    "QueryError": (QueryError(MESSAGE), QueryError, MESSAGE),
    "PlanningError": (PlanningError(MESSAGE), PlanningError, MESSAGE),
    "ProtocolError": (ProtocolError(MESSAGE), ProtocolError, MESSAGE),
    "ConfigError": (ConfigError(MESSAGE), ConfigError, MESSAGE),
    "FlowError": (FlowError(MESSAGE), FlowError, MESSAGE),
    "TaskFailedError": (
        TaskFailedError(MESSAGE),
        TaskFailedError,
        f"{WHAT} failed on peer {PEER}: {MESSAGE}",
    ),
    "AccessDeniedError": (
        AccessDeniedError(MESSAGE),
        AccessDeniedError,
        f"peer {PEER} refused {WHAT}: {MESSAGE}",
    ),
    "PeerUnreachableError": (
        _unreachable(f"peer {OTHER} is unreachable while fetching shuffle data"),
        PeerUnreachableError,
        f"{WHAT} on peer {PEER}: peer {OTHER} is unreachable while fetching shuffle data",
    ),
}


@pytest.mark.parametrize("kind", sorted(ROUND_TRIPS))
def test_each_kind_is_rebuilt_with_its_class_and_message(kind: str) -> None:
    exc, cls, message = ROUND_TRIPS[kind]
    error = remote_error(exc)
    assert isinstance(error, flight.FlightServerError)
    assert str(error) == f"{kind}: {exc}"  # what people and other Flight clients read
    assert ErrorRecord.from_bytes(error.extra_info).kind == kind
    rebuilt = translate(error, PEER, WHAT)
    assert type(rebuilt) is cls
    assert str(rebuilt) == message


def test_a_peer_that_could_not_reach_another_reports_that_peer() -> None:
    exc, _, _ = ROUND_TRIPS["PeerUnreachableError"]
    rebuilt = translate(remote_error(exc), PEER, WHAT)
    assert isinstance(rebuilt, PeerUnreachableError) and rebuilt.peer == OTHER


def test_a_task_failure_keeps_its_peer_stage_query_and_reason() -> None:
    exc = TaskFailedError("execution failed: Internal error: boom", reason=TaskFailedError.CUT)
    record = ErrorRecord.from_bytes(remote_error(exc, query="ab" * 8, stage=3).extra_info)
    assert record == ErrorRecord(
        "TaskFailedError", "execution failed: Internal error: boom", stage=3, query="ab" * 8, reason="cut"
    )
    rebuilt = translate(remote_error(exc, query="ab" * 8, stage=3), PEER, WHAT)
    assert isinstance(rebuilt, TaskFailedError)
    assert (rebuilt.peer, rebuilt.stage, rebuilt.query_id, rebuilt.reason) == (PEER, 3, "ab" * 8, "cut")
    own = TaskFailedError("x", stage=5)  # a stage the exception knows wins over the caller's
    assert ErrorRecord.from_bytes(remote_error(own, stage=3).extra_info).stage == 5


@pytest.mark.parametrize(
    "exc",
    [
        TLSError("TLS handshake with peer x failed"),
        QueryTimeoutError("timed out"),
        QueryCancelledError("stopped"),
        UnsplittableError("no lineage"),  # a subclass is not its base's kind
        ValueError("a plain exception"),
        KeyError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_failures_travel_as_task_failures(exc: BaseException) -> None:
    error = remote_error(exc)
    assert str(error) == f"TaskFailedError: {first_line(exc)}"
    rebuilt = translate(error, PEER, WHAT)
    assert type(rebuilt) is TaskFailedError
    assert str(rebuilt) == f"{WHAT} failed on peer {PEER}: {first_line(exc)}"


def test_only_the_first_line_travels() -> None:
    error = remote_error(QueryError("invalid query: no such column x\n\nTraceback (most recent call last)"))
    assert str(error) == "QueryError: invalid query: no such column x"
    assert str(translate(error, PEER, WHAT)) == "invalid query: no such column x"


def test_a_refused_identity_is_an_unauthorized_error_with_its_record() -> None:
    exc = AccessDeniedError("identity 'intruder' is not in this worker's --allow-peer list")
    error = remote_error(exc, error_class=flight.FlightUnauthorizedError)
    assert isinstance(error, flight.FlightUnauthorizedError)
    rebuilt = translate(error, PEER, "hello")
    assert type(rebuilt) is AccessDeniedError
    assert str(rebuilt) == f"peer {PEER} refused hello: {exc}"


def test_text_that_looks_like_a_kind_is_never_parsed() -> None:
    # no record: the text "QueryError: ..." of a server error is not trusted to name a class
    rebuilt = translate(flight.FlightServerError("QueryError: nope"), PEER, WHAT)
    assert type(rebuilt) is TaskFailedError
    # a foreign server's extra_info is not a record either
    foreign = flight.FlightServerError(
        "PeerUnreachableError: peer 1.2.3.4:5 is unreachable", extra_info=b"\x01"
    )
    assert type(translate(foreign, PEER, WHAT)) is TaskFailedError


def test_a_malformed_record_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed ErrorRecord"):
        ErrorRecord.from_bytes(b"\xc1garbage")
    with pytest.raises(ProtocolError, match="field 'stage' is str, not int"):
        ErrorRecord.from_bytes(msgpack.packb({"kind": "QueryError", "message": "x", "stage": "2"}))


# ------------------------------------------------------------------------------- gRPC's own failures
REFUSED = (
    "Flight returned unavailable error, with message: failed to connect to all addresses; last error: "
    "UNKNOWN: ipv4:10.0.0.1:7000: Failed to connect to remote host: Connection refused"
)
HANDSHAKE = (
    "Flight returned unavailable error, with message: failed to connect to all addresses; last error: "
    "UNKNOWN: ipv4:10.0.0.1:7000: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
    "certificate verify failed"
)


def test_a_refused_connection_is_an_unreachable_peer() -> None:
    rebuilt = translate(flight.FlightUnavailableError(REFUSED), PEER, "hello")
    assert type(rebuilt) is PeerUnreachableError and rebuilt.peer == PEER
    assert str(rebuilt).startswith(f"peer {PEER} is unreachable while hello (")
    timed_out = translate(flight.FlightTimedOutError("Deadline Exceeded"), PEER, "hello")
    assert type(timed_out) is PeerUnreachableError and timed_out.peer == PEER


def test_a_failed_handshake_is_a_tls_error_unless_the_peer_answered_before() -> None:
    rebuilt = translate(flight.FlightUnavailableError(HANDSHAKE), PEER, "hello")
    assert type(rebuilt) is TLSError
    assert str(rebuilt).startswith(f"TLS handshake with peer {PEER} failed (")
    assert "from the same CA" in str(rebuilt)
    died = translate(flight.FlightUnavailableError(HANDSHAKE), PEER, "hello", answered=True)
    assert type(died) is PeerUnreachableError and died.peer == PEER
    assert "it answered before" in str(died)


def test_an_unauthorized_call_without_a_record_is_a_tls_refusal() -> None:
    rebuilt = translate(flight.FlightUnauthorizedError("Unauthorized"), PEER, "hello")
    assert type(rebuilt) is TLSError
    assert str(rebuilt) == f"peer {PEER} refused us while hello: Unauthorized"


# ------------------------------------------------------------------------------- through gRPC
class _Failing(flight.FlightServerBase):  # type: ignore[misc]
    """Fails every action (body: a kind) with the Flight error a worker raises for that kind."""

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> None:
        exc, _, _ = ROUND_TRIPS[action.body.to_pybytes().decode()]
        raise remote_error(exc, query="cd" * 8, stage=2)


@pytest.fixture(scope="module")
def failing() -> Iterator[str]:
    with _Failing("grpc://127.0.0.1:0") as server:
        yield f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("kind", sorted(ROUND_TRIPS))
def test_the_record_survives_grpc(failing: str, kind: str) -> None:
    _, cls, message = ROUND_TRIPS[kind]
    pool = ClientPool(None)
    try:
        with pytest.raises(cls) as info:
            pool.action(failing, WHAT, kind.encode(), 10)
    finally:
        pool.close()
    assert type(info.value) is cls
    assert str(info.value) == message.replace(PEER, failing)
    if isinstance(info.value, TaskFailedError):
        assert (info.value.stage, info.value.query_id) == (2, "cd" * 8)


# ------------------------------------------------------------------------------- the engine boundary
def test_the_engine_boundary_classifies_failures_at_a_cut() -> None:
    cut = _execution_error(Exception("Internal error: Assertion failed: ordering.\nThis is a bug"))
    assert cut.reason == TaskFailedError.CUT
    assert str(cut) == "execution failed: Internal error: Assertion failed: ordering."
    types = _execution_error(Exception("Invalid argument error: column types must match schema types"))
    assert types.reason == TaskFailedError.CUT
    data = _execution_error(Exception("Arrow error: Divide by zero error"))
    assert data.reason == "" and str(data) == "execution failed: Arrow error: Divide by zero error"
    memory = _execution_error(Exception("Resources exhausted: Failed to allocate 10 bytes"))
    assert memory.reason == "" and "--memory-limit (Failed to allocate 10 bytes)" in str(memory)
    with pytest.raises(TaskFailedError, match="could not decode the task plan") as info:
        decode(SessionContext(), b"\xff\xff not a plan")
    assert info.value.reason == TaskFailedError.CUT


# ------------------------------------------------------------------------------- first_line
@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        (ValueError("one\ntwo"), None, "one"),
        (ValueError("\n\n  first  \nsecond"), None, "first"),
        (ValueError(""), None, "ValueError"),
        (KeyError(), None, "KeyError"),
        (ValueError("abcdef"), 3, "abc"),
        ("  text\nmore", None, "text"),
        ("", None, ""),
    ],
)
def test_first_line(value: BaseException | str, limit: int | None, expected: str) -> None:
    assert first_line(value, limit) == expected
