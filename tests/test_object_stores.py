"""Tables in an S3 bucket (a private moto server on 127.0.0.1) on a real 3-peer mTLS mesh.

Every process resolves the bucket from its own configuration (``--storage`` / ``Mesh(storage=)``,
or the AWS environment); plans carry URLs only. The answers equal DataFusion over local files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import TASK_TIMEOUT, environment, local_mesh, run_flow, spawned_workers_with

from bench.s3server import S3Server
from ematix_flow import Mesh
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import AccessDeniedError, StorageError
from ematix_flow.pipelines.targets.base import LoadMode, RunRecord
from ematix_flow.pipelines.targets.objects import ObjectParquetTarget
from ematix_flow.pipelines.targets.parquet import _history_row
from ematix_flow.transport.tls import TLSConfig
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SECRET_ENV = "FLOW_TEST_S3_SECRET"
BUCKET = "tpch"


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, tpch_data: Path) -> str:
    """TPC-H SF 0.1 copied to s3://tpch/sf0.1/ (one Parquet file per table); returns the prefix URL."""
    s3_server.upload(BUCKET, tpch_data, "sf0.1")
    s3_server.client().create_bucket(Bucket="lake")
    return f"s3://{BUCKET}/sf0.1/"


@pytest.fixture(scope="module")
def secret(s3_server: S3Server) -> Iterator[str]:
    """The secret, in the environment variable the --storage files refer to (workers inherit it)."""
    os.environ[SECRET_ENV] = s3_server.secret
    yield s3_server.secret
    os.environ.pop(SECRET_ENV, None)


@pytest.fixture(scope="module")
def storage(s3_server: S3Server, secret: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --storage file for the buckets tpch and lake (the secret as a ${ENV} reference)."""
    return s3_server.storage_file(
        tmp_path_factory.mktemp("storage") / "storage.toml", [BUCKET, "lake"], SECRET_ENV
    )


@pytest.fixture(scope="module")
def s3_mesh(bucket: str, storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three local workers and a submitter, all with the --storage file; TPC-H registered by URL."""
    base = tmp_path_factory.mktemp("s3-mesh")
    with local_mesh(workers=3, min_task_bytes=1, work_dir=base, storage=storage) as mesh:
        for name in tpch.TABLES:
            mesh.register_parquet(name, f"{bucket}{name}.parquet")
        yield mesh
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_from_a_bucket_equals_datafusion_over_local_files(
    s3_mesh: Mesh, reference: Callable[[str], pa.Table], n: int
) -> None:
    sql = tpch.query(n)
    got = s3_mesh.sql(sql)
    diff = compare_tables(got, reference(sql), ordered=query_is_ordered(sql))
    assert diff is None, f"q{n:02d}: {diff}"
    report = s3_mesh.last_run
    assert report is not None and report.graph is not None  # it ran on the peers, not in-process
    assert len(report.peers_used) > 1


def test_a_folder_url_and_the_environment_alone_serve_a_table(
    s3_server: S3Server, tmp_path: Path, reference: Callable[[str], pa.Table]
) -> None:
    """No --storage anywhere: the submitter and the workers read the standard AWS environment."""
    folder = tmp_path / "orders"
    folder.mkdir()
    orders = reference("SELECT * FROM orders ORDER BY o_orderkey")
    for i, start in enumerate(range(0, orders.num_rows, 50_000)):
        pq.write_table(orders.slice(start, 50_000), folder / f"part-{i}.parquet")
    s3_server.upload("envonly", folder, "orders")
    with environment(s3_server.env()), local_mesh(workers=3, min_task_bytes=1, work_dir=tmp_path) as mesh:
        mesh.register_parquet("orders", "s3://envonly/orders")  # a folder: the / is added
        sql = "SELECT o_orderstatus, count(*) AS n, sum(o_totalprice) AS total FROM orders GROUP BY 1"
        diff = compare_tables(mesh.sql(sql), reference(sql), ordered=False)
        assert diff is None, diff
        assert mesh.last_run is not None and len(mesh.last_run.peers_used) > 1


def test_a_bucket_nobody_configured_is_named_with_what_to_add(s3_mesh: Mesh) -> None:
    with pytest.raises(StorageError) as info:
        s3_mesh.register_parquet("t", "s3://nobody-configured/t.parquet")
    text = str(info.value)
    assert "s3://nobody-configured/" in text and "[s3.nobody-configured]" in text and "--storage" in text


def test_a_peer_without_the_bucket_fails_naming_the_peer_and_the_url(
    s3_server: S3Server, bucket: str, storage: Path, secret: str, certs_dir: Path, tmp_path: Path
) -> None:
    """The submitter can read s3://tpch, the peers were started without any storage for it."""
    bare = tmp_path / "bare.toml"
    s3_server.storage_file(bare, ["lake"], SECRET_ENV)
    with spawned_workers_with(2, certs_dir, tmp_path / "work", ["--storage", str(bare)]) as workers:
        tls = TLSConfig.from_dir(certs_dir)
        addresses = [w.address for w in workers]
        with Mesh(addresses, tls, storage=storage, min_task_bytes=1, task_timeout=TASK_TIMEOUT) as mesh:
            mesh.register_parquet("lineitem", f"{bucket}lineitem.parquet")
            with pytest.raises(StorageError) as info:
                mesh.sql("SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1")
    text = str(info.value)
    assert "s3://tpch/" in text and "[s3.tpch]" in text
    assert any(a in text for a in addresses), text
    assert s3_server.secret not in text


def test_a_peer_with_wrong_credentials_is_named_with_the_bucket_never_the_secret(
    s3_server: S3Server, bucket: str, storage: Path, secret: str, certs_dir: Path, tmp_path: Path
) -> None:
    """The submitter's credentials are right (it plans), the peers' secret is wrong (they read)."""
    wrong = tmp_path / "wrong.toml"
    s3_server.storage_file(wrong, [BUCKET], "FLOW_TEST_WRONG_SECRET")
    os.environ["FLOW_TEST_WRONG_SECRET"] = "not-the-secret-0123456789"
    try:
        with spawned_workers_with(2, certs_dir, tmp_path / "work", ["--storage", str(wrong)]) as workers:
            tls = TLSConfig.from_dir(certs_dir)
            addresses = [w.address for w in workers]
            with Mesh(addresses, tls, storage=storage, min_task_bytes=1, task_timeout=TASK_TIMEOUT) as mesh:
                mesh.register_parquet("lineitem", f"{bucket}lineitem.parquet")
                with pytest.raises(StorageError) as info:
                    mesh.sql("SELECT l_returnflag, sum(l_quantity) FROM lineitem GROUP BY 1")
    finally:
        os.environ.pop("FLOW_TEST_WRONG_SECRET", None)
    text = str(info.value)
    assert "s3://tpch/" in text and "refused the credentials" in text and any(a in text for a in addresses)
    assert "not-the-secret" not in text and s3_server.secret not in text


def test_wrong_credentials_name_the_bucket_never_the_secret(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.toml"
    os.environ["FLOW_TEST_WRONG_SECRET"] = "not-the-secret-0123456789"
    try:
        s3_server.storage_file(wrong, [BUCKET], "FLOW_TEST_WRONG_SECRET")
        with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path, storage=wrong) as mesh:
            with pytest.raises(StorageError) as info:
                mesh.register_parquet("lineitem", f"{bucket}lineitem.parquet")
    finally:
        os.environ.pop("FLOW_TEST_WRONG_SECRET", None)
    text = str(info.value)
    assert "s3://tpch/" in text and "refused the credentials" in text  # a HEAD's 403 has no S3 code
    assert "not-the-secret" not in text and s3_server.secret not in text
    assert "not-the-secret" not in repr(mesh.storage)


def test_a_url_outside_the_data_root_is_refused(
    s3_server: S3Server,
    bucket: str,
    storage: Path,
    secret: str,
    certs_dir: Path,
    tmp_path: Path,
    tpch_data: Path,
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(tpch_data / "lineitem.parquet", allowed)
    s3_server.upload("lake", allowed, "allowed")
    flags = ["--storage", str(storage), "--data-root", "s3://lake/allowed", "--data-root", str(tmp_path)]
    with spawned_workers_with(2, certs_dir, tmp_path / "work", flags) as workers:
        tls = TLSConfig.from_dir(certs_dir)
        with Mesh([w.address for w in workers], tls, storage=storage, min_task_bytes=1) as mesh:
            mesh.register_parquet("lineitem", "s3://lake/allowed/lineitem.parquet")
            n = mesh.sql("SELECT count(*) AS n FROM lineitem WHERE l_quantity > 10").column("n")[0].as_py()
            assert n > 0
            mesh.register_parquet("orders", f"{bucket}orders.parquet")
            with pytest.raises(AccessDeniedError, match=r"s3://tpch/sf0\.1/orders\.parquet is outside"):
                mesh.sql("SELECT o_orderstatus, count(*) FROM orders GROUP BY 1")


# ------------------------------------------------------------------------------------------- CLI
def _flow(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_flow(*args, cwd=cwd, env=env)


def test_the_cli_generates_into_a_bucket_and_queries_it_by_prefix(
    s3_server: S3Server, tmp_path: Path
) -> None:
    s3_server.client().create_bucket(Bucket="gen")
    env = s3_server.env()
    made = _flow("tpch", "gen", "--sf", "0.01", "--out", "s3://gen/sf0.01", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr[-800:]
    assert "s3://gen/sf0.01/lineitem.parquet" in made.stdout
    local = _flow("tpch", "gen", "--sf", "0.01", "--out", str(tmp_path / "local"), cwd=tmp_path, env=env)
    assert local.returncode == 0, local.stderr[-800:]
    sql = "SELECT n_name, count(*) AS n FROM nation JOIN supplier ON s_nationkey = n_nationkey GROUP BY 1"
    answers = []
    for tables in (["--tables-dir", "s3://gen/sf0.01/"], ["--tables-dir", str(tmp_path / "local")]):
        ran = _flow("sql", "--local", "2", *tables, "--format", "csv", sql, cwd=tmp_path, env=env)
        assert ran.returncode == 0, ran.stderr[-800:]
        answers.append(sorted(ran.stdout.splitlines()))
    assert answers[0] == answers[1] and len(answers[0]) == 26
    one = _flow(
        "sql", "--local", "2", "--table", "r=s3://gen/sf0.01/region.parquet", "--format", "csv",
        "SELECT count(*) AS n FROM r", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert one.returncode == 0 and one.stdout.split() == ['"n"', "5"], one.stderr[-800:]


def test_the_cli_says_in_one_line_that_the_credentials_were_refused(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret-abcdef"}
    ran = _flow(
        "sql", "--local", "1", "--table", f"l={bucket}lineitem.parquet", "SELECT 1", cwd=tmp_path, env=env
    )
    assert ran.returncode != 0
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), ran.stderr[-800:]
    assert "s3://tpch/" in lines[0] and "refused the credentials" in lines[0]
    assert "wrong-secret" not in ran.stderr and s3_server.secret not in ran.stderr


def test_a_peer_serves_bucket_tables_to_submitters_without_credentials(
    s3_server: S3Server, bucket: str, storage: Path, secret: str, certs_dir: Path, tmp_path: Path,
    reference: Callable[[str], pa.Table],
) -> None:  # fmt: skip
    """Mesh(via=...) from a process with no storage at all: the peer resolves the bucket."""
    flags = ["--storage", str(storage), "--table", f"lineitem={bucket}lineitem.parquet"]
    with spawned_workers_with(2, certs_dir, tmp_path / "work", flags) as workers:
        tls = TLSConfig.from_dir(certs_dir)
        with Mesh([w.address for w in workers], tls, via=workers[0].address) as mesh:
            mesh.register_parquet("orders", f"{bucket}orders.parquet")  # CREATE EXTERNAL TABLE on the peer
            sql = (
                "SELECT o_orderpriority, count(*) AS n FROM orders JOIN lineitem ON o_orderkey = l_orderkey "
                "GROUP BY 1"
            )
            assert compare_tables(mesh.sql(sql), reference(sql), ordered=False) is None


# -------------------------------------------------------------------------------------- pipelines
_PIPELINE = """
pipeline_name = "{name}"

[sources.orders]
kind = "parquet"
path = "{source}"

[transform]
sql = "SELECT o_orderkey, o_orderdate, o_totalprice FROM orders WHERE o_orderdate < DATE '{until}'"
{watermark}
{engine}

[target]
kind = "parquet"
path = "{target}"
mode = "{mode}"
"""


@pytest.mark.parametrize("engine", ["datafusion", "distributed"])
def test_a_pipeline_reads_from_and_loads_into_the_bucket(
    s3_server: S3Server, bucket: str, storage: Path, secret: str, tmp_path: Path,
    reference: Callable[[str], pa.Table], engine: str,
) -> None:  # fmt: skip
    """Incremental appends from a bucket into a bucket (then a truncate), with the run history there too."""
    target = f"s3://lake/pipelines/{engine}/orders/"
    mesh_lines = 'engine = "distributed"\nlocal = 2\nlocal_below_bytes = 0' if engine == "distributed" else ""

    def run(until: str, mode: str = "append") -> subprocess.CompletedProcess[str]:
        watermark = 'watermark_column = "o_orderdate"' if mode == "append" else ""
        text = _PIPELINE.format(
            name=f"orders_{engine}", source=f"{bucket}orders.parquet", until=until, engine=mesh_lines,
            target=target, mode=mode, watermark=watermark,
        )  # fmt: skip
        (tmp_path / "p.toml").write_text(text)
        env = {SECRET_ENV: secret}
        return _flow("run", "--storage", str(storage), "p.toml", cwd=tmp_path, env=env)

    for until in ("1995-01-01", "1997-01-01", "1997-01-01"):  # the last run finds nothing new
        ran = run(until)
        assert ran.returncode == 0, ran.stderr[-800:]
    keys = s3_server.keys("lake", f"pipelines/{engine}/orders/")
    assert len([k for k in keys if k.split("/")[-1].startswith("part-")]) == 2, keys
    assert not [k for k in keys if "pending-" in k], keys
    with local_mesh(workers=2, storage=storage, work_dir=tmp_path) as mesh:
        mesh.register_parquet("loaded", target)
        sql = "SELECT o_orderkey, o_orderdate, o_totalprice FROM orders WHERE o_orderdate < DATE '1997-01-01'"
        assert compare_tables(mesh.sql("SELECT * FROM loaded"), reference(sql), ordered=False) is None
    ran = run("1998-01-01", "truncate")
    assert ran.returncode == 0, ran.stderr[-800:]
    keys = s3_server.keys("lake", f"pipelines/{engine}/orders/")
    assert len([k for k in keys if k.split("/")[-1].startswith("part-")]) == 1, keys
    assert len([k for k in keys if "/_ematix_flow/runs/" in k]) == 4, keys


def test_an_object_store_target_settles_runs_that_died(
    s3_server: S3Server, bucket: str, storage: Path, secret: str
) -> None:
    target = ObjectParquetTarget("s3://lake/settle", StorageConfig.load(storage))
    now = datetime.now(UTC)

    def record(run_id: str, mode: LoadMode = "append") -> RunRecord:
        return RunRecord(run_id, "p", "", mode, now)

    target.load(pa.table({"x": [1, 2]}), "append", [], record("a" * 32))
    # died after writing its pending row, before its part file (the commit): never visible, then removed
    target._put_rows([_history_row(record("b" * 32))], target._meta("pending-" + "b" * 32))
    assert [r["run_id"] for r in target.history()] == ["a" * 32]
    # a truncate that died after its commit, before deleting the part it replaced
    parts = target._parts()
    row = {**_history_row(record("c" * 32, "truncate")), "extra": json.dumps({"replaces": parts})}
    target._put_rows([row], target._meta("pending-" + "c" * 32))
    pq.write_table(pa.table({"x": [3]}), f"{target._root}/part-{'c' * 32}.parquet", filesystem=target._fs)
    assert [r["run_id"] for r in target.history()] == ["a" * 32, "c" * 32]  # committed: its row shows
    target.load(pa.table({"x": [4]}), "append", [], record("d" * 32))  # settles first
    keys = s3_server.keys("lake", "settle/")
    assert sorted(k.split("/")[-1] for k in keys if "/part-" in k) == [f"part-{c * 32}.parquet" for c in "cd"]
    assert not [k for k in keys if "pending-" in k]
    assert [r["run_id"] for r in target.history()] == [c * 32 for c in "acd"]
