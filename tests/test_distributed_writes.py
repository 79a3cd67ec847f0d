"""Distributed writes on a real 3-peer mesh: COPY TO / INSERT INTO written by the peers, staged, published.

Targets are a bucket of a private moto S3 server and local folders. The files read back equal the
source; a failed query or a killed peer leaves no partial or duplicate file under the target.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import environment, local_mesh

from bench.s3server import S3Server
from ematix_flow import Mesh
from ematix_flow.errors import FlowError, StorageError
from ematix_flow.workloads.compare import compare_tables

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SOURCE = "SELECT l_orderkey, l_linenumber, l_returnflag, l_quantity, l_comment FROM lineitem"


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> Iterator[S3Server]:
    """The session's server, its AWS environment set for this module (workers inherit it)."""
    with environment(s3_server.env()):
        s3_server.client().create_bucket(Bucket="out")
        yield s3_server


@pytest.fixture(scope="module")
def mesh(s3: S3Server, tpch_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("write-mesh")
    with local_mesh(workers=3, min_task_bytes=1, work_dir=base) as m:
        m.register_parquet("lineitem", tpch_data / "lineitem.parquet")
        yield m
    shutil.rmtree(base, ignore_errors=True)


def _read_back(mesh: Mesh, name: str, url: str) -> pa.Table:
    mesh.register_parquet(name, url)
    return mesh.sql(f"SELECT * FROM {name}")


def _no_staging(keys: list[str]) -> bool:
    return not any("_flow_staging-" in k for k in keys)


def test_copy_to_a_bucket_is_written_by_several_peers_and_reads_back_equal(
    mesh: Mesh, s3: S3Server, reference: Callable[[str], pa.Table]
) -> None:
    got = mesh.sql(f"COPY ({SOURCE}) TO 's3://out/copy/' STORED AS PARQUET")
    expected = reference(SOURCE)
    assert got.column("count").to_pylist() == [expected.num_rows]
    run = mesh.last_run
    assert run is not None and len(run.peers_used) > 1, str(run)
    keys = s3.keys("out", "copy/")
    files = [k for k in keys if k.endswith(".parquet")]
    assert len(files) > 1 and _no_staging(keys)
    assert sorted(run.files_written) == sorted(f"s3://out/{k}" for k in files)
    diff = compare_tables(_read_back(mesh, "copied", "s3://out/copy/"), expected, ordered=False)
    assert diff is None, diff


def test_partitioned_copy_and_insert_into_an_external_table(
    mesh: Mesh, s3: S3Server, reference: Callable[[str], pa.Table]
) -> None:
    mesh.sql(f"COPY ({SOURCE}) TO 's3://out/byflag/' STORED AS PARQUET PARTITIONED BY (l_returnflag)")
    keys = s3.keys("out", "byflag/")
    assert {k.split("/")[1] for k in keys if k.endswith(".parquet")} == {
        "l_returnflag=A",
        "l_returnflag=N",
        "l_returnflag=R",
    }
    assert _no_staging(keys)
    mesh.sql(
        "CREATE EXTERNAL TABLE appended (l_orderkey BIGINT, l_comment VARCHAR) STORED AS PARQUET "
        "LOCATION 's3://out/appended/'"
    )
    for _ in range(2):
        mesh.sql("INSERT INTO appended SELECT l_orderkey, l_comment FROM lineitem")
    n = mesh.sql("SELECT count(*) AS n FROM appended").column("n")[0].as_py()
    assert n == 2 * reference("SELECT * FROM lineitem").num_rows
    assert _no_staging(s3.keys("out", "appended/"))


def test_copy_to_a_local_folder_and_to_one_file(
    mesh: Mesh, tmp_path: Path, reference: Callable[[str], pa.Table]
) -> None:
    folder = tmp_path / "copy"
    mesh.sql(f"COPY ({SOURCE}) TO '{folder}/' STORED AS PARQUET")
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) > 1 and all(n.endswith(".parquet") for n in names), names
    assert compare_tables(pq.read_table(folder), reference(SOURCE), ordered=False) is None
    one = tmp_path / "one.csv"
    assert mesh.sql(f"COPY ({SOURCE}) TO '{one}' STORED AS CSV").column("count")[0].as_py() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "one.csv"]  # no staging left
    mesh.register_csv("one", one)
    assert mesh.sql("SELECT count(*) AS n FROM one").column("n")[0].as_py() == reference(SOURCE).num_rows


def test_a_failing_copy_leaves_nothing_under_the_target(mesh: Mesh, s3: S3Server, tmp_path: Path) -> None:
    # one task divides by zero (the row of l_orderkey 1): the others' files must not appear
    failing = "SELECT l_orderkey / (l_orderkey - 1) AS x FROM lineitem"
    with pytest.raises(FlowError, match=r"[Dd]ivide by zero"):
        mesh.sql(f"COPY ({failing}) TO 's3://out/failed/' STORED AS PARQUET")
    assert s3.keys("out", "failed/") in ([], ["failed/"])
    with pytest.raises(FlowError, match=r"[Dd]ivide by zero"):
        mesh.sql(f"COPY ({failing}) TO '{tmp_path}/failed/' STORED AS PARQUET")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def _copy_killing_a_peer(mesh: Mesh, target: str, work: Path) -> None:
    """COPY to ``target`` in a thread; SIGKILL a worker as soon as it has started a task."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["table"] = mesh.sql(f"COPY ({SOURCE}) TO '{target}' STORED AS PARQUET")
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    victim = mesh.workers[1]
    deadline = time.monotonic() + 30
    while not any(work.glob(f"*/work/flow-worker-{victim.pid}-*/*/s*-t*")):
        assert time.monotonic() < deadline, "the victim never started a task"
        time.sleep(0.001)  # polled against the deadline above
    victim.process.kill()
    thread.join(120)
    assert not thread.is_alive(), "the COPY hung after a peer died"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]


def test_a_peer_killed_during_copy_leaves_no_duplicate_or_partial_file(
    s3: S3Server, tpch_data: Path, tmp_path: Path, reference: Callable[[str], pa.Table]
) -> None:
    landed = False
    for attempt in range(3):  # the kill must land while the victim writes: try a few times
        work = tmp_path / f"w{attempt}"
        work.mkdir()
        with local_mesh(workers=3, min_task_bytes=1, work_dir=work) as mesh:
            mesh.register_parquet("lineitem", tpch_data / "lineitem.parquet")
            target = f"s3://out/killed{attempt}/"
            _copy_killing_a_peer(mesh, target, work)
            assert mesh.last_run is not None
            landed = bool(mesh.last_run.peers_lost)
            assert _no_staging(s3.keys("out", f"killed{attempt}/"))
            read = _read_back(mesh, f"killed{attempt}", target)  # every file whole: they all read
            assert compare_tables(read, reference(SOURCE), ordered=False) is None
        if landed:
            break
    assert landed, "the kill never landed while the COPY ran"


def test_the_store_stopped_mid_query_is_a_clear_error_not_a_hang(tpch_data: Path, tmp_path: Path) -> None:
    """The server is killed once a peer started a task; the query fails naming it, within its timeout."""
    server = S3Server.start()
    try:
        server.upload("gone", tpch_data, "tpch")
        with environment(server.env()), local_mesh(workers=3, min_task_bytes=1, work_dir=tmp_path) as mesh:
            for name in ("lineitem", "orders"):
                mesh.register_parquet(name, f"s3://gone/tpch/{name}.parquet")
            result: dict[str, object] = {}

            def run() -> None:
                try:
                    result["table"] = mesh.sql(
                        "SELECT o_orderstatus, sum(l_quantity) FROM lineitem JOIN orders "
                        "ON l_orderkey = o_orderkey GROUP BY 1",
                        timeout=120,
                    )
                except Exception as exc:
                    result["error"] = exc

            t0 = time.monotonic()
            thread = threading.Thread(target=run)
            thread.start()
            deadline = t0 + 30
            while not any(tmp_path.glob("*/work/flow-worker-*/*/s*-t*")):
                assert time.monotonic() < deadline, "no peer started a task"
                time.sleep(0.001)  # polled against the deadline above
            server.stop()
            thread.join(150)
            assert not thread.is_alive(), "the query hung after the store stopped"
            assert time.monotonic() - t0 < 120
    finally:
        server.stop()
    error = result.get("error")
    assert isinstance(error, StorageError), result  # moto serves SF 0.1 in seconds: the stop lands
    assert re.search(r"/gone/.*did not answer", str(error)), error
