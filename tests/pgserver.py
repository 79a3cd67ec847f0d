"""A private PostgreSQL server for the test session (``postgres_dsn``), and a fresh database per test.

The server lives in a temporary directory (``initdb``, trust auth, fsync off), listens on a free
port of 127.0.0.1 with its Unix socket in that directory, and is stopped and removed when the
session ends. As root it runs as the ``postgres`` user (PostgreSQL refuses to run as root). Without
PostgreSQL's binaries the tests that need it skip, saying how to install them.

conftest.py loads it as a plugin (``pytest_plugins``): every test module shares one server.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

COMMAND_TIMEOUT = 60.0  # seconds: initdb, pg_ctl start and stop
_INSTALL = "apt-get install postgresql"
_names = itertools.count()


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: pg_config's, pg_ctl's on PATH, or /usr/lib/postgresql."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(pg_ctl).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(argv: list[str], cwd: Path) -> None:
    """Run a PostgreSQL command (as ``postgres`` when we are root); fail the session with its output."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr or done.stdout}")


def _private_dir() -> Path:
    """A temporary folder the server's user owns (``postgres`` when we are root)."""
    base = Path(tempfile.mkdtemp(prefix="ematix-pg-"))  # short: the socket path must stay < 108 bytes
    if os.geteuid() == 0:
        try:
            shutil.chown(base, user="postgres", group="postgres")
        except LookupError:
            shutil.rmtree(base)
            pytest.skip(f"running as root and there is no postgres user to run PostgreSQL as: {_INSTALL}")
    return base


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A libpq DSN of a private PostgreSQL server, started for this session and removed after it."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL binaries (initdb, pg_ctl) found on PATH or in /usr/lib: {_INSTALL}")
    base = _private_dir()
    data = base / "data"
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
              "--locale=C", "--no-sync", "--no-instructions"], cwd=base)  # fmt: skip
        port = _start(bindir, data, base)
        started = True
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10"
    finally:
        if started:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def _start(bindir: Path, data: Path, base: Path) -> int:
    """Start the server on a free port (retried: another process may take the port first)."""
    error: RuntimeError | None = None
    for _ in range(3):
        port = _free_port()
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        try:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                  "-t", str(int(COMMAND_TIMEOUT)), "-o", options, "start"], cwd=base)  # fmt: skip
            return port
        except RuntimeError as exc:
            error = exc
    assert error is not None
    raise error


@pytest.fixture
def postgres_db(postgres_dsn: str) -> Iterator[str]:
    """A DSN of a new, empty database on the session's server, dropped after the test."""
    name = f"test_{os.getpid()}_{next(_names)}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_dsn.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
