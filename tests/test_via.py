"""Submitting through a peer: ``flow sql --via`` and ``Mesh(via=...)`` from where the data is not.

Three workers serve the TPC-H SF 0.1 catalog (``--tables-dir``); the client runs from an empty folder,
names no table path, and gets the same answers as single-process DataFusion, with the query's tasks
spread over the peers. A worker's own catalog options are checked at start.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import (
    HOSTS,
    TASK_TIMEOUT,
    clean_env,
    executable,
    free_ports,
    peer_mesh,
    ran_tasks,
    run_flow,
    worker_action,
)

from ematix_flow import ConfigError, Mesh, QueryError, TLSConfig
from ematix_flow.coordinator_lib.local import LocalWorker, spawn_worker
from ematix_flow.transport.certs import init_certs, issue_cert
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("via-certs") / "certs"
    init_certs(path, HOSTS)
    issue_cert(path, "alice", HOSTS)
    return path


@pytest.fixture(scope="module")
def workers(
    certs: Path, tpch_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LocalWorker]]:
    with peer_mesh(
        3, certs, tmp_path_factory.mktemp("via-work"), lambda i: ["--tables-dir", str(tpch_data)]
    ) as w:
        yield w


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working folder: no data, no relative path leads to it."""
    path = tmp_path / "laptop"
    path.mkdir()
    return path


def flow(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_flow(*args, cwd=cwd, stdin=stdin)


def via(workers: list[LocalWorker], certs: Path) -> list[str]:
    return ["--via", workers[1].address, "--tls-dir", str(certs), "--tls-name", "alice"]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-500:]
    return lines[0]


@pytest.mark.parametrize("n", [5, 18])
def test_flow_sql_via_runs_where_the_data_is_not(
    workers: list[LocalWorker], certs: Path, elsewhere: Path, reference: Callable[[str], pa.Table], n: int
) -> None:
    sql = tpch.query(n)
    out = elsewhere / "answer.parquet"
    args = ["sql", *via(workers, certs), "--format", "parquet", "--output", str(out), "-f", "-"]
    result = flow(*args, cwd=elsewhere, stdin=sql)
    assert result.returncode == 0, result.stderr[-800:]
    assert f"planned and driven by {workers[1].address}" in result.stderr
    diff = compare_tables(pq.read_table(out), reference(sql), ordered=query_is_ordered(sql))
    assert diff is None, diff
    spread = ran_tasks([w.address for w in workers], certs, sql)
    assert len(spread) >= 2, spread


def test_flow_sql_via_with_a_table_of_the_peer(
    workers: list[LocalWorker], certs: Path, elsewhere: Path, tpch_data: Path
) -> None:
    table = f"r={tpch_data / 'region.parquet'}"
    result = flow(
        "sql",
        *via(workers, certs),
        "--table",
        table,
        "--format",
        "csv",
        "SELECT count(*) AS n FROM r",
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.split() == ['"n"', "5"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["SELECT no_such_column FROM lineitem"], "error: invalid query: "),
        (["SELECT * FROM no_such_table"], "no_such_table' not found"),
        (["DROP TABLE lineitem"], "DDL not supported"),
        (["--tables-dir", "data", "SELECT 1"], "--tables-dir lists a folder here"),
        (["--table", "r=data/region.parquet", "SELECT 1"], "must be an absolute path"),
        (["--partitions", "8", "SELECT 1"], "--partitions is the planning peer's choice"),
    ],
)
def test_flow_sql_via_errors_are_one_line(
    workers: list[LocalWorker], certs: Path, elsewhere: Path, args: list[str], says: str
) -> None:
    assert says in one_line_error(flow("sql", *via(workers, certs), *args, cwd=elsewhere))


def test_flow_sql_via_an_address_nobody_serves(certs: Path, elsewhere: Path) -> None:
    line = one_line_error(
        flow("sql", "--via", "127.0.0.1:1", "--tls-dir", str(certs), "SELECT 1", cwd=elsewhere)
    )
    assert "unreachable" in line


def test_flow_explain_via_is_refused_clearly(
    workers: list[LocalWorker], certs: Path, elsewhere: Path
) -> None:
    assert "the peer plans" in one_line_error(
        flow("explain", *via(workers, certs), "SELECT 1", cwd=elsewhere)
    )


def test_mesh_via_from_python(
    workers: list[LocalWorker], certs: Path, tpch_data: Path, reference: Callable[[str], pa.Table]
) -> None:
    tls = TLSConfig.from_dir(certs, "alice")
    sql = tpch.query(3)
    with Mesh([], tls, via=workers[0].address, query_timeout=TASK_TIMEOUT) as mesh:
        assert sorted(mesh.tables()) == sorted(tpch.TABLES)
        assert mesh.schema(sql).names == reference(sql).schema.names
        got = mesh.sql(sql)
        assert compare_tables(got, reference(sql), ordered=True) is None
        assert mesh.last_run is not None and mesh.last_run.rows == got.num_rows
        rows = sum(b.num_rows for b in mesh.sql_batches("SELECT * FROM lineitem WHERE l_quantity > 45"))
        assert rows == reference("SELECT count(*) AS n FROM lineitem WHERE l_quantity > 45")["n"][0].as_py()
        mesh.register_parquet("my_region", tpch_data / "region.parquet")
        assert mesh.sql("SELECT count(*) AS n FROM my_region").to_pylist() == [{"n": 5}]
        with pytest.raises(ConfigError, match="must be an absolute path"):
            mesh.register_parquet("rel", "region.parquet")
        with pytest.raises(ConfigError, match="needs the planner of this process"):
            mesh.explain(sql)
        with pytest.raises(QueryError, match="invalid query"):
            mesh.sql("SELECT no_such_column FROM nation")
        with pytest.raises(QueryError, match="no_such_column"):
            mesh.schema("SELECT no_such_column FROM nation")
        assert mesh.sql("SELECT count(*) AS n FROM nation").to_pylist() == [{"n": 25}]
    with Mesh([], tls, via=workers[0].address) as fresh:  # a new session: the table went with the old one
        assert "my_region" not in fresh.tables()


def test_a_missing_catalog_path_stops_the_worker_at_start(certs: Path, tmp_path: Path) -> None:
    result = flow_worker_exit(certs, tmp_path, "--table", f"t={tmp_path / 'nope.parquet'}")
    assert f"table t: no such file or directory: {tmp_path / 'nope.parquet'}" in one_line_error(result)


def test_a_catalog_outside_the_data_root_stops_the_worker_at_start(
    certs: Path, tmp_path: Path, tpch_data: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = flow_worker_exit(certs, tmp_path, "--data-root", str(root), "--tables-dir", str(tpch_data))
    assert "outside this worker's --data-root" in one_line_error(result)


def flow_worker_exit(certs: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [executable("flow-worker"), "--listen", "127.0.0.1:0", "--tls-dir", str(certs), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env())


def test_an_advertised_address_is_the_one_it_drives_queries_on(
    certs: Path, tpch_data: Path, tmp_path: Path, elsewhere: Path
) -> None:
    # a worker alone, known as localhost:PORT: the queries it takes run their tasks on itself
    (port,) = free_ports(1)
    advertised = f"localhost:{port}"
    extra = ["--advertise", advertised, "--tables-dir", str(tpch_data)]
    worker = spawn_worker(certs, tmp_path, port=port, extra=extra)
    try:
        status = json.loads(worker_action(worker.address, certs, "status"))["status"]
        assert status["address"] == advertised
        args = ["--via", advertised, "--tls-dir", str(certs), "--tls-name", "alice"]
        sql = "SELECT l_returnflag, count(*) AS n FROM lineitem GROUP BY 1"  # big enough to be distributed
        result = flow("sql", *args, "--format", "csv", sql, cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 4, result.stdout
        assert ran_tasks([worker.address], certs, sql) == {worker.address}
    finally:
        worker.stop()
    bad = flow_worker_exit(certs, tmp_path, "--advertise", "localhost:0")
    assert "--advertise 'localhost:0' must be HOST:PORT" in one_line_error(bad)
