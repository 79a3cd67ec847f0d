"""The ``flow-worker`` process: start-up, flags, shutdown, mutual TLS and malformed requests."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from support import TASK_TIMEOUT, clean_env, close_pipes, executable, flow_worker, poll, spawned_workers

from ematix_flow import FlowError, Mesh, PeerUnreachableError, TLSConfig, TLSError
from ematix_flow.coordinator_lib.local import LocalWorker, spawn_worker
from ematix_flow.engine.digest import hash_digest
from ematix_flow.errors import first_line
from ematix_flow.transport.messages import OutputRef, PeerInfo, TaskSpec
from ematix_flow.transport.tls import flight_client_kwargs
from ematix_flow.workloads.compare import compare_tables

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CALL = flight.FlightCallOptions(timeout=5)
QUERY = "SELECT n_regionkey, count(*) AS n FROM nation GROUP BY n_regionkey ORDER BY n_regionkey"


def _run_worker(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("flow-worker"), *args], capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "ready" not in result.stdout
    return lines[0]


def _hello(client: flight.FlightClient) -> PeerInfo:
    (result,) = list(client.do_action(flight.Action("hello", b""), CALL))
    return PeerInfo.from_bytes(result.body.to_pybytes())


def _client(address: str, tls: TLSConfig) -> flight.FlightClient:
    return flight.FlightClient(f"grpc+tls://{address}", **flight_client_kwargs(tls))


# ----------------------------------------------------------------------------------- start-up and flags
def test_ready_line_names_the_address(certs_dir: Path, tmp_path: Path) -> None:
    args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-dir",
        str(certs_dir),
        "--work-dir",
        str(tmp_path),
        "--log-level",
        "warning",
    ]
    with flow_worker(args) as w:
        assert w.scheme == "grpc+tls"
        assert int(w.address.rsplit(":", 1)[1]) > 0
        assert w.work_dir.is_dir() and w.work_dir.parent == tmp_path
        client = _client(w.address, TLSConfig.from_dir(certs_dir))
        try:
            info = _hello(client)
        finally:
            client.close()
        assert info.address == w.address
        assert info.name == "peer"
        assert info.hash_digest == hash_digest()


def test_insecure_worker_serves_plaintext(tmp_path: Path) -> None:
    with flow_worker(["--listen", "127.0.0.1:0", "--insecure", "--work-dir", str(tmp_path)]) as w:
        assert w.scheme == "grpc"
        client = flight.FlightClient(f"grpc://{w.address}")
        try:
            assert _hello(client).address == w.address
        finally:
            client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_worker_and_removes_its_work_dir(
    certs_dir: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    with flow_worker(
        ["--listen", "127.0.0.1:0", "--tls-dir", str(certs_dir), "--work-dir", str(tmp_path)]
    ) as w:
        assert w.work_dir.is_dir()
        started = time.monotonic()
        w.process.send_signal(signum)
        assert w.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert not w.work_dir.exists()
        assert list(tmp_path.iterdir()) == []
        with socket.socket() as s:  # the port is free again
            s.bind(("127.0.0.1", int(w.address.rsplit(":", 1)[1])))


def test_without_tls_material_it_refuses_to_start() -> None:
    line = _one_error_line(_run_worker(["--listen", "127.0.0.1:0"]))
    assert "--insecure" in line and "--tls-dir" in line


@pytest.mark.parametrize("missing", ["ca.pem", "peer.pem", "peer-key.pem"])
def test_tls_dir_lacking_a_file_names_it(certs_dir: Path, tmp_path: Path, missing: str) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(certs_dir, partial)
    (partial / missing).unlink()
    work = tmp_path / "work"
    line = _one_error_line(
        _run_worker(["--listen", "127.0.0.1:0", "--tls-dir", str(partial), "--work-dir", str(work)])
    )
    assert missing in line
    assert not work.exists() or list(work.iterdir()) == []


def test_tls_dir_that_does_not_exist(tmp_path: Path) -> None:
    line = _one_error_line(_run_worker(["--listen", "127.0.0.1:0", "--tls-dir", str(tmp_path / "nope")]))
    assert "ca.pem" in line


def test_insecure_and_tls_dir_are_exclusive(certs_dir: Path) -> None:
    line = _one_error_line(
        _run_worker(["--listen", "127.0.0.1:0", "--insecure", "--tls-dir", str(certs_dir)])
    )
    assert "--insecure" in line


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:notaport", "127.0.0.1:99999"])
def test_bad_listen_address_exits_2_and_leaves_nothing(tmp_path: Path, listen: str) -> None:
    line = _one_error_line(_run_worker(["--listen", listen, "--insecure", "--work-dir", str(tmp_path)]))
    assert listen in line
    assert list(tmp_path.iterdir()) == [], "a worker that never started left its work dir behind"


def test_port_in_use_exits_2_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_worker(["--listen", f"127.0.0.1:{port}", "--insecure", "--work-dir", str(tmp_path)])
    line = _one_error_line(result)
    assert str(port) in line
    assert list(tmp_path.iterdir()) == [], "a worker that never started left its work dir behind"


def test_stopped_local_worker_closes_its_pipes(tmp_path: Path) -> None:
    """``LocalWorker.stop`` must not leave the child's pipes open (a ResourceWarning when collected)."""
    worker = spawn_worker(None, tmp_path)
    out, err = worker.process.stdout, worker.process.stderr
    assert out is not None and err is not None
    try:
        worker.stop()
        assert worker.process.returncode == 0
        assert poll(lambda: out.closed and err.closed, 2), "LocalWorker.stop() left the worker's pipes open"
    finally:
        close_pipes(worker.process)


# ----------------------------------------------------------------------------------- mutual TLS
@pytest.fixture(scope="module")
def tls_worker(certs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorker]:
    work = tmp_path_factory.mktemp("tls-worker")
    with spawned_workers(1, certs_dir, work) as (worker,):
        yield worker
    shutil.rmtree(work, ignore_errors=True)


#: How gRPC's client sees a worker that refused it during the handshake: the worker hung up.
HUNG_UP = r"Socket closed|Connection reset by peer"


def _refused(client: flight.FlightClient, cause: str = HUNG_UP) -> None:
    """The handshake fails fast, with gRPC naming ``cause`` (a regex)."""
    started = time.monotonic()
    try:
        with pytest.raises(flight.FlightUnavailableError, match=cause):
            _hello(client)
    finally:
        client.close()
    assert time.monotonic() - started < 10


def test_correct_client_is_accepted(tls_worker: LocalWorker, certs_dir: Path) -> None:
    client = _client(tls_worker.address, TLSConfig.from_dir(certs_dir))
    try:
        assert _hello(client).address == tls_worker.address
    finally:
        client.close()


def test_client_without_certificate_is_refused(tls_worker: LocalWorker, certs_dir: Path) -> None:
    ca = TLSConfig.from_dir(certs_dir).ca_pem
    _refused(flight.FlightClient(f"grpc+tls://{tls_worker.address}", tls_root_certs=ca))


def test_client_of_a_foreign_ca_is_refused(tls_worker: LocalWorker, foreign_certs_dir: Path) -> None:
    # it does not trust the worker's certificate, so it hangs up first
    _refused(_client(tls_worker.address, TLSConfig.from_dir(foreign_certs_dir)), "certificate verify failed")


def test_foreign_client_certificate_is_refused_even_trusting_our_ca(
    tls_worker: LocalWorker, certs_dir: Path, foreign_certs_dir: Path
) -> None:
    ours, theirs = TLSConfig.from_dir(certs_dir), TLSConfig.from_dir(foreign_certs_dir)
    _refused(
        flight.FlightClient(
            f"grpc+tls://{tls_worker.address}",
            tls_root_certs=ours.ca_pem,
            cert_chain=theirs.cert_pem,
            private_key=theirs.key_pem,
        )
    )


def test_plaintext_client_is_refused(tls_worker: LocalWorker) -> None:
    _refused(flight.FlightClient(f"grpc://{tls_worker.address}"))


@pytest.mark.parametrize(
    ("kind", "expected", "message"),
    [
        # our client does not trust the worker's certificate: gRPC names the failed handshake
        ("foreign_ca", TLSError, "^TLS handshake with peer {address} failed .*from the same CA"),
        # the worker hangs up on a plaintext client: to gRPC's client that looks like a dead peer
        ("plaintext", PeerUnreachableError, "^peer {address} is unreachable while hello "),
    ],
)
def test_mesh_that_cannot_authenticate_fails_fast(
    tls_worker: LocalWorker, foreign_certs_dir: Path, kind: str, expected: type[FlowError], message: str
) -> None:
    started = time.monotonic()
    with pytest.raises(expected, match=message.format(address=re.escape(tls_worker.address))) as info:
        if kind == "foreign_ca":
            Mesh([tls_worker.address], TLSConfig.from_dir(foreign_certs_dir), connect_timeout=5)
        else:
            Mesh([tls_worker.address], insecure=True, connect_timeout=5)
    assert type(info.value) is expected, repr(info.value)
    assert time.monotonic() - started < 10


# ----------------------------------------------------------------------------------- malformed requests
@pytest.fixture
def client(tls_worker: LocalWorker, certs_dir: Path) -> Iterator[flight.FlightClient]:
    c = _client(tls_worker.address, TLSConfig.from_dir(certs_dir))
    yield c
    c.close()


def _flight_error(info: pytest.ExceptionInfo[BaseException]) -> str:
    """The message of a Flight error; any other exception is a failure, shown in one line."""
    exc = info.value
    first = first_line(exc, 300)
    assert isinstance(exc, flight.FlightError), f"not a Flight error but {type(exc).__name__}: {first}"
    return str(exc)


def _action_error(client: flight.FlightClient, name: str, body: bytes) -> str:
    with pytest.raises((flight.FlightError, pa.ArrowException)) as info:
        list(client.do_action(flight.Action(name, body), CALL))
    return _flight_error(info)


def _get_error(client: flight.FlightClient, ticket: bytes) -> str:
    with pytest.raises((flight.FlightError, pa.ArrowException)) as info:
        client.do_get(flight.Ticket(ticket), CALL).read_all()
    return _flight_error(info)


QID = "ab" * 8

MALFORMED_TASKS = {
    "garbage": (b"\x00garbage\xff\x13", "malformed TaskSpec"),
    "empty": (b"", "malformed TaskSpec"),
    "not_a_map": (msgpack.packb([1, 2]), "not a map"),
    "bad_query_id": (TaskSpec("../../etc", 0, 0, b"").to_bytes(), "invalid query id"),
    "bad_input": (TaskSpec(QID, 0, 0, b"", inputs=[{"bad": 1}]).to_bytes(), "malformed task input"),
    "garbage_plan": (TaskSpec(QID, 0, 0, b"\xff\xff garbage").to_bytes(), "could not decode the task plan"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_TASKS))
def test_malformed_run_task_is_a_clear_flight_error(client: flight.FlightClient, case: str) -> None:
    body, expected = MALFORMED_TASKS[case]
    message = _action_error(client, "run_task", body)
    assert expected in message
    assert "Traceback" not in message
    client.do_action(flight.Action("release", QID.encode()), CALL)
    assert _hello(client).name == "peer"


def test_unknown_action_is_a_clear_flight_error(client: flight.FlightClient) -> None:
    message = _action_error(client, "frobnicate", b"")
    assert "unknown action 'frobnicate'" in message, message
    assert "hello" in message and "run_task" in message


def test_release_with_a_bad_query_id(client: flight.FlightClient) -> None:
    assert "invalid query id" in _action_error(client, "release", b"../../etc")


@pytest.mark.parametrize(
    ("ticket", "expected"),
    [
        (b"garbage", "bad ticket"),
        (b"", "bad ticket"),
        (msgpack.packb({"query_id": QID}), "bad ticket"),
        (OutputRef("../../x", 0, 0, 0).to_bytes(), "bad ticket"),
        (msgpack.packb({"query_id": QID, "stage": "x", "task": 0, "partition": 0}), "bad ticket"),
        (OutputRef(QID, 0, 0, 0).to_bytes(), "no output"),
    ],
    ids=["garbage", "empty", "missing_fields", "bad_query_id", "wrong_types", "never_written"],
)
def test_bad_ticket_is_a_clear_flight_error(
    client: flight.FlightClient, ticket: bytes, expected: str
) -> None:
    message = _get_error(client, ticket)
    assert expected in message, message
    assert "Traceback" not in message, message


def test_worker_still_serves_after_malformed_requests(
    tls_worker: LocalWorker,
    client: flight.FlightClient,
    certs_dir: Path,
    tpch_data: Path,
    reference: Callable[[str], pa.Table],
) -> None:
    for name, body in [("run_task", b"\x00garbage"), ("frobnicate", b""), ("release", b"..")]:
        with pytest.raises((flight.FlightError, pa.ArrowException)):
            list(client.do_action(flight.Action(name, body), CALL))
    for ticket in (b"garbage", msgpack.packb({"query_id": QID, "stage": "x", "task": 0, "partition": 0})):
        with pytest.raises((flight.FlightError, pa.ArrowException)):
            client.do_get(flight.Ticket(ticket), CALL).read_all()
    assert _hello(client).address == tls_worker.address
    with Mesh([tls_worker.address], TLSConfig.from_dir(certs_dir), task_timeout=TASK_TIMEOUT) as mesh:
        mesh.register_parquet("nation", tpch_data / "nation.parquet")
        got = mesh.sql(QUERY)
        assert mesh.last_run is not None and mesh.last_run.peers_used == {tls_worker.address}
    assert compare_tables(got, reference(QUERY), ordered=True) is None


def test_a_new_worker_removes_the_work_dir_of_a_killed_one(certs_dir: Path, tmp_path: Path) -> None:
    from ematix_flow.coordinator_lib.local import spawn_worker

    first = spawn_worker(certs_dir, tmp_path)
    left = next(tmp_path.glob(f"flow-worker-{first.pid}-*"))
    (left / "0123456789abcdef").mkdir()
    first.process.kill()
    first.stop()  # reaps it and closes its pipes; a killed worker removes nothing itself
    assert left.exists()
    second = spawn_worker(certs_dir, tmp_path)
    try:
        assert not left.exists()
    finally:
        second.stop()
