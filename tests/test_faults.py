"""A peer killed (SIGKILL) while a query runs: the query still returns the right answer."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from support import local_mesh, spawned_workers, wait_until

from bench.faults import KillResult, kill_one
from ematix_flow import Mesh, PeerUnreachableError, TLSConfig, TLSError
from ematix_flow.coordinator_lib.local import spawn_worker
from ematix_flow.coordinator_lib.report import RunReport
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import PeerInfo
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _task_dirs(work: Path, pid: int) -> int:
    """Task directories a worker has created so far (how far into the query it is)."""
    return sum(1 for _ in work.glob(f"*/work/flow-worker-{pid}-*/*/s*-t*"))


def _run_and_kill(mesh: Mesh, sql: str, work: Path, victims: int, after_tasks: int) -> pa.Table:
    """Run ``sql`` in a thread; SIGKILL ``victims`` peers once the first has started ``after_tasks`` tasks."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["table"] = mesh.sql(sql)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    first = mesh.workers[1]
    deadline = time.monotonic() + 30
    while _task_dirs(work, first.pid) < after_tasks and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    for w in mesh.workers[1 : 1 + victims]:
        w.process.kill()
    thread.join(120)
    assert not thread.is_alive(), "the query hung after a peer died"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    table = result["table"]
    assert isinstance(table, pa.Table)
    return table


#: The kill cases: each query, with the peer killed once the first victim has started this many tasks.
KILL_QUERIES = [3, 5, 9, 18, 21]
KILL_AFTER_TASKS = [1, 2, 3]


@dataclass
class Killed:
    """One query run on a fresh 3-peer mesh while one of its peers was SIGKILLed."""

    table: pa.Table | None
    error: Exception | None
    run: RunReport | None
    victim: str
    leftovers: list[Path]  # query files still on the live peers after the query

    @property
    def landed(self) -> bool:
        """The peer died while the query ran (else the query had finished first)."""
        return self.run is not None and bool(self.run.peers_lost)


def _kill_case(data: Path, work: Path, query: int, after_tasks: int) -> Killed:
    with local_mesh(workers=3, min_task_bytes=1, work_dir=work) as mesh:
        tpch.register_all(mesh, data)
        table: pa.Table | None = None
        error: Exception | None = None
        try:
            table = _run_and_kill(mesh, tpch.query(query), work, victims=1, after_tasks=after_tasks)
        except Exception as exc:
            error = exc
        # no shuffle file outlives its query on the live peers (the dead one's go when a worker
        # next starts in that folder)
        live = [w for w in mesh.workers if w.process.poll() is None]
        leftovers = [p for w in live for p in work.glob(f"*/work/flow-worker-{w.pid}-*/[0-9a-f]*")]
        return Killed(table, error, mesh.last_run, mesh.workers[1].address, leftovers)


@pytest.fixture(scope="module")
def kill_cases(tpch_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Killed]:
    """``kill_cases(query, after_tasks)``: that case, run once per module (for its test and the tally)."""
    done: dict[tuple[int, int], Killed] = {}

    def case(query: int, after_tasks: int) -> Killed:
        if (query, after_tasks) not in done:
            work = tmp_path_factory.mktemp(f"kill-q{query}-after{after_tasks}")
            done[query, after_tasks] = _kill_case(tpch_data, work, query, after_tasks)
        return done[query, after_tasks]

    return case


@pytest.mark.parametrize("after_tasks", KILL_AFTER_TASKS)
@pytest.mark.parametrize("query", KILL_QUERIES)
def test_one_peer_killed_mid_query(
    kill_cases: Callable[[int, int], Killed],
    reference: Callable[[str], pa.Table],
    query: int,
    after_tasks: int,
) -> None:
    sql = tpch.query(query)
    killed = kill_cases(query, after_tasks)
    if killed.error is not None:
        raise killed.error
    assert killed.table is not None
    assert compare_tables(killed.table, reference(sql), ordered=query_is_ordered(sql)) is None
    run = killed.run
    assert run is not None
    if run.peers_lost:  # the kill landed while the query ran (else it finished first: still right)
        assert run.peers_lost == [killed.victim] and run.retries >= 1, str(run)
    assert not killed.leftovers, "files left behind"


def test_most_kills_landed_mid_query(kill_cases: Callable[[int, int], Killed]) -> None:
    # the 15 cases of test_one_peer_killed_mid_query (run here unless that test ran them already):
    # most kills must hit a running query, or those cases prove nothing
    landed = [kill_cases(query, after).landed for query in KILL_QUERIES for after in KILL_AFTER_TASKS]
    assert sum(landed) >= 10, landed


def test_two_of_three_killed_the_last_answers(
    tpch_data: Path, reference: Callable[[str], pa.Table], tmp_path: Path
) -> None:
    sql = tpch.query(9)
    with local_mesh(workers=3, min_task_bytes=1, local_reads=False, work_dir=tmp_path) as mesh:
        tpch.register_all(mesh, tpch_data)
        got = _run_and_kill(mesh, sql, tmp_path, victims=2, after_tasks=2)
        assert compare_tables(got, reference(sql), ordered=query_is_ordered(sql)) is None
        assert mesh.last_run is not None and mesh.last_run.peers_used <= {mesh.workers[0].address} | set(
            w.address for w in mesh.workers[1:]
        )
        # the next query runs on the survivor alone
        mesh.sql(sql)
        assert mesh.last_run is not None and mesh.last_run.peers_used == {mesh.workers[0].address}


def test_all_peers_killed_is_a_clear_error(tpch_data: Path, tmp_path: Path) -> None:
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        tpch.register_all(mesh, tpch_data)
        for w in mesh.workers:
            w.process.kill()
            w.process.wait(10)
        started = time.monotonic()
        with pytest.raises(PeerUnreachableError, match="unreachable"):
            mesh.sql(tpch.query(3))
        assert time.monotonic() - started < 15


def test_a_restarted_peer_rejoins(certs_dir: Path, tpch_data: Path, tmp_path: Path) -> None:
    sql = "SELECT l_returnflag, count(*) AS n FROM lineitem GROUP BY 1"
    tls = TLSConfig.from_dir(certs_dir)
    with (
        spawned_workers(2, certs_dir, tmp_path) as pair,
        Mesh([w.address for w in pair], tls, min_task_bytes=1) as mesh,
    ):
        mesh.register_parquet("lineitem", tpch_data / "lineitem.parquet")
        expected = mesh.sql(sql)
        gone = pair[1]
        gone.stop()
        mesh.sql(sql)
        assert gone.address not in mesh.peers_alive
        port = int(gone.address.rsplit(":", 1)[1])
        back = spawn_worker(certs_dir, tmp_path, port=port)
        try:
            # a down peer is asked again a few seconds later; then it takes tasks again
            def rejoined() -> bool:
                got = mesh.sql(sql)
                assert compare_tables(got, expected, ordered=False) is None
                return mesh.last_run is not None and back.address in mesh.last_run.peers_used

            wait_until(rejoined, 20, "the restarted peer to rejoin")
        finally:
            back.stop()


@pytest.fixture(scope="module")
def random_kills(tpch_data: Path, reference: Callable[[str], pa.Table]) -> Callable[[int], KillResult]:
    """``random_kills(n)``: TPC-H query n with a peer killed at a random moment, run once per module."""
    done: dict[int, KillResult] = {}

    def case(query: int) -> KillResult:
        if query not in done:
            sql = tpch.query(query)
            done[query] = kill_one(f"q{query:02d}", sql, tpch_data, 3, random.Random(query), reference(sql))
        return done[query]

    return case


@pytest.mark.parametrize("query", range(1, 23))
def test_every_tpch_query_survives_a_peer_killed_at_a_random_moment(
    random_kills: Callable[[int], KillResult], query: int
) -> None:
    result = random_kills(query)
    assert result.equal, result.error or "different answer"


def test_most_random_kills_landed_mid_query(random_kills: Callable[[int], KillResult]) -> None:
    # the 22 cases above (run here unless they ran already): most kills must hit a running query
    landed = [random_kills(query).landed for query in range(1, 23)]
    assert sum(landed) >= 15, landed


def test_a_worker_knows_which_of_its_peers_are_down(certs_dir: Path, tmp_path: Path) -> None:
    other = spawn_worker(certs_dir, tmp_path)
    watcher = spawn_worker(certs_dir, tmp_path, extra=["--peers", other.address])
    pool = ClientPool(TLSConfig.from_dir(certs_dir))
    try:

        def down() -> list[str]:
            return PeerInfo.from_bytes(pool.action(watcher.address, "hello", b"", 5.0)).peers_down

        assert down() == []
        other.process.kill()
        other.process.wait(10)
        wait_until(lambda: down() == [other.address], 20, "the worker to notice its peer is down")
    finally:
        pool.close()
        watcher.stop()
        other.stop()


def test_a_peer_that_dies_mid_handshake_is_unreachable_not_misconfigured(
    certs_dir: Path, tmp_path: Path
) -> None:
    # a killed worker's port can still accept and drop connections for a moment (or another process
    # takes it): gRPC then reports a failed TLS handshake. For a peer that answered before, that is a
    # dead peer (retried elsewhere), not wrong certificates (which would fail the whole query).
    worker = spawn_worker(certs_dir, tmp_path)
    pool = ClientPool(TLSConfig.from_dir(certs_dir))
    try:
        assert pool.action(worker.address, "hello", b"", 10)
        port = int(worker.address.rsplit(":", 1)[1])
        worker.stop()
        with socket.create_server(("127.0.0.1", port)) as dropper:
            threading.Thread(target=lambda: _drop_connections(dropper), daemon=True).start()
            with pytest.raises(PeerUnreachableError, match="it answered before"):
                pool.action(worker.address, "hello", b"", 10)
            fresh = ClientPool(TLSConfig.from_dir(certs_dir))  # never heard from it: it may be misconfigured
            try:
                with pytest.raises(TLSError, match="TLS handshake"):
                    fresh.action(worker.address, "hello", b"", 10)
            finally:
                fresh.close()
    finally:
        pool.close()
        worker.stop()


def _drop_connections(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:  # the test closed the server
            return
        conn.close()
