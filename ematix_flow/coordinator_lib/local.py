"""Spawning ``flow-worker`` processes on 127.0.0.1 (``Mesh.local``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ematix_flow.errors import FlowError, PeerUnreachableError
from ematix_flow.transport.certs import init_certs
from ematix_flow.transport.tls import TLSConfig

_READY = re.compile(r"flow-worker ready on grpc(?:\+tls)?://(\S+)")


@dataclass
class LocalWorker:
    """A flow-worker process this process started."""

    process: subprocess.Popen[str]
    address: str
    log: list[str] = field(default_factory=list)
    _readers: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def collect(self, stream: IO[str]) -> None:
        """Keep the last lines of one of the worker's pipes in ``log`` (a thread, until it closes)."""
        reader = threading.Thread(target=_collect, args=(stream, self.log), daemon=True)
        reader.start()
        self._readers.append(reader)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; then close its pipes."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for reader in self._readers:  # the process exited: its pipes are at their end
            reader.join(timeout)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def spawn_worker(
    tls_dir: Path | None,
    work_dir: Path,
    *,
    log_level: str = "warning",
    timeout: float = 60.0,
    extra: list[str] | None = None,
    port: int = 0,
) -> LocalWorker:
    """Start one ``flow-worker`` on 127.0.0.1 (``port`` 0: any) and wait for its ready line."""
    cmd = [
        sys.executable,
        "-m",
        "ematix_flow.worker.main",
        "--listen",
        f"127.0.0.1:{port}",
        "--work-dir",
        str(work_dir),
    ]
    cmd += ["--tls-dir", str(tls_dir)] if tls_dir else ["--insecure"]
    cmd += ["--log-level", log_level, *(extra or [])]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    worker = LocalWorker(proc, "")
    worker.collect(proc.stderr)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = _READY.search(line)
        if m:
            worker.address = m.group(1)
            worker.collect(proc.stdout)
            return worker
    worker.stop()
    tail = " / ".join(worker.log[-3:]) or line.strip() or "no output"
    raise PeerUnreachableError(f"local flow-worker did not start: {tail}")


@dataclass
class LocalPeers:
    """Workers started for one Mesh, with the folder that holds their certificates and work dirs."""

    workers: list[LocalWorker]
    tls: TLSConfig | None  # None: they run without TLS
    base: Path

    @property
    def addresses(self) -> list[str]:
        """Every worker's "host:port"."""
        return [w.address for w in self.workers]

    def stop(self) -> None:
        """Stop every worker and remove the folder."""
        for w in self.workers:
            w.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def spawn_local(
    workers: int,
    *,
    insecure: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    log_level: str = "warning",
    extra: list[str] | None = None,
) -> LocalPeers:
    """Start ``workers`` flow-workers in parallel in a new folder under ``work_dir``.

    Unless ``insecure``, they share fresh mTLS certificates made in that folder. When any worker
    fails to start, those that did are stopped, the folder removed, and the first failure raised.
    ``extra``: more ``flow-worker`` options (``--storage FILE``). They inherit this environment.
    """
    base = Path(tempfile.mkdtemp(prefix="flow-local-", dir=work_dir))
    tls_dir = None if insecure else base / "certs"
    spawned: list[LocalWorker] = []
    try:
        if tls_dir is not None:
            init_certs(tls_dir, ["127.0.0.1", "localhost"])
        with ThreadPoolExecutor(max_workers=workers) as ex:
            futures = [
                ex.submit(spawn_worker, tls_dir, base / "work", log_level=log_level, extra=extra)
                for _ in range(workers)
            ]
            for f in futures:
                try:
                    spawned.append(f.result())
                except FlowError:
                    continue
            for f in futures:
                f.result()  # re-raise the first start failure
        tls = TLSConfig.from_dir(tls_dir) if tls_dir else None
    except BaseException:
        LocalPeers(spawned, None, base).stop()
        raise
    return LocalPeers(spawned, tls, base)


def _collect(stream: IO[str], sink: list[str]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            sink.append(line.rstrip())
            del sink[:-200]
