"""Helpers shared by the test modules: polling with a deadline, console scripts, worker processes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest
from datafusion import udaf, udf
from datafusion.user_defined import Accumulator

from ematix_flow import Mesh
from ematix_flow.coordinator_lib.local import LocalWorker, spawn_worker
from ematix_flow.transport.tls import TLSConfig, flight_client_kwargs

HOSTS = ["127.0.0.1", "localhost"]
TASK_TIMEOUT = 120.0  # seconds: every Flight call a test mesh makes is bounded
BIN_DIR = Path(sys.executable).parent
READY = re.compile(r"flow-worker ready on (grpc(?:\+tls)?)://(127\.0\.0\.1:\d+) .*work dir (\S+)\)")
#: Query directories a worker keeps under its work dir (lowercase hex query ids, see worker/store.py).
QUERY_DIR = re.compile(r"^[0-9a-f]{8,64}$")


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)  # the poll interval, bounded by the deadline above
    return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` when ``timeout`` passes."""
    if not poll(condition, timeout):
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def executable(name: str) -> str:
    """The console script ``name`` installed next to this interpreter."""
    found = shutil.which(name, path=str(BIN_DIR))
    assert found is not None, f"{name} is not installed in {BIN_DIR}"
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no inherited FLOW_TLS_DIR, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k != "FLOW_TLS_DIR"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (workers started in it inherit them), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_flow(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``flow ARGS`` in ``cwd`` (its temporary files there too), bounded by ``TASK_TIMEOUT``."""
    return subprocess.run(
        [executable("flow"), *args],
        capture_output=True,
        text=True,
        timeout=TASK_TIMEOUT,
        input=stdin,
        cwd=cwd,
        env=clean_env(TMPDIR=str(cwd), **(env or {})),
    )


def query_dirs(work_root: Path) -> list[Path]:
    """Query directories held by every worker whose work dir lives under ``work_root``."""
    return sorted(
        p
        for w in work_root.glob("flow-worker-*")
        if w.is_dir()
        for p in w.iterdir()
        if QUERY_DIR.match(p.name)
    )


@dataclass
class WorkerProcess:
    """A ``flow-worker`` started by a test."""

    process: subprocess.Popen[str]
    scheme: str
    address: str
    work_dir: Path
    ready_line: str


@contextmanager
def flow_worker(
    args: list[str], *, timeout: float = 30.0, env: dict[str, str] | None = None
) -> Iterator[WorkerProcess]:
    """Run ``flow-worker ARGS`` until its ready line; always stopped (SIGTERM, then SIGKILL) on exit."""
    proc = subprocess.Popen(
        [executable("flow-worker"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or clean_env(),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"flow-worker printed no ready line within {timeout:.0f}s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                err = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"flow-worker exited before it was ready: {err.strip()[-500:]}")
            m = READY.search(line)
            if m:
                break
        yield WorkerProcess(proc, m.group(1), m.group(2), Path(m.group(3)), line.strip())
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def close_pipes(process: subprocess.Popen[str]) -> None:
    """Close a stopped child's stdout/stderr (``LocalWorker.stop`` does; a safety net for its own test)."""
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@contextmanager
def local_mesh(**options: Any) -> Iterator[Mesh]:
    """``Mesh.local(**options)`` with every call bounded by ``TASK_TIMEOUT``, closed on exit."""
    with Mesh.local(**{"task_timeout": TASK_TIMEOUT, **options}) as mesh:
        yield mesh


@contextmanager
def spawned_workers(count: int, tls_dir: Path | None, work_dir: Path) -> Iterator[list[LocalWorker]]:
    """``count`` workers from ``spawn_worker`` (started in parallel), stopped on exit."""
    with spawned_workers_with(count, tls_dir, work_dir, []) as workers:
        yield workers


@contextmanager
def spawned_workers_with(
    count: int, tls_dir: Path | None, work_dir: Path, extra: list[str]
) -> Iterator[list[LocalWorker]]:
    """Like ``spawned_workers``, with extra ``flow-worker`` flags."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(spawn_worker, tls_dir, work_dir, extra=extra) for _ in range(count)]
    workers: list[LocalWorker] = []
    errors: list[BaseException] = []
    for f in futures:
        try:
            workers.append(f.result())
        except Exception as exc:
            errors.append(exc)
    try:
        if errors:
            raise errors[0]
        yield workers
    finally:
        for w in workers:
            w.stop()


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 right now (for workers that must know each other's address)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def peer_mesh(
    count: int, tls_dir: Path, work_dir: Path, extra: Callable[[int], list[str]]
) -> Iterator[list[LocalWorker]]:
    """``count`` workers started together, each listing the others in ``--peers`` (``extra(i)``: more flags).

    Each one can then drive a query across the whole mesh (Flight SQL, ``flow sql --via``).
    """
    addresses = [f"127.0.0.1:{p}" for p in free_ports(count)]

    def start(i: int) -> LocalWorker:
        others = ",".join(a for a in addresses if a != addresses[i])
        port = int(addresses[i].rsplit(":", 1)[1])
        return spawn_worker(tls_dir, work_dir, port=port, extra=["--peers", others, *extra(i)])

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(start, i) for i in range(count)]
    workers = [f.result() for f in futures if f.exception() is None]
    try:
        for f in futures:
            f.result()  # the first start failure, if any
        yield workers
    finally:
        for w in workers:
            w.stop()


def worker_action(address: str, certs: Path, kind: str, name: str = "alice") -> bytes:
    """The answer of a worker's own action (``hello``, ``status``), asked with certificate ``name``."""

    tls = TLSConfig.from_dir(certs, name)
    with flight.FlightClient(f"grpc+tls://{address}", **flight_client_kwargs(tls)) as client:
        results = client.do_action(flight.Action(kind, b""), flight.FlightCallOptions(timeout=10))
        return bytes(next(iter(results)).body.to_pybytes())


def ran_tasks(addresses: list[str], certs: Path, sql: str) -> set[str]:
    """The workers that ran tasks of the query with this SQL text (from their ``status`` action)."""
    ran = set()
    for address in addresses:
        queries = json.loads(worker_action(address, certs, "status"))["queries"]
        if any(q["sql"] == sql for q in queries):
            ran.add(address)
    return ran


def terminal_env(scratch: Path) -> dict[str, str]:
    """An environment in which rich sees a plain xterm (nothing forcing or disabling colour)."""
    env = clean_env(TMPDIR=str(scratch), TERM="xterm-256color")
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    return env


def run_on_terminal(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a 120x40 pseudo-terminal; (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True, env=env, cwd=cwd
        )
        os.close(slave)
        stdout, _ = proc.communicate(timeout=timeout)
        reader.join(10)
    finally:
        os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode("utf-8", "replace")


def python_udfs() -> tuple[object, object]:
    """A Python UDF ``plus_one`` and UDAF ``py_total`` (a sum), as users register them."""
    plus = udf(lambda a: pc.add(a, 1), [pa.int64()], pa.int64(), "immutable", name="plus_one")

    class Total(Accumulator):  # type: ignore[misc]
        def __init__(self) -> None:
            self._sum = 0

        def update(self, values: pa.Array) -> None:
            self._sum += pc.sum(values).as_py() or 0

        def merge(self, states: list[pa.Array]) -> None:
            self._sum += pc.sum(states[0]).as_py() or 0

        def state(self) -> list[pa.Scalar]:
            return [pa.scalar(self._sum)]

        def evaluate(self) -> pa.Scalar:
            return pa.scalar(self._sum)

    total = udaf(Total, pa.int64(), pa.int64(), [pa.int64()], "immutable", name="py_total")
    return plus, total
