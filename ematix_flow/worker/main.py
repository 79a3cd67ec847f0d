"""The ``flow-worker`` command: start one mesh peer and serve until SIGTERM/SIGINT."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
import psutil
import pyarrow as pa

from ematix_flow.engine import layout
from ematix_flow.engine.digest import hash_digest
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.tables import register_all
from ematix_flow.errors import ConfigError, FlowError, first_line
from ematix_flow.logs import LogFormat, setup_logging
from ematix_flow.transport.tls import TLSConfig
from ematix_flow.worker.catalog import Catalog
from ematix_flow.worker.limits import WorkerLimits
from ematix_flow.worker.policy import AccessPolicy

if TYPE_CHECKING:
    from ematix_flow.worker.server import WorkerServer

log = logging.getLogger("ematix_flow.worker")


def _split_peers(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--listen", default="127.0.0.1:50051", show_default=True, help="HOST:PORT to serve on (port 0: any)."
)
@click.option("--peers", default="", help="Other peers of the mesh, comma-separated HOST:PORT.")
@click.option(
    "--advertise",
    metavar="HOST:PORT",
    help="The address the other peers know this worker by (as in their --peers) [--listen]; set it when "
    "listening on 0.0.0.0, so that queries clients send here also run tasks here.",
)
@click.option(
    "--http",
    "http_listen",
    metavar="HOST:PORT",
    help="Also serve health, Prometheus metrics, the status API and page here (port 0: any); "
    "mutual TLS with the --tls-dir material unless HOST is loopback [off].",
)
@click.option(
    "--tls-dir", type=click.Path(file_okay=False), envvar="FLOW_TLS_DIR", help="Dir with ca.pem and NAME.pem."
)
@click.option(
    "--tls-name", default="peer", show_default=True, help="Certificate name in --tls-dir (NAME.pem)."
)
@click.option(
    "--work-dir", type=click.Path(file_okay=False), help="Where task outputs are kept [a temp dir]."
)
@click.option(
    "--allow-peer",
    "allow_peers",
    multiple=True,
    metavar="NAME",
    help="Serve only callers whose certificate has this name (repeatable) [any cert from the mesh CA].",
)
@click.option(
    "--data-root",
    "data_roots",
    multiple=True,
    metavar="DIR|URL",
    help="Tasks may read and write only under this directory or URL prefix, e.g. s3://lake/data/ "
    "(repeatable) [anywhere].",
)
@click.option(
    "--storage",
    type=click.Path(dir_okay=False),
    envvar="FLOW_STORAGE",
    help="TOML of object-store buckets (endpoint, region, credentials as ${ENV}) [the AWS_* / "
    "GOOGLE_* / AZURE_* environment].",
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="NAME=PATH|URL",
    help="A table Flight SQL clients and flow sql --via can query (repeatable); as for flow sql.",
)
@click.option(
    "--tables-dir",
    metavar="DIR|URL",
    help="Serve every Parquet/CSV/JSON file or folder in DIR (or under a URL prefix) as a table.",
)
@click.option("--allow-udfs", is_flag=True, help="Run plans that carry Python UDFs (code from submitters).")
@click.option("--insecure", is_flag=True, help="Serve plaintext gRPC without TLS (testing only).")
@click.option(
    "--insecure-i-know",
    is_flag=True,
    help="Allow --insecure on an address other than loopback (anyone who reaches it can run tasks).",
)
@click.option("--memory-limit", help="Cap DataFusion's memory (e.g. 2G, 512M); spills [half the RAM].")
@click.option("--max-disk", help="Refuse tasks while the work dir holds more than this (e.g. 50G).")
@click.option("--max-tasks", type=int, default=0, help="Tasks run at once; more queue [2 x cores].")
@click.option(
    "--query-ttl",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds after which files of a query nobody released (its submitter vanished) are removed.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="debug also shows gRPC's own log lines.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object per line; a task's lines carry query_id, stage and task.",
)
def worker(
    listen: str,
    peers: str,
    advertise: str | None,
    http_listen: str | None,
    tls_dir: str | None,
    tls_name: str,
    work_dir: str | None,
    allow_peers: tuple[str, ...],
    data_roots: tuple[str, ...],
    storage: str | None,
    tables: tuple[str, ...],
    tables_dir: str | None,
    allow_udfs: bool,
    insecure: bool,
    insecure_i_know: bool,
    memory_limit: str | None,
    max_disk: str | None,
    max_tasks: int,
    query_ttl: float,
    log_level: str,
    log_format: LogFormat,
) -> None:
    """Run one ematix-flow peer: an Arrow Flight server over mutual TLS.

    Example: flow-worker --listen 0.0.0.0:50051 --peers 10.0.0.6:50051 --tls-dir certs
    """
    setup_logging(log_level, log_format)
    if log_level != "debug":  # gRPC logs a failed bind itself, in lines of its own; read once, at start
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        limits = WorkerLimits(
            memory_limit=parse_size(memory_limit) if memory_limit else machine_memory() // 2,
            max_tasks=max_tasks or 2 * (os.cpu_count() or 1),
            query_ttl=query_ttl,
            max_disk=parse_size(max_disk, "--max-disk") if max_disk else None,
        )
        policy = AccessPolicy.create(allow_peers, data_roots, allow_udfs)
        storage_config = StorageConfig.load(storage)
        catalog = Catalog()
        register_all(catalog, tables, tables_dir, storage_config)  # flow sql's --table / --tables-dir rules
        catalog.check(policy)
        _check_plaintext(listen, insecure, insecure_i_know, policy)
        if http_listen:
            _check_plaintext(http_listen, insecure, insecure_i_know, policy, "--http")
        if advertise is not None:
            _check_address(advertise, "--advertise")
        server = _start(
            listen,
            peers,
            tls_dir,
            tls_name,
            work_dir,
            insecure,
            limits,
            policy,
            catalog,
            advertise,
            storage_config,
        )
    except FlowError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (OSError, pa.ArrowException) as exc:  # Flight says only "Server did not start properly"
        reason = first_line(exc)
        click.echo(
            f"error: cannot serve on {listen}: {reason} (is another process using the port?)", err=True
        )
        sys.exit(2)
    http_url = _serve_http(server, http_listen, tls_dir, tls_name) if http_listen else ""

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheme = "grpc" if insecure else "grpc+tls"
    log.info("access: %s", policy.describe())
    log.info("storage: %s", storage_config.describe())
    if catalog.tables:
        log.info("catalog (Flight SQL, flow sql --via): %s", ", ".join(catalog.names))
    if not data_roots:
        log.warning("no --data-root: tasks may read and write any file this user can (see SECURITY.md)")
    http_text = f" http {http_url}" if http_url else ""
    known = f", known as {server.address}" if server.address != server.listen_address else ""
    click.echo(
        f"flow-worker ready on {scheme}://{server.listen_address} (name {server.name}{known}, "
        f"work dir {server.store.root})" + http_text
    )
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    log.info("stopping: removing %s", server.store.root)
    server.close_all()


def parse_size(text: str, flag: str = "--memory-limit") -> int:
    """``2G`` / ``512M`` / ``1048576`` -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r}: use a size like 2G, 512M or a byte count") from exc


def _start(
    listen: str,
    peers: str,
    tls_dir: str | None,
    tls_name: str,
    work_dir: str | None,
    insecure: bool,
    limits: WorkerLimits,
    policy: AccessPolicy,
    catalog: Catalog,
    advertise: str | None = None,
    storage: StorageConfig | None = None,
) -> WorkerServer:
    from ematix_flow.worker.server import WorkerServer

    if ":" not in listen:
        raise ConfigError(f"--listen {listen!r} must be HOST:PORT")
    tls = None
    if tls_dir:
        tls = TLSConfig.from_dir(tls_dir, tls_name)
    elif not insecure:
        raise ConfigError(
            "no TLS material: pass --tls-dir DIR (create one with: flow certs init --dir certs) "
            "or --insecure to serve plaintext"
        )
    if insecure and tls:
        raise ConfigError("--insecure and --tls-dir are mutually exclusive")
    hash_digest()  # computed once before serving: every hello answers it
    base = Path(work_dir).resolve() if work_dir else Path(tempfile.gettempdir()).resolve()
    _remove_dead_workers_dirs(base)
    try:
        root = Path(tempfile.mkdtemp(prefix=layout.work_dir_prefix(os.getpid()), dir=_ensure(base)))
    except OSError as exc:
        raise ConfigError(f"cannot create a work dir in {base}: {exc}") from exc
    try:
        return WorkerServer(
            listen,
            tls=tls,
            work_dir=root,
            peers=_split_peers(peers),
            limits=limits,
            policy=policy,
            catalog=catalog,
            advertise=advertise or "",
            storage=storage,
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # a worker that never served leaves nothing behind
        raise


def _check_address(value: str, flag: str) -> None:
    """HOST:PORT with a host and a non-zero port."""
    host, _, port = value.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {value!r} must be HOST:PORT, e.g. worker1.example:50051")


def _check_plaintext(
    listen: str, insecure: bool, i_know: bool, policy: AccessPolicy, flag: str = "--listen"
) -> None:
    """Plaintext only when asked for, beyond loopback only when asked twice, and loudly."""
    if not insecure:
        return
    if policy.allow_peers:
        raise ConfigError("--allow-peer needs TLS: callers are identified by their certificates")
    host = listen.rsplit(":", 1)[0].strip("[]")
    if _is_loopback(host):
        return
    if flag == "--listen":
        what = "run tasks and read data"
        hint = "run tasks and read this worker's files"
    else:
        what = hint = "read the status of every query, SQL included"
    if not i_know:
        where = host if flag == "--listen" else f"{host} ({flag})"
        raise ConfigError(
            f"--insecure on {where} serves plaintext to the network, where anyone who reaches the port can "
            f"{what}: use --tls-dir, or add --insecure-i-know if you really mean it"
        )
    for _ in range(3):
        log.warning(
            "INSECURE: serving plaintext on %s without authentication: anyone who reaches it can %s "
            "(--insecure-i-know)",
            listen,
            hint,
        )


def _serve_http(server: WorkerServer, listen: str, tls_dir: str | None, tls_name: str) -> str:
    """Start the worker's HTTP side (mTLS off loopback); on failure stop the worker and exit 2."""
    from ematix_flow.worker.http import TLSFiles

    host = listen.rsplit(":", 1)[0].strip("[]")
    tls = None
    if tls_dir and not _is_loopback(host):
        root = Path(tls_dir)
        tls = TLSFiles(ca=root / "ca.pem", cert=root / f"{tls_name}.pem", key=root / f"{tls_name}-key.pem")
    try:
        return server.serve_http(listen, tls)
    except (FlowError, OSError) as exc:
        server.close_all()
        reason = first_line(exc)
        hint = " (is another process using the port?)" if isinstance(exc, OSError) else ""
        click.echo(f"error: cannot serve HTTP on {listen}: {reason}{hint}", err=True)
        sys.exit(2)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remove_dead_workers_dirs(base: Path) -> None:
    """Work dirs left by workers that were killed (their pid is gone) hold files nobody will serve."""
    for old in base.glob(layout.WORK_DIR_GLOB):
        pid = layout.work_dir_pid(old.name)
        # our own pid on a dir we did not make yet: a previous run (in a container, pid 1 every time)
        if pid.isdigit() and (int(pid) == os.getpid() or not psutil.pid_exists(int(pid))):
            log.info("removing %s, left by a worker that is gone", old)
            shutil.rmtree(old, ignore_errors=True)


def machine_memory() -> int:
    """Bytes of RAM this process may use: the machine's, or its container's limit when lower."""
    total = int(psutil.virtual_memory().total)
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main() -> None:
    """Entry point of the ``flow-worker`` script."""
    worker(prog_name="flow-worker")


if __name__ == "__main__":
    main()
