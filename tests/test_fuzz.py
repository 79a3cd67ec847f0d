"""Hostile input: thousands of malformed requests to a live worker, which answers each with a clear
Flight error and then still runs a normal query.

Every request must come back within its timeout either answered or refused with one of our own
error kinds (``ProtocolError: ...``, ``PlanningError: ...``): never a dropped connection, a hang, an
unclassified error or a traceback in the worker's log.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import TASK_TIMEOUT

from ematix_flow import Mesh, TLSConfig
from ematix_flow.coordinator_lib.local import LocalWorker, spawn_worker
from ematix_flow.flightsql.protocol import SPEC_COMMANDS, pack
from ematix_flow.transport.messages import OutputRef, TaskSpec
from ematix_flow.transport.tls import flight_client_kwargs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CALL = flight.FlightCallOptions(timeout=20)
#: How every refusal starts: the worker classified the problem (see transport/flight.remote_error).
KINDS = ("ProtocolError: ", "PlanningError: ", "TaskFailedError: ", "QueryError: ", "AccessDeniedError: ")
#: Per fuzz test below (six of them): about 6,000 requests in all. The inputs are the same on every run
#: (a red CI means a regression, not a new random draw); FLOW_FUZZ_RANDOM=1 FLOW_FUZZ_EXAMPLES=20000
#: explores further.
EXAMPLES = int(os.environ.get("FLOW_FUZZ_EXAMPLES", "1000"))
QUERY = "SELECT k, count(*) AS n, sum(v) AS s FROM t WHERE v % 3 = 0 GROUP BY k"
QUERY_ID = "f" * 16

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not os.environ.get("FLOW_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzzdata") / "t.parquet"
    pq.write_table(pa.table({"k": [i % 5 for i in range(3000)], "v": list(range(3000))}), path)
    return path


@pytest.fixture(scope="module")
def worker(certs_dir: Path, table: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorker]:
    w = spawn_worker(certs_dir, tmp_path_factory.mktemp("fuzzwork"), extra=["--data-root", str(table.parent)])
    yield w
    w.stop()


@pytest.fixture(scope="module")
def client(worker: LocalWorker, certs_dir: Path) -> Iterator[flight.FlightClient]:
    c = flight.FlightClient(
        f"grpc+tls://{worker.address}", **flight_client_kwargs(TLSConfig.from_dir(certs_dir))
    )
    yield c
    c.close()


@pytest.fixture(scope="module")
def valid_spec(table: Path) -> dict[str, Any]:
    """A real task (scan + partial aggregate of ``t``) as a msgpack map, the base of mutations."""
    ctx = SessionContext()
    ctx.register_parquet("t", str(table))
    plan = ctx.sql(QUERY).execution_plan().to_bytes()
    return msgpack.unpackb(TaskSpec(QUERY_ID, 0, 0, plan).to_bytes())  # type: ignore[no-any-return]


SENT = [0]  # requests sent by the fuzz tests of this module


def _assert_answered_or_refused(call: Any) -> None:
    """The call succeeds or fails with a classified one-line Flight error (the worker is alive)."""
    SENT[0] += 1
    try:
        call()
    except (flight.FlightUnavailableError, flight.FlightTimedOutError) as exc:
        pytest.fail(f"the worker stopped answering: {str(exc)[:300]}")
    except flight.FlightError as exc:
        text = str(exc)
        assert any(k in text for k in KINDS), f"unclassified error: {text[:300]}"
        assert "Traceback" not in text


def _action(client: flight.FlightClient, kind: str, body: bytes) -> None:
    _assert_answered_or_refused(lambda: list(client.do_action(flight.Action(kind, body), CALL)))


def _get(client: flight.FlightClient, ticket: bytes) -> None:
    _assert_answered_or_refused(lambda: client.do_get(flight.Ticket(ticket), CALL).read_all())


ACTIONS = st.sampled_from(["hello", "run_task", "release", "cancel", "status"]) | st.text(
    string.printable, max_size=40
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.sampled_from(["../../etc/passwd", "/etc/passwd", "ff" * 8, "", "\x00"])
)
VALUES = st.recursive(
    SCALARS,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(kind=ACTIONS, body=st.binary(max_size=4096))
def test_random_bytes_to_any_action(client: flight.FlightClient, kind: str, body: bytes) -> None:
    _action(client, kind, body)


@FUZZ
@given(kind=st.sampled_from(["run_task", "release", "cancel", "hello"]), value=VALUES)
def test_garbage_msgpack_to_every_action(client: flight.FlightClient, kind: str, value: Any) -> None:
    _action(client, kind, msgpack.packb(value, use_bin_type=True))


@FUZZ
@given(data=st.data())
def test_task_spec_with_a_field_replaced_or_dropped(
    client: flight.FlightClient, valid_spec: dict[str, Any], data: st.DataObject
) -> None:
    spec = dict(valid_spec)
    key = data.draw(st.sampled_from(sorted(spec)))
    if data.draw(st.booleans()):
        del spec[key]
    else:
        spec[key] = data.draw(VALUES)
    _action(client, "run_task", msgpack.packb(spec, use_bin_type=True))


@FUZZ
@given(data=st.data())
def test_truncated_or_corrupted_plan_bytes(
    client: flight.FlightClient, valid_spec: dict[str, Any], data: st.DataObject
) -> None:
    plan = bytearray(valid_spec["plan"])
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "splice"]))
    if how == "truncate":
        plan = plan[: data.draw(st.integers(0, len(plan) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            plan[data.draw(st.integers(0, len(plan) - 1))] = data.draw(st.integers(0, 255))
    elif how == "insert":
        at = data.draw(st.integers(0, len(plan)))
        plan[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:  # a slice of the plan repeated: deep or long nesting
        start = data.draw(st.integers(0, len(plan) - 1))
        plan = plan[:start] + plan[start:] * data.draw(st.integers(2, 50))
    spec = {**valid_spec, "plan": bytes(plan)}
    _action(client, "run_task", msgpack.packb(spec, use_bin_type=True))


@FUZZ
@given(
    ticket=st.binary(max_size=2048)
    | VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True))
    | st.builds(
        lambda q, s, t, p: OutputRef(q, s, t, p).to_bytes(),
        st.sampled_from(["../../etc", "ff" * 8, "a" * 64, "A" * 16]) | st.text(max_size=70),
        st.integers(-(2**31), 2**31),
        st.integers(-(2**31), 2**31),
        st.integers(-(2**31), 2**31),
    )
)
def test_malformed_and_unknown_tickets(client: flight.FlightClient, ticket: bytes) -> None:
    _get(client, ticket)


SQL_NAMES = st.sampled_from(sorted(SPEC_COMMANDS)) | st.text(string.ascii_letters, min_size=1, max_size=24)


@FUZZ
@given(
    name=SQL_NAMES,
    payload=st.binary(max_size=512),
    wrap=st.booleans(),
    rpc=st.sampled_from(["GetFlightInfo", "GetSchema", "DoGet", "CreatePreparedStatement"]),
)
def test_flight_sql_messages_with_random_payloads(
    client: flight.FlightClient, name: str, payload: bytes, wrap: bool, rpc: str
) -> None:
    """Flight SQL commands, tickets and actions of every kind, with random (or no) Any wrapping."""
    data = pack(name, payload) if wrap else payload
    descriptor = flight.FlightDescriptor.for_command(data)
    calls = {
        "GetFlightInfo": lambda: client.get_flight_info(descriptor, CALL),
        "GetSchema": lambda: client.get_schema(descriptor, CALL),
        "DoGet": lambda: client.do_get(flight.Ticket(data), CALL).read_all(),
        "CreatePreparedStatement": lambda: list(client.do_action(flight.Action(rpc, data), CALL)),
    }
    try:
        _assert_answered_or_refused(calls[rpc])
    except pa.ArrowNotImplementedError as exc:  # gRPC UNIMPLEMENTED: a command or option not served, named
        assert str(exc).startswith("Flight SQL "), str(exc)[:300]
    except pa.ArrowException as exc:  # pyarrow's get_schema passes Flight errors on as unknown errors
        text = str(exc)
        assert rpc == "GetSchema" and any(text.startswith(f"Unknown error: {k}") for k in KINDS), text[:300]


def test_oversized_messages_are_refused(client: flight.FlightClient, valid_spec: dict[str, Any]) -> None:
    big = {**valid_spec, "plan": b"\x00" * (65 * 1024 * 1024)}
    with pytest.raises(
        flight.FlightError, match=r"ProtocolError: run_task body of .* over the .*-byte limit"
    ):
        list(client.do_action(flight.Action("run_task", msgpack.packb(big)), CALL))
    with pytest.raises(flight.FlightError, match=r"ProtocolError: bad ticket: .* the limit is 1024"):
        client.do_get(flight.Ticket(b"x" * 5000), CALL).read_all()
    with pytest.raises(flight.FlightError, match="ProtocolError: cancel body"):
        list(client.do_action(flight.Action("cancel", b"f" * 1000), CALL))


def test_worker_still_serves_after_the_fuzzing(
    worker: LocalWorker, client: flight.FlightClient, valid_spec: dict[str, Any], certs_dir: Path, table: Path
) -> None:
    """Runs last in this module: the same worker answers a real task and a real distributed query."""
    assert worker.process.poll() is None, "the worker exited"
    assert SENT[0] >= 4 * EXAMPLES or SENT[0] == 0, SENT  # 0: this test was run on its own
    (result,) = list(client.do_action(flight.Action("run_task", msgpack.packb(valid_spec)), CALL))
    assert msgpack.unpackb(result.body.to_pybytes())["rows"] == 5
    with Mesh([worker.address], TLSConfig.from_dir(certs_dir), task_timeout=TASK_TIMEOUT) as mesh:
        mesh.register_parquet("t", table)
        got = mesh.sql(QUERY + " ORDER BY k")
    ctx = SessionContext()
    ctx.register_parquet("t", str(table))
    assert got.equals(ctx.sql(QUERY + " ORDER BY k").to_arrow_table())
    log = list(worker.log)
    tracebacks = [log[max(0, i - 1) : i + 12] for i, line in enumerate(log) if "Traceback" in line]
    assert not tracebacks, f"the worker logged unexpected errors: {tracebacks[:3]}"
