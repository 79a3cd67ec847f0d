"""Authorisation on live workers: --allow-peer identities, --data-root, --allow-udfs, plaintext rules.

Plaintext and foreign-CA clients are refused in test_worker.py; malformed input in test_fuzz.py.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext
from support import TASK_TIMEOUT, clean_env, executable, python_udfs, spawned_workers_with

from ematix_flow import Mesh, TLSConfig
from ematix_flow.coordinator_lib.local import LocalWorker
from ematix_flow.engine.layout import is_shuffle_file
from ematix_flow.errors import AccessDeniedError, ConfigError
from ematix_flow.planner.nodes import parse_tree
from ematix_flow.planner.paths import file_accesses
from ematix_flow.planner.scans import with_file_groups
from ematix_flow.transport.certs import init_certs, issue_cert
from ematix_flow.transport.messages import OutputRef
from ematix_flow.transport.tls import flight_client_kwargs
from ematix_flow.worker.policy import AccessPolicy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HOSTS = ["127.0.0.1", "localhost"]
ROWS = 2000


@pytest.fixture(scope="module")
def named_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA with certificates for workers w1, w2, a submitter ``client`` and an ``intruder``."""
    certs = tmp_path_factory.mktemp("named") / "certs"
    init_certs(certs, HOSTS)
    for name in ("w1", "w2", "client", "intruder"):
        issue_cert(certs, name, HOSTS)
    return certs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``allowed/t.parquet`` (inside the data root), ``secret/s.parquet`` (outside), and a symlink."""
    base = tmp_path_factory.mktemp("data")
    table = pa.table({"k": [i % 7 for i in range(ROWS)], "v": list(range(ROWS))})
    for sub, name in (("allowed", "t.parquet"), ("secret", "s.parquet")):
        (base / sub).mkdir()
        pq.write_table(table, base / sub / name, row_group_size=500)
    (base / "allowed" / "link.parquet").symlink_to(base / "secret" / "s.parquet")
    (base / "allowed" / "linkdir").symlink_to(base / "secret", target_is_directory=True)
    return base


def _mesh(workers: list[LocalWorker], certs: Path, name: str, **options: object) -> Mesh:
    opts = {"task_timeout": TASK_TIMEOUT, "local_reads": False, "partitions": 4, **options}
    return Mesh([w.address for w in workers], TLSConfig.from_dir(certs, name), **opts)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def guarded(
    named_certs: Path, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LocalWorker]]:
    """Two workers (w1, w2) serving only w1, w2 and client, reading only under ``data/allowed``."""
    work = tmp_path_factory.mktemp("work")
    allow = ["--allow-peer", "w1", "--allow-peer", "w2", "--allow-peer", "client"]
    roots = ["--data-root", str(data / "allowed")]
    with (
        spawned_workers_with(1, named_certs, work, ["--tls-name", "w1", *allow, *roots]) as a,
        spawned_workers_with(1, named_certs, work, ["--tls-name", "w2", *allow, *roots]) as b,
    ):
        yield a + b


SHUFFLE = "SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k ORDER BY k"


def _expected(path: Path) -> pa.Table:
    ctx = SessionContext()
    ctx.register_parquet("t", str(path))
    return ctx.sql(SHUFFLE).to_arrow_table()


# ----------------------------------------------------------------------------------- --allow-peer
def test_listed_identity_runs_a_shuffle_across_listed_workers(
    guarded: list[LocalWorker], named_certs: Path, data: Path
) -> None:
    with _mesh(guarded, named_certs, "client") as mesh:
        mesh.register_parquet("t", data / "allowed" / "t.parquet")
        got = mesh.sql(SHUFFLE)
        assert {t.peer for s in mesh.last_run.stages for t in s.tasks} == {w.address for w in guarded}
    assert got.equals(_expected(data / "allowed" / "t.parquet"))


def test_unlisted_identity_of_the_same_ca_is_refused(guarded: list[LocalWorker], named_certs: Path) -> None:
    with pytest.raises(AccessDeniedError) as info:
        _mesh(guarded, named_certs, "intruder", connect_timeout=5)
    text = str(info.value)
    assert "'intruder'" in text and "--allow-peer" in text and guarded[0].address in text


def test_unlisted_identity_is_refused_on_every_call(guarded: list[LocalWorker], named_certs: Path) -> None:
    tls = TLSConfig.from_dir(named_certs, "intruder")
    client = flight.FlightClient(f"grpc+tls://{guarded[0].address}", **flight_client_kwargs(tls))
    ticket = OutputRef("ab" * 8, 0, 0, 0).to_bytes()
    calls = [
        lambda: list(client.do_action(flight.Action("hello", b""))),
        lambda: list(client.do_action(flight.Action("run_task", b"\x80"))),
        lambda: client.do_get(flight.Ticket(ticket)).read_all(),
        lambda: list(client.list_actions()),
    ]
    try:
        for call in calls:
            with pytest.raises(flight.FlightUnauthorizedError, match="not in this worker's --allow-peer"):
                call()
    finally:
        client.close()


def test_worker_to_worker_hop_is_authorised_too(named_certs: Path, data: Path, tmp_path: Path) -> None:
    """Workers that do not list each other cannot exchange shuffle data: a clear error, not a hang."""
    common = ["--allow-peer", "client", "--data-root", str(data)]
    # two scan stages (one task each, placed on different peers) feed a join on one of them
    join = "SELECT a.k, count(*) AS n FROM t a JOIN t2 b ON a.v = b.v GROUP BY a.k ORDER BY a.k"
    with (
        spawned_workers_with(1, named_certs, tmp_path, ["--tls-name", "w1", *common]) as a,
        spawned_workers_with(1, named_certs, tmp_path, ["--tls-name", "w2", *common]) as b,
        _mesh(a + b, named_certs, "client") as mesh,
    ):
        mesh.register_parquet("t", data / "allowed" / "t.parquet")
        mesh.register_parquet("t2", data / "allowed" / "t.parquet")
        with pytest.raises(AccessDeniedError) as info:
            mesh.sql(join)
    assert "is not in this worker's --allow-peer list" in str(info.value), str(info.value)
    assert "'w1'" in str(info.value) or "'w2'" in str(info.value)


# ----------------------------------------------------------------------------------- --data-root
def test_table_outside_the_data_root_is_refused_naming_the_path(
    guarded: list[LocalWorker], named_certs: Path, data: Path
) -> None:
    with _mesh(guarded, named_certs, "client") as mesh:
        mesh.register_parquet("t", data / "secret" / "s.parquet")
        with pytest.raises(AccessDeniedError) as info:
            mesh.sql(SHUFFLE)
        assert str(data / "secret" / "s.parquet") in str(info.value)
        assert "--data-root" in str(info.value)
        assert mesh.sql("SELECT 1 AS one").column("one").to_pylist() == [1]  # the mesh goes on


def _plan(sql: str, tables: dict[str, Path] | None = None) -> bytes:
    ctx = SessionContext()
    for name, path in (tables or {}).items():
        ctx.register_parquet(name, str(path))
    return ctx.sql(sql).execution_plan().to_bytes()


@pytest.mark.parametrize(
    "forged",
    [
        "{data}/allowed/../secret/s.parquet",
        "{data}/allowed/%2e%2e/secret/s.parquet",
        "{data}/allowed/link.parquet",
        "{data}/allowed/linkdir/s.parquet",
        "/etc/passwd",
        "{data}/allowed/t.parquet\x00/../../secret/s.parquet",
    ],
)
def test_policy_resolves_dotdot_symlinks_and_escapes(data: Path, forged: str) -> None:
    policy = AccessPolicy.create(data_roots=[str(data / "allowed")])
    plan = _plan("SELECT * FROM t", {"t": data / "allowed" / "t.parquet"})
    policy.check_plan(plan)
    (scan,) = [n for n in parse_tree(plan).walk() if n.kind == "parquet_scan"]
    edited = with_file_groups(scan.to_bytes(), [[(forged.format(data=data).lstrip("/"), 1000)]])
    with pytest.raises(AccessDeniedError, match=r"outside this worker's --data-root|NUL byte"):
        policy.check_plan(edited)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_policy_checks_where_a_copy_writes(data: Path, tmp_path: Path, fmt: str) -> None:
    policy = AccessPolicy.create(data_roots=[str(data / "allowed")])
    inside = _plan(f"COPY (SELECT 1 AS a) TO '{data}/allowed/out.{fmt}'")
    outside = _plan(f"COPY (SELECT 1 AS a) TO '{tmp_path}/out.{fmt}'")
    assert any(a.write for a in file_accesses(outside))
    policy.check_plan(inside)
    with pytest.raises(AccessDeniedError, match=f"writing .*{tmp_path}"):
        policy.check_plan(outside)
    AccessPolicy.create().check_plan(outside)  # no data roots: anywhere


def test_data_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        AccessPolicy.create(data_roots=[str(tmp_path / "missing")])


def test_forged_local_read_path_is_not_read() -> None:
    """A task input naming a file on 'this host' is read directly only if it is a worker's output file."""
    assert not is_shuffle_file("/etc/passwd")
    assert not is_shuffle_file("/tmp/flow-worker-1-x/" + "ab" * 8 + "/s0-t0/out/../../../../../etc/passwd")
    assert not is_shuffle_file("relative/flow-worker-1-x/" + "ab" * 8 + "/s0-t0/out/p00000.arrow")


# ----------------------------------------------------------------------------------- --allow-udfs
UDF_SQL = "SELECT k, py_total(plus_one(v)) AS s FROM t GROUP BY k ORDER BY k"


def test_python_udf_is_refused_without_allow_udfs(
    guarded: list[LocalWorker], named_certs: Path, data: Path
) -> None:
    with _mesh(guarded, named_certs, "client") as mesh:
        mesh.register_parquet("t", data / "allowed" / "t.parquet")
        for f in python_udfs():
            mesh.register_udf(f)  # type: ignore[arg-type]
        with pytest.raises(AccessDeniedError) as info:
            mesh.sql(UDF_SQL)
    assert "--allow-udfs" in str(info.value) and "UDF" in str(info.value)


def test_python_udf_runs_with_allow_udfs(named_certs: Path, data: Path, tmp_path: Path) -> None:
    with (
        spawned_workers_with(2, named_certs, tmp_path, ["--allow-udfs"]) as workers,
        _mesh(workers, named_certs, "peer") as mesh,
    ):
        mesh.register_parquet("t", data / "allowed" / "t.parquet")
        for f in python_udfs():
            mesh.register_udf(f)  # type: ignore[arg-type]
        got = mesh.sql(UDF_SQL)
        assert any(t.peer for s in mesh.last_run.stages for t in s.tasks)
    want = _expected(data / "allowed" / "t.parquet")
    assert got.column("s").to_pylist() == [
        s + n for s, n in zip(want.column("s").to_pylist(), want.column("n").to_pylist(), strict=True)
    ]


# ----------------------------------------------------------------------------------- plaintext rules
def _start(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run(
        [executable("flow-worker"), *args], capture_output=True, text=True, timeout=30, env=clean_env()
    )
    return proc.returncode, proc.stderr


def test_insecure_beyond_loopback_needs_insecure_i_know(tmp_path: Path) -> None:
    code, err = _start(["--listen", "0.0.0.0:0", "--insecure", "--work-dir", str(tmp_path)])
    assert code == 2 and "--insecure-i-know" in err and len(err.strip().splitlines()) == 1


def test_insecure_i_know_starts_and_warns_loudly(tmp_path: Path) -> None:
    args = ["--listen", "0.0.0.0:0", "--insecure", "--insecure-i-know", "--work-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [executable("flow-worker"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None and "ready on grpc://" in proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert err.count("INSECURE") >= 3


def test_allow_peer_needs_tls(tmp_path: Path) -> None:
    code, err = _start(["--insecure", "--allow-peer", "w1", "--work-dir", str(tmp_path)])
    assert code == 2 and "--allow-peer needs TLS" in err


def test_certificates_carry_their_name_first(named_certs: Path) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((named_certs / "w1.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert next(iter(sans)) == x509.DNSName("w1")
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in sans
    assert os.stat(named_certs / "w1-key.pem").st_mode & 0o077 == 0
