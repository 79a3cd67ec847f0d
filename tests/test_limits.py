"""Worker limits: a memory cap (spill or a clear resource error, never a dead worker), files of
abandoned queries expire."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import query_dirs, spawned_workers_with, wait_until

from ematix_flow import Mesh, TaskFailedError, TLSConfig
from ematix_flow.worker.main import parse_size
from ematix_flow.workloads import tpch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BIG_AGG = (
    "SELECT l_orderkey, l_partkey, l_suppkey, count(*) AS n, sum(l_extendedprice) AS s, "
    "max(l_comment) AS c FROM lineitem GROUP BY 1, 2, 3 ORDER BY s DESC LIMIT 5"
)


def test_parse_size() -> None:
    assert parse_size("2G") == 2 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5k") == 1536
    assert parse_size("1000") == 1000


def test_small_memory_limit_spills_or_fails_clearly_and_the_worker_stays_up(
    certs_dir: Path, tpch_data: Path, tmp_path: Path
) -> None:
    with spawned_workers_with(2, certs_dir, tmp_path, ["--memory-limit", "8M"]) as workers:
        tls = TLSConfig.from_dir(certs_dir)
        with Mesh([w.address for w in workers], tls, min_task_bytes=1) as mesh:
            tpch.register_all(mesh, tpch_data)
            try:
                assert mesh.sql(BIG_AGG).num_rows == 5  # spilled
            except TaskFailedError as exc:
                assert "out of memory" in str(exc) and "--memory-limit" in str(exc)
            assert all(w.process.poll() is None for w in workers), "a worker died"
            assert mesh.sql("SELECT count(*) AS n FROM nation").column("n").to_pylist() == [25]


def test_files_of_an_abandoned_query_expire(certs_dir: Path, tpch_data: Path, tmp_path: Path) -> None:
    with spawned_workers_with(2, certs_dir, tmp_path, ["--query-ttl", "1"]) as workers:
        tls = TLSConfig.from_dir(certs_dir)
        with Mesh([w.address for w in workers], tls, min_task_bytes=1) as mesh:
            tpch.register_all(mesh, tpch_data)
            stream = mesh.sql_batches("SELECT l_orderkey, l_comment FROM lineitem")
            next(stream)  # the query now holds files on the peers and nobody releases them
            assert query_dirs(tmp_path), "expected the running query to hold files"
            wait_until(lambda: not query_dirs(tmp_path), 20, "the abandoned query's files to expire")
            stream.close()


def test_a_full_work_dir_refuses_tasks_with_a_clear_error(
    certs_dir: Path, tpch_data: Path, tmp_path: Path
) -> None:
    with spawned_workers_with(1, certs_dir, tmp_path, ["--max-disk", "1K"]) as workers:
        with Mesh([w.address for w in workers], TLSConfig.from_dir(certs_dir), min_task_bytes=1) as mesh:
            tpch.register_all(mesh, tpch_data)
            stream = mesh.sql_batches("SELECT l_orderkey, l_comment FROM lineitem")
            next(stream)  # this query now holds more than 1 KB on the worker
            with pytest.raises(TaskFailedError, match="work dir full"):
                mesh.sql("SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1")
            stream.close()
            assert workers[0].process.poll() is None
            assert mesh.sql("SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1").num_rows == 3
