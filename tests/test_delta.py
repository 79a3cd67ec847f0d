"""Delta Lake tables on a real 3-peer mTLS mesh: snapshots, time travel, file skipping, refusals.

The tables are written here with ``deltalake``; the answers are compared with single-process
DataFusion over the Parquet files they were made from, or with deltalake's own reader.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext
from deltalake import DeltaTable, write_deltalake
from s3server import S3Server
from support import environment, local_mesh, run_flow, spawned_workers_with

from ematix_flow import Mesh
from ematix_flow.errors import ConfigError, QueryError
from ematix_flow.transport.tls import TLSConfig
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: Tables written partitioned (a partition column in the middle of the table's columns).
PARTITIONED = {"orders": ["o_orderstatus"], "part": ["p_mfgr"]}


def write_tpch_delta(parquet_dir: Path, out: Path) -> Path:
    """TPC-H as Delta tables: orders and part partitioned, lineitem in two commits (two files)."""
    for name in tpch.TABLES:
        table = pq.read_table(parquet_dir / f"{name}.parquet")
        if name == "lineitem":
            half = table.num_rows // 2
            write_deltalake(out / name, table.slice(0, half))
            write_deltalake(out / name, table.slice(half), mode="append")
        else:
            write_deltalake(out / name, table, partition_by=PARTITIONED.get(name))
    return out


@pytest.fixture(scope="module")
def delta_tpch(tpch_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TPC-H SF 0.1 as Delta tables, one folder per table."""
    base = tmp_path_factory.mktemp("delta-tpch")
    yield write_tpch_delta(tpch_data, base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def delta_mesh(delta_tpch: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three local workers; the TPC-H tables registered as Delta tables."""
    base = tmp_path_factory.mktemp("delta-mesh")
    with local_mesh(workers=3, min_task_bytes=1, work_dir=base) as mesh:
        for name in tpch.TABLES:
            mesh.register_delta(name, delta_tpch / name)
        yield mesh
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_over_delta_equals_datafusion_over_parquet(
    delta_mesh: Mesh, reference: Callable[[str], pa.Table], n: int
) -> None:
    sql = tpch.query(n)
    got = delta_mesh.sql(sql)
    diff = compare_tables(got, reference(sql), ordered=query_is_ordered(sql))
    assert diff is None, f"q{n:02d}: {diff}"
    report = delta_mesh.last_run
    assert report is not None and report.graph is not None  # it ran on the peers, not in-process
    assert len(report.peers_used) > 1


def test_a_delta_table_keeps_its_column_order_and_types(delta_mesh: Mesh, delta_tpch: Path) -> None:
    """A partition column in the middle stays there, as deltalake's reader shows the table."""
    ours = delta_mesh.tables()["orders"]
    theirs = pa.schema(DeltaTable(delta_tpch / "orders").schema().to_arrow())
    assert ours.names == theirs.names
    sql = "SELECT * FROM orders WHERE o_orderkey < 100"
    reference = SessionContext()
    reference.register_table("orders", DeltaTable(delta_tpch / "orders"))
    diff = compare_tables(delta_mesh.sql(sql), reference.sql(sql).to_arrow_table(), ordered=False)
    assert diff is None, diff


def test_count_star_is_counted_not_taken_from_the_template_statistics(
    delta_mesh: Mesh, reference: Callable[[str], pa.Table]
) -> None:
    for sql in ("SELECT count(*) AS n FROM lineitem", "SELECT min(o_orderdate) AS m FROM orders"):
        diff = compare_tables(delta_mesh.sql(sql), reference(sql), ordered=False)
        assert diff is None, f"{sql}: {diff}"


def test_partition_values_and_statistics_skip_files(
    delta_mesh: Mesh, reference: Callable[[str], pa.Table]
) -> None:
    """orders has 3 partitions (o_orderstatus): a filter on it reads 1 file of 3, and says so."""
    sql = "SELECT count(*) AS n, sum(o_totalprice) AS total FROM orders WHERE o_orderstatus = 'F'"
    text = delta_mesh.explain(sql, analyze=True)
    assert "1 of 3 files" in text, text
    diff = compare_tables(delta_mesh.sql(sql), reference(sql), ordered=False)
    assert diff is None, diff
    everything = delta_mesh.explain("SELECT count(*) FROM orders")
    assert "3 of 3 files" in everything


def test_a_filter_no_file_can_match_reads_none_and_answers_empty(delta_mesh: Mesh) -> None:
    sql = "SELECT o_orderkey FROM orders WHERE o_orderstatus = 'nothing'"
    assert "0 of 3 files" in delta_mesh.explain(sql)
    assert delta_mesh.sql(sql).num_rows == 0
    assert (
        delta_mesh.sql("SELECT count(*) AS n FROM orders WHERE o_orderstatus = 'nothing'")["n"][0].as_py()
        == 0
    )


def test_time_travel_reads_an_older_version(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_deltalake(path, pa.table({"k": [1, 2], "p": ["a", "b"]}), partition_by=["p"])
    write_deltalake(path, pa.table({"k": [3], "p": ["a"]}), mode="append")
    write_deltalake(path, pa.table({"k": [10], "p": ["c"]}), mode="overwrite", partition_by=["p"])
    sql = "SELECT p, sum(k) AS s, count(*) AS n FROM t GROUP BY p ORDER BY p"
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_delta("t", path)
        assert mesh.sql(sql).to_pylist() == [{"p": "c", "s": 10, "n": 1}]
        mesh.register_delta("t", path, version=1)
        assert mesh.sql(sql).to_pylist() == [{"p": "a", "s": 4, "n": 2}, {"p": "b", "s": 2, "n": 1}]
        mesh.register_delta("t", path, version=0)
        assert mesh.sql(sql).to_pylist() == [{"p": "a", "s": 1, "n": 1}, {"p": "b", "s": 2, "n": 1}]
        with pytest.raises(ConfigError, match="has no version 7 \\(its latest is 2\\)"):
            mesh.register_delta("t", path, version=7)


def test_column_mapping_by_name_reads_the_physical_columns(tmp_path: Path) -> None:
    """Column mapping 'name': the files' columns are col-<uuid>; SQL sees the table's names."""
    path = tmp_path / "mapped"
    config = {
        "delta.columnMapping.mode": "name",
        "delta.minReaderVersion": "2",
        "delta.minWriterVersion": "5",
    }
    data = pa.table({"k": [1, 2, 3], "v": ["x", "y", None], "p": [1, 1, 2]})
    write_deltalake(path, data, partition_by=["p"], configuration=config)
    assert any("col-" in name for f in path.rglob("*.parquet") for name in pq.read_schema(f).names), (
        "deltalake wrote the logical names: this test would not test column mapping"
    )
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_delta("m", path)
        got = mesh.sql("SELECT k, v, p FROM m WHERE k > 1 ORDER BY k")
        assert got.to_pylist() == [{"k": 2, "v": "y", "p": 1}, {"k": 3, "v": None, "p": 2}]


def _commit(path: Path, version: int, actions: list[dict[str, object]]) -> None:
    log = path / "_delta_log" / f"{version:020d}.json"
    log.write_text("\n".join(json.dumps(a) for a in actions) + "\n")


def test_a_reader_feature_not_handled_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "widened"
    write_deltalake(path, pa.table({"k": [1, 2]}))
    protocol = {
        "minReaderVersion": 3,
        "minWriterVersion": 7,
        "readerFeatures": ["typeWidening"],
        "writerFeatures": ["typeWidening"],
    }
    _commit(path, 1, [{"protocol": protocol}])
    with local_mesh(workers=1, work_dir=tmp_path) as mesh:
        with pytest.raises(ConfigError, match="typeWidening"):
            mesh.register_delta("w", path)


def test_sql_cannot_write_into_a_delta_table(tmp_path: Path) -> None:
    """INSERT INTO would write to the template files: refused, and the table is unchanged."""
    path = tmp_path / "t"
    write_deltalake(path, pa.table({"k": [1, 2]}))
    with local_mesh(workers=1, work_dir=tmp_path) as mesh:
        mesh.register_delta("t", path)
        with pytest.raises(QueryError, match="t is a delta table, read-only in SQL"):
            mesh.sql("INSERT INTO t VALUES (3)")
        assert mesh.sql("SELECT count(*) AS n FROM t").to_pylist() == [{"n": 2}]
    assert DeltaTable(path).version() == 0


def test_a_folder_that_is_not_a_delta_table_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with local_mesh(workers=1, work_dir=tmp_path) as mesh:
        with pytest.raises(ConfigError, match="no Delta table there"):
            mesh.register_delta("x", tmp_path / "plain")
        with pytest.raises(ConfigError, match="no such directory"):
            mesh.register_delta("x", tmp_path / "missing")


def test_a_query_that_must_run_in_process_refuses_a_delta_table(tmp_path: Path) -> None:
    """A recursive CTE cannot be shipped: the template files must never be read instead."""
    path = tmp_path / "t"
    write_deltalake(path, pa.table({"k": [1, 2, 3]}))
    sql = (
        "WITH RECURSIVE r(n) AS (SELECT min(k) FROM t UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "SELECT count(*) FROM r"
    )
    with local_mesh(workers=1, work_dir=tmp_path) as mesh:
        mesh.register_delta("t", path)
        with pytest.raises(QueryError, match="lake table t"):
            mesh.sql(sql)


def test_flow_sql_recognises_a_delta_folder(delta_tpch: Path, tmp_path: Path) -> None:
    result = run_flow(
        "sql",
        "--local",
        "2",
        "--table",
        f"orders={delta_tpch / 'orders'}",
        "--format",
        "csv",
        "SELECT o_orderstatus, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == '"o_orderstatus","n"'
    assert len(result.stdout.splitlines()) == 4


def test_delta_tables_in_a_bucket_with_time_travel_and_odd_partition_values(
    s3_server: S3Server, tmp_path: Path, reference: Callable[[str], pa.Table], delta_tpch: Path
) -> None:
    """Tables copied to the moto S3 server; partition values with '#', '/', '%' and a space."""
    odd = tmp_path / "odd"
    write_deltalake(odd, pa.table({"k": [1, 2, 3], "p": ["a#1", "b c/d%", None]}), partition_by=["p"])
    write_deltalake(odd, pa.table({"k": [4], "p": ["a#1"]}), mode="append")
    s3_server.upload("deltalake", odd, "odd")
    s3_server.upload("deltalake", delta_tpch / "orders", "tpch/orders")
    sql = "SELECT o_orderstatus, count(*) AS n, sum(o_totalprice) AS total FROM orders GROUP BY 1"
    with environment(s3_server.env()), local_mesh(workers=3, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_delta("odd", "s3://deltalake/odd")
        got = mesh.sql("SELECT p, sum(k) AS s FROM odd GROUP BY p ORDER BY p NULLS LAST").to_pylist()
        assert got == [{"p": "a#1", "s": 5}, {"p": "b c/d%", "s": 2}, {"p": None, "s": 3}]
        assert mesh.sql("SELECT k FROM odd WHERE p = 'b c/d%'").to_pylist() == [{"k": 2}]
        mesh.register_delta("odd", "s3://deltalake/odd/", version=0)
        assert mesh.sql("SELECT sum(k) AS s FROM odd").to_pylist() == [{"s": 6}]
        mesh.register_delta("orders", "s3://deltalake/tpch/orders")
        diff = compare_tables(mesh.sql(sql), reference(sql), ordered=False)
        assert diff is None, diff
        assert mesh.last_run is not None and len(mesh.last_run.peers_used) > 1
        result = run_flow(
            "sql",
            "--local",
            "2",
            "--table",
            "orders=s3://deltalake/tpch/orders/",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM orders WHERE o_orderstatus = 'F'",
            cwd=tmp_path,
            env=s3_server.env(),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1] == str(
            reference("SELECT count(*) AS n FROM orders WHERE o_orderstatus = 'F'")["n"][0].as_py()
        )


def test_a_worker_serves_delta_tables_to_flight_sql_sessions(
    delta_tpch: Path, certs_dir: Path, tmp_path: Path, reference: Callable[[str], pa.Table]
) -> None:
    """flow-worker --table NAME=<Delta folder>, and CREATE EXTERNAL TABLE ... STORED AS DELTA via a peer."""
    flags = ["--table", f"orders={delta_tpch / 'orders'}"]
    with spawned_workers_with(2, certs_dir, tmp_path / "work", flags) as workers:
        tls = TLSConfig.from_dir(certs_dir)
        with Mesh([w.address for w in workers], tls, via=workers[0].address) as mesh:
            mesh.register_delta("lineitem", str(delta_tpch / "lineitem"))
            assert {"orders", "lineitem"} <= set(mesh.tables())
            assert not any(n.startswith("__flow") for n in mesh.tables())
            sql = (
                "SELECT o_orderstatus, count(*) AS n, sum(l_quantity) AS q FROM orders "
                "JOIN lineitem ON o_orderkey = l_orderkey GROUP BY 1"
            )
            assert compare_tables(mesh.sql(sql), reference(sql), ordered=False) is None
            with pytest.raises(ConfigError, match="time travel"):
                mesh.register_delta("old", str(delta_tpch / "lineitem"), version=0)


_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _z85(data: bytes) -> str:
    """Z85 (as Delta encodes inline deletion vectors), zero-padded to a multiple of 4 bytes."""
    data += b"\0" * (-len(data) % 4)
    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i : i + 4], "big")
        chunk = ""
        for _ in range(5):
            chunk = _Z85[value % 85] + chunk
            value //= 85
        out.append(chunk)
    return "".join(out)


def test_deletion_vectors_are_refused_by_name_and_a_table_without_them_reads(tmp_path: Path) -> None:
    """deltalake writes no deletion vectors: one is committed by hand (inline, as Spark may write it)."""
    from pyroaring import BitMap

    path = tmp_path / "dv"
    write_deltalake(path, pa.table({"k": pa.array(range(10), pa.int64())}),
                    configuration={"delta.enableDeletionVectors": "true"})  # fmt: skip
    log = path / "_delta_log" / f"{0:020d}.json"
    add = next(json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line)
    bitmap = BitMap([0, 1, 2]).serialize()  # rows 0-2 deleted
    payload = struct.pack("<iqi", 1681511377, 1, 0) + bitmap  # RoaringBitmapArray: magic, 1 bitmap, key 0
    vector = {
        "storageType": "i",
        "pathOrInlineDv": _z85(payload),
        "sizeInBytes": len(payload),
        "cardinality": 3,
    }
    now = int(time.time() * 1000)
    remove = {"path": add["path"], "deletionTimestamp": now, "dataChange": True, "size": add["size"]}
    _commit(
        path, 1, [{"remove": remove}, {"add": {**add, "deletionVector": vector, "modificationTime": now}}]
    )
    theirs = SessionContext()
    theirs.register_table("dv", DeltaTable(path))
    assert theirs.sql("SELECT count(*) AS n FROM dv").to_pylist() == [{"n": 7}]  # deltalake applies it
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        with pytest.raises(ConfigError, match="deletion vectors in version 1"):
            mesh.register_delta("dv", path)
        mesh.register_delta("dv", path, version=0)  # the feature is on, but no vector yet: read
        assert mesh.sql("SELECT count(*) AS n FROM dv").to_pylist() == [{"n": 10}]


def test_a_delta_folder_given_as_parquet_is_read_as_delta(tmp_path: Path) -> None:
    """After an overwrite the folder holds both versions' files: read as Parquet, rows would double."""
    path = tmp_path / "t"
    write_deltalake(path, pa.table({"k": [1, 2, 3]}))
    write_deltalake(path, pa.table({"k": [10, 20]}), mode="overwrite")
    assert len(list(path.glob("*.parquet"))) == 2
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_parquet("t", path)
        assert mesh.sql("SELECT sum(k) AS s FROM t").to_pylist() == [{"s": 30}]
    from ematix_flow.pipelines import runner
    from ematix_flow.pipelines.config import Pipeline

    for engine in ({}, {"engine": "distributed", "local": 2, "local_below_bytes": 0}):
        data = {
            "pipeline_name": "sums",
            "sources": {"t": {"kind": "parquet", "path": "t"}},
            "transform": {"sql": "SELECT sum(k) AS s FROM t", **engine},
            "target": {"kind": "parquet", "path": f"out{len(engine)}", "mode": "truncate"},
        }
        pipeline = Pipeline.from_dict(data, origin=str(tmp_path / "p.toml"), base_dir=tmp_path)
        assert runner.run(pipeline).status == "success"
        assert pq.read_table(tmp_path / f"out{len(engine)}").to_pylist() == [{"s": 30}]
