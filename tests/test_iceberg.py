"""Apache Iceberg tables on a real 3-peer mTLS mesh: a SQL catalog on SQLite, warehouses on local
disk and on the moto S3 server; snapshots, time travel, renames and added columns, file skipping,
delete files refused. Answers are compared with DataFusion over the Parquet files the tables were
made from, or with pyiceberg's own reader.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.types import LongType
from s3server import S3Server
from support import environment, local_mesh, run_flow

from ematix_flow import Mesh
from ematix_flow.errors import ConfigError
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def sql_catalog(warehouse: Path | str, db: Path, name: str = "lake", **extra: str) -> dict[str, str]:
    """pyiceberg properties of a SQL catalog on SQLite (no server) over ``warehouse``."""
    where = warehouse if isinstance(warehouse, str) else f"file://{warehouse}"
    return {"name": name, "type": "sql", "uri": f"sqlite:///{db}", "warehouse": where, **extra}


def open_catalog(props: dict[str, str]) -> Catalog:
    return load_catalog(**props)


def write_tpch_iceberg(parquet_dir: Path, catalog: Catalog) -> None:
    """TPC-H as Iceberg tables: orders partitioned by o_orderstatus, lineitem in two snapshots."""
    catalog.create_namespace("tpch")
    for name in tpch.TABLES:
        data = plain_strings(pq.read_table(parquet_dir / f"{name}.parquet"))
        table = catalog.create_table(f"tpch.{name}", schema=data.schema)
        if name == "orders":
            with table.update_spec() as spec:
                spec.add_identity("o_orderstatus")
        if name == "lineitem":
            half = data.num_rows // 2
            table.append(data.slice(0, half))
            table.append(data.slice(half))
        else:
            table.append(data)


def plain_strings(data: pa.Table) -> pa.Table:
    """``data`` with string views as strings (tpchgen writes views; pyiceberg partitions strings)."""
    fields = [pa.field(f.name, pa.string()) if f.type == pa.string_view() else f for f in data.schema]
    return data.cast(pa.schema(fields))


@pytest.fixture(scope="module")
def iceberg_tpch(tpch_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """TPC-H SF 0.1 in an Iceberg SQL catalog; yields the catalog's properties."""
    base = tmp_path_factory.mktemp("iceberg-tpch")
    (base / "wh").mkdir()
    props = sql_catalog(base / "wh", base / "catalog.db")
    write_tpch_iceberg(tpch_data, open_catalog(props))
    yield props
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def iceberg_mesh(iceberg_tpch: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("iceberg-mesh")
    with local_mesh(workers=3, min_task_bytes=1, work_dir=base) as mesh:
        for name in tpch.TABLES:
            mesh.register_iceberg(name, f"tpch.{name}", catalog=iceberg_tpch)
        yield mesh
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_over_iceberg_equals_datafusion_over_parquet(
    iceberg_mesh: Mesh, reference: Callable[[str], pa.Table], n: int
) -> None:
    sql = tpch.query(n)
    got = iceberg_mesh.sql(sql)
    diff = compare_tables(got, reference(sql), ordered=query_is_ordered(sql))
    assert diff is None, f"q{n:02d}: {diff}"
    report = iceberg_mesh.last_run
    assert report is not None and report.graph is not None
    assert len(report.peers_used) > 1


def test_column_bounds_skip_files(iceberg_mesh: Mesh, reference: Callable[[str], pa.Table]) -> None:
    """orders is partitioned by o_orderstatus: one file per value; a filter on it reads one."""
    sql = "SELECT count(*) AS n, sum(o_totalprice) AS total FROM orders WHERE o_orderstatus = 'O'"
    text = iceberg_mesh.explain(sql, analyze=True)
    assert "1 of 3 files" in text, text
    assert compare_tables(iceberg_mesh.sql(sql), reference(sql), ordered=False) is None


@pytest.fixture
def people(tmp_path: Path) -> tuple[dict[str, str], list[int]]:
    """A table with two snapshots, then a rename (v -> w) and an added column, then a third snapshot."""
    (tmp_path / "wh").mkdir()
    props = sql_catalog(tmp_path / "wh", tmp_path / "catalog.db")
    catalog = open_catalog(props)
    catalog.create_namespace("crm")
    table = catalog.create_table("crm.people", schema=pa.schema([("k", pa.int64()), ("v", pa.string())]))
    table.append(pa.table({"k": pa.array([1, 2], pa.int64()), "v": ["a", "b"]}))
    table.append(pa.table({"k": pa.array([3], pa.int64()), "v": ["c"]}))
    with table.update_schema() as update:
        update.rename_column("v", "w")
        update.add_column("extra", LongType())
    table = catalog.load_table("crm.people")
    table.append(pa.table({"k": pa.array([4], pa.int64()), "w": ["d"], "extra": pa.array([40], pa.int64())}))
    return props, [s.snapshot_id for s in catalog.load_table("crm.people").snapshots()]


def test_a_renamed_and_an_added_column_read_by_field_id(
    people: tuple[dict[str, str], list[int]], tmp_path: Path
) -> None:
    props, _ = people
    reference = open_catalog(props).load_table("crm.people").scan().to_arrow().sort_by("k").to_pylist()
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_iceberg("people", "crm.people", catalog=props)
        assert mesh.tables()["people"].names == ["k", "w", "extra"]
        got = mesh.sql("SELECT k, w, extra FROM people ORDER BY k").to_pylist()
        assert got == reference
        assert got[0] == {"k": 1, "w": "a", "extra": None}  # read by field id: not a null w
        assert mesh.sql("SELECT k FROM people WHERE w IN ('a', 'd') ORDER BY k").to_pylist() == [
            {"k": 1},
            {"k": 4},
        ]


def test_time_travel_reads_an_older_snapshot_with_its_columns(
    people: tuple[dict[str, str], list[int]], tmp_path: Path
) -> None:
    props, snapshots = people
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_iceberg("people", "crm.people", catalog=props, snapshot_id=snapshots[0])
        assert mesh.sql("SELECT * FROM people ORDER BY k").to_pylist() == [
            {"k": 1, "v": "a"},
            {"k": 2, "v": "b"},
        ]
        mesh.register_iceberg("people", "crm.people", catalog=props, snapshot_id=snapshots[1])
        assert mesh.sql("SELECT count(*) AS n FROM people").to_pylist() == [{"n": 3}]
        with pytest.raises(ConfigError, match="no snapshot 12345"):
            mesh.register_iceberg("people", "crm.people", catalog=props, snapshot_id=12345)
        with pytest.raises(ConfigError, match="not in catalog"):
            mesh.register_iceberg("x", "crm.nobody", catalog=props)


def test_delete_files_are_refused_by_name(tmp_path: Path) -> None:
    """A position delete file (pyiceberg writes none: made by hand, as Spark would) is named."""
    (tmp_path / "wh").mkdir()
    props = sql_catalog(tmp_path / "wh", tmp_path / "catalog.db")
    catalog = open_catalog(props)
    catalog.create_namespace("ns")
    table = catalog.create_table(
        "ns.d", schema=pa.schema([("k", pa.int64())]), properties={"format-version": "2"}
    )
    table.append(pa.table({"k": pa.array(range(10), pa.int64())}))
    data_path = next(iter(table.scan().plan_files())).file.file_path
    deletes = tmp_path / "wh" / "pos-deletes.parquet"
    ids = (b"2147483546", b"2147483545")  # the spec's field ids of file_path and pos
    schema = pa.schema(
        [
            pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": ids[0]}),
            pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": ids[1]}),
        ]
    )
    pq.write_table(pa.table({"file_path": [data_path], "pos": [0]}, schema=schema), deletes)
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=f"file://{deletes}",
        file_format=FileFormat.PARQUET,
        partition={},
        record_count=1,
        file_size_in_bytes=os.path.getsize(deletes),
    )
    delete_file.spec_id = 0
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        append.append_data_file(delete_file)
    assert open_catalog(props).load_table("ns.d").scan().to_arrow().num_rows == 9  # pyiceberg applies it
    with local_mesh(workers=1, work_dir=tmp_path) as mesh, pytest.raises(ConfigError, match="delete files"):
        mesh.register_iceberg("d", "ns.d", catalog=props)


def _storage_file(path: Path, catalogs: dict[str, dict[str, str]], extra: str = "") -> Path:
    lines = [extra]
    for name, props in catalogs.items():
        lines.append(f'[iceberg."{name}"]')
        lines += [f'{k} = "{v}"' for k, v in props.items() if k != "name"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_flow_sql_reads_a_catalog_of_the_storage_file(
    iceberg_tpch: dict[str, str], tmp_path: Path, reference: Callable[[str], pa.Table]
) -> None:
    storage = _storage_file(tmp_path / "storage.toml", {"lake": iceberg_tpch})
    sql = "SELECT o_orderstatus, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1"
    result = run_flow(
        "sql", "--local", "2", "--storage", str(storage), "--table", "orders=iceberg://lake/tpch.orders",
        "--format", "csv", sql, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    want = [f'"{r["o_orderstatus"]}",{r["n"]}' for r in reference(sql).to_pylist()]
    assert result.stdout.splitlines()[1:] == want
    missing = run_flow("sql", "--local", "1", "--storage", str(storage), "--table", "o=iceberg://nope/tpch.orders",
                       "SELECT 1", cwd=tmp_path)  # fmt: skip
    assert missing.returncode != 0 and "no Iceberg catalog 'nope'" in missing.stderr


def test_an_iceberg_warehouse_in_a_bucket(
    s3_server: S3Server, tpch_data: Path, tmp_path: Path, reference: Callable[[str], pa.Table]
) -> None:
    """The catalog's S3 settings come from the bucket's [s3.BUCKET] entry (or the environment)."""
    s3_server.client().create_bucket(Bucket="icewh")
    env = s3_server.env()
    s3_props = {
        "s3.endpoint": s3_server.endpoint,
        "s3.access-key-id": s3_server.key_id,
        "s3.secret-access-key": s3_server.secret,
        "s3.region": "us-east-1",
    }
    writer = sql_catalog("s3://icewh/wh", tmp_path / "catalog.db", **s3_props)
    catalog = open_catalog(writer)
    catalog.create_namespace("tpch")
    orders = plain_strings(pq.read_table(tpch_data / "orders.parquet"))
    catalog.create_table("tpch.orders", schema=orders.schema).append(orders)
    reader: dict[str, Any] = sql_catalog("s3://icewh/wh", tmp_path / "catalog.db")  # no s3.*: ours
    sql = "SELECT o_orderpriority, count(*) AS n, sum(o_totalprice) AS total FROM orders GROUP BY 1"
    with environment(env), local_mesh(workers=3, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_iceberg("orders", "tpch.orders", catalog=reader)
        assert compare_tables(mesh.sql(sql), reference(sql), ordered=False) is None
        assert mesh.last_run is not None and len(mesh.last_run.peers_used) > 1


@pytest.mark.parametrize("engine", ["datafusion", "distributed"])
def test_a_pipeline_loads_an_iceberg_source_into_delta(
    iceberg_tpch: dict[str, str], tmp_path: Path, reference: Callable[[str], pa.Table], engine: str
) -> None:
    """[sources.x] kind = "iceberg", path = "iceberg://lake/tpch.orders" (the catalog in --storage)."""
    from deltalake import DeltaTable, QueryBuilder

    from ematix_flow.engine.storage import StorageConfig
    from ematix_flow.pipelines import runner
    from ematix_flow.pipelines.config import Pipeline

    storage = _storage_file(tmp_path / "storage.toml", {"lake": iceberg_tpch})
    mesh = {"engine": "distributed", "local": 2, "local_below_bytes": 0} if engine == "distributed" else {}
    sql = "SELECT o_orderpriority, count(*) AS n FROM orders GROUP BY 1"
    data = {
        "pipeline_name": "priorities",
        "sources": {"orders": {"kind": "iceberg", "path": "iceberg://lake/tpch.orders"}},
        "transform": {"sql": sql, **mesh},
        "target": {"kind": "delta", "path": "out/priorities", "mode": "merge", "keys": ["o_orderpriority"]},
    }
    pipeline = Pipeline.from_dict(data, origin=str(tmp_path / "p.toml"), base_dir=tmp_path)
    pipeline.storage = StorageConfig.load(storage)
    for _ in range(2):  # the second merge changes nothing
        assert runner.run(pipeline).status == "success"
    reader = QueryBuilder().register("t", DeltaTable(str(tmp_path / "out" / "priorities")))
    got = pa.RecordBatchReader.from_stream(reader.execute("SELECT * FROM t")).read_all()
    assert compare_tables(got, reference(sql), ordered=False, check_names=True) is None
