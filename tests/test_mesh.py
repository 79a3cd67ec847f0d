"""``Mesh`` on real flow-worker processes: fan-out, streaming, edge results, errors, sharing, clean-up."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionConfig, SessionContext
from support import TASK_TIMEOUT, local_mesh, poll, query_dirs, spawned_workers, wait_until

from ematix_flow import (
    ConfigError,
    FlowError,
    Mesh,
    PeerUnreachableError,
    QueryError,
    TaskFailedError,
    TLSConfig,
)
from ematix_flow.coordinator_lib.local import LocalWorker
from ematix_flow.coordinator_lib.planning import plan_query
from ematix_flow.engine.settings import planning_context
from ematix_flow.planner.nodes import FILE_SCANS
from ematix_flow.transport.flight import ClientPool
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

GROUP_BY_LINEITEM = (
    "SELECT l_returnflag, l_linestatus, count(*) AS n, sum(l_quantity) AS q FROM lineitem "
    "GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus"
)


@pytest.fixture(scope="module")
def work_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("mesh-work")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def workers(certs_dir: Path, work_root: Path) -> Iterator[list[LocalWorker]]:
    """Three mTLS workers this module started itself, with a work dir it can inspect."""
    with spawned_workers(3, certs_dir, work_root) as started:
        yield started


@pytest.fixture(scope="module")
def mesh(workers: list[LocalWorker], certs_dir: Path, tpch_data: Path) -> Iterator[Mesh]:
    """A submitter on those workers with the default task sizing."""
    with Mesh([w.address for w in workers], TLSConfig.from_dir(certs_dir), task_timeout=TASK_TIMEOUT) as m:
        tpch.register_all(m, tpch_data)
        yield m


def _check(got: pa.Table, expected: pa.Table, sql: str) -> None:
    diff = compare_tables(got, expected, ordered=query_is_ordered(sql))
    assert diff is None, diff


def _scan_stages(mesh: Mesh, tpch_data: Path, sql: str) -> list[int]:
    ctx = planning_context(mesh.partitions)
    tpch.register_all(ctx, tpch_data)
    graph = plan_query(ctx, sql).graph
    return [s.id for s in graph.stages if any(n.kind in FILE_SCANS for n in s.plan.walk())]


# ------------------------------------------------------------------------------------ fan-out
@pytest.mark.parametrize(
    "sql",
    [GROUP_BY_LINEITEM, "SELECT count(*) AS n FROM lineitem WHERE l_quantity < 25"],
    ids=["group_by", "filtered_count"],
)
def test_single_file_table_fans_out(
    mesh: Mesh, tpch_data: Path, reference: Callable[[str], pa.Table], sql: str
) -> None:
    assert (tpch_data / "lineitem.parquet").is_file() and not (tpch_data / "lineitem").exists()
    _check(mesh.sql(sql), reference(sql), sql)
    report = mesh.last_run
    assert report is not None
    (scan_stage,) = _scan_stages(mesh, tpch_data, sql)
    tasks = report.stages[scan_stage].tasks
    assert len(tasks) > 1, str(report)
    assert len({t.peer for t in tasks}) > 1, str(report)


# ------------------------------------------------------------------------------------ results
def test_sql_batches_concatenate_to_sql(mesh: Mesh) -> None:
    sql = (
        "SELECT o_orderkey, o_custkey, o_totalprice FROM orders WHERE o_orderkey < 60000 ORDER BY o_orderkey"
    )
    batches = list(mesh.sql_batches(sql))
    assert len(batches) > 1
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    streamed = pa.Table.from_batches(batches)
    whole = mesh.sql(sql)
    assert streamed.num_rows == whole.num_rows > 0
    assert streamed.equals(whole)


def test_sql_batches_of_a_distributed_query(mesh: Mesh, reference: Callable[[str], pa.Table]) -> None:
    sql = tpch.query(3)
    got = pa.Table.from_batches(list(mesh.sql_batches(sql)))
    _check(got, reference(sql), sql)
    assert mesh.last_run is not None and mesh.last_run.distributed


def test_select_without_a_table(mesh: Mesh) -> None:
    got = mesh.sql("SELECT 1 AS one, 'x' AS s, 2.5 AS f")
    assert got.to_pylist() == [{"one": 1, "s": "x", "f": 2.5}]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT l_orderkey, l_quantity AS q FROM lineitem WHERE false",
        "SELECT l_orderkey, l_quantity AS q FROM lineitem WHERE l_quantity > 1000",
        "SELECT l_returnflag AS flag, count(*) AS c FROM lineitem WHERE l_quantity > 1000 "
        "GROUP BY l_returnflag",
        "SELECT o_orderkey, c_name FROM orders JOIN customer ON o_custkey = c_custkey WHERE o_totalprice < 0",
    ],
    ids=["where_false", "nothing_passes", "empty_group_by", "empty_join"],
)
def test_empty_result_keeps_the_columns(mesh: Mesh, reference: Callable[[str], pa.Table], sql: str) -> None:
    got = mesh.sql(sql)
    expected = reference(sql)
    assert got.num_rows == 0 == expected.num_rows
    assert got.column_names == expected.column_names
    assert got.schema.types == expected.schema.types
    assert sum(b.num_rows for b in mesh.sql_batches(sql)) == 0


@pytest.mark.parametrize(
    "sql",
    [
        # a global aggregate over a UNION whose branches live in different tasks (one branch empty)
        "SELECT count(*) AS n, sum(x) AS s FROM "
        "(SELECT o_totalprice AS x FROM orders WHERE o_orderkey < 1000 "
        "UNION ALL SELECT l_extendedprice AS x FROM lineitem WHERE l_orderkey < 0)",
        # a repeated column name crossing a shuffle
        "SELECT a.o_orderkey, b.o_orderkey FROM orders a JOIN orders b ON a.o_custkey = b.o_custkey "
        "WHERE a.o_orderkey < 300 AND b.o_orderkey < 300",
        # left join keeping unmatched rows, NULL aggregates
        "SELECT c_custkey, count(o_orderkey) AS n FROM customer LEFT JOIN orders "
        "ON c_custkey = o_custkey AND o_comment LIKE '%special%requests%' GROUP BY c_custkey",
        "SELECT o_custkey, o_orderkey, "
        "row_number() OVER (PARTITION BY o_custkey ORDER BY o_orderdate, o_orderkey) "
        "AS rn FROM orders WHERE o_custkey < 300",
        "SELECT count(DISTINCT l_suppkey) AS s, count(DISTINCT l_partkey) AS p FROM lineitem",
    ],
    ids=["union_global_agg", "duplicate_names", "left_join", "window", "count_distinct"],
)
def test_plan_shapes_match_datafusion(mesh: Mesh, reference: Callable[[str], pa.Table], sql: str) -> None:
    _check(mesh.sql(sql), reference(sql), sql)


def test_csv_and_json_tables(mesh: Mesh, tmp_path: Path) -> None:
    rows = [(i, f"k{i % 7}", None if i % 11 == 0 else i / 4) for i in range(3000)]
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c\n" + "".join(f"{a},{b},{'' if c is None else c}\n" for a, b, c in rows))
    ndjson = tmp_path / "t.json"
    ndjson.write_text(
        "".join(f'{{"a": {a}, "b": "{b}", "c": {"null" if c is None else c}}}\n' for a, b, c in rows)
    )
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    mesh.register_csv("small_csv", csv)
    mesh.register_json("small_json", ndjson)
    ctx.register_csv("small_csv", str(csv))
    ctx.register_json("small_json", str(ndjson))
    for table in ("small_csv", "small_json"):
        for sql in (
            f"SELECT b, count(*) AS n, sum(a) AS s, avg(c) AS m, count(c) AS k FROM {table} "
            "GROUP BY b ORDER BY b",
            f"SELECT a, b, c FROM {table} WHERE a % 100 = 3",
        ):
            got = mesh.sql(sql)
            _check(got, ctx.sql(sql).to_arrow_table(), sql)
            assert got.num_rows > 0


def test_empty_stage_with_a_millisecond_timestamp(mesh: Mesh, tmp_path: Path) -> None:
    """A stage that outputs no rows gets its schema from EXPLAIN; its types must survive (units, zones)."""
    n = 2000
    base = dt.datetime(2020, 1, 1)
    table = pa.table(
        {
            "k": pa.array(range(n), pa.int64()),
            "ts": pa.array([base + dt.timedelta(seconds=i % 50) for i in range(n)], pa.timestamp("ms")),
            "g": [f"g{i % 5}" for i in range(n)],
        }
    )
    path = tmp_path / "ts.parquet"
    pq.write_table(table, path, row_group_size=200)
    mesh.register_parquet("ts_table", path)
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    ctx.register_parquet("ts_table", str(path))
    sql = (
        "SELECT a.g, b.ts, count(*) AS n FROM ts_table a LEFT JOIN "
        "(SELECT g, max(ts) AS ts FROM ts_table WHERE g = 'nope' GROUP BY g) b "
        "ON a.g = b.g GROUP BY a.g, b.ts"
    )
    got = mesh.sql(sql)
    expected = ctx.sql(sql).to_arrow_table()
    _check(got, expected, sql)
    assert got.schema.field("ts").type == pa.timestamp("ms")


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM no_such_table", "SELEC 1", "SELECT no_such_column FROM nation", "SELECT 1 +"],
    ids=["missing_table", "bad_keyword", "missing_column", "truncated"],
)
def test_invalid_sql_is_a_query_error(mesh: Mesh, sql: str) -> None:
    with pytest.raises(QueryError) as info:
        mesh.sql(sql)
    assert "\n" not in str(info.value)
    with pytest.raises(QueryError):
        next(iter(mesh.sql_batches(sql)))


def test_register_missing_path_is_a_config_error(mesh: Mesh, tmp_path: Path) -> None:
    for register in (mesh.register_parquet, mesh.register_csv, mesh.register_json):
        with pytest.raises(ConfigError, match="no such file"):
            register("ghost", tmp_path / "missing.parquet")
    with pytest.raises(QueryError):
        mesh.sql("SELECT * FROM ghost")


def test_failed_task_is_reported_and_the_mesh_keeps_working(
    mesh: Mesh, work_root: Path, reference: Callable[[str], pa.Table]
) -> None:
    sql = (
        "SELECT l_returnflag, sum(l_linenumber / (l_linenumber - l_linenumber)) FROM lineitem "
        "GROUP BY l_returnflag"
    )
    with pytest.raises(TaskFailedError, match=r"(?i)divide by zero"):
        mesh.sql(sql)
    failed = mesh.last_run
    assert failed is not None
    wait_until(lambda: not list(work_root.glob(f"*/{failed.query_id}")), 10, "the failed query's release")
    _check(mesh.sql(GROUP_BY_LINEITEM), reference(GROUP_BY_LINEITEM), GROUP_BY_LINEITEM)


# ------------------------------------------------------------------------------------ sharing, clean-up
def test_two_submitters_share_the_workers(
    mesh: Mesh,
    workers: list[LocalWorker],
    certs_dir: Path,
    tpch_data: Path,
    reference: Callable[[str], pa.Table],
) -> None:
    with Mesh(
        [w.address for w in workers],
        TLSConfig.from_dir(certs_dir),
        min_task_bytes=1,
        task_timeout=TASK_TIMEOUT,
    ) as other:
        tpch.register_all(other, tpch_data)
        plans = {mesh: [3, 9, 18], other: [5, 13, 21]}
        expected = {n: reference(tpch.query(n)) for ns in plans.values() for n in ns}
        start = threading.Barrier(2, timeout=30)

        def run(m: Mesh) -> list[str]:
            start.wait()
            problems = []
            for _ in range(3):
                for n in plans[m]:
                    sql = tpch.query(n)
                    diff = compare_tables(m.sql(sql), expected[n], ordered=query_is_ordered(sql))
                    if diff:
                        problems.append(f"q{n:02d}: {diff}")
                    if not (m.last_run and m.last_run.distributed):
                        problems.append(f"q{n:02d} did not run on the workers")
            return problems

        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(run, m) for m in plans]
            problems = [p for f in futures for p in f.result(timeout=150)]
    assert problems == []


def test_workers_release_query_directories(mesh: Mesh, work_root: Path) -> None:
    ids = []
    for sql in (tpch.query(9), GROUP_BY_LINEITEM, "SELECT * FROM nation WHERE false"):
        mesh.sql(sql)
        assert mesh.last_run is not None
        ids.append(mesh.last_run.query_id)
    # a stream abandoned half-way releases too
    stream = mesh.sql_batches("SELECT l_orderkey, count(*) FROM lineitem GROUP BY l_orderkey")
    assert isinstance(stream, Generator)  # closing it is how a caller abandons a stream
    next(stream)
    assert query_dirs(work_root), "a running query holds files on the workers"
    stream.close()
    wait_until(lambda: not query_dirs(work_root), 10, "the workers to release every query directory")
    assert len(list(work_root.glob("flow-worker-*"))) == 3


def test_closing_the_mesh_releases_an_unfinished_stream(
    workers: list[LocalWorker], certs_dir: Path, tpch_data: Path, work_root: Path
) -> None:
    other = Mesh([w.address for w in workers], TLSConfig.from_dir(certs_dir), task_timeout=TASK_TIMEOUT)
    tpch.register_all(other, tpch_data)
    stream = other.sql_batches("SELECT l_orderkey, count(*) FROM lineitem GROUP BY l_orderkey")
    assert isinstance(stream, Generator)
    next(stream)
    held = {p.name for p in query_dirs(work_root)}
    assert held
    problems = []
    try:
        other.close()
        try:
            stream.close()
        except Exception as exc:  # what a garbage-collected generator would print as "Exception ignored"
            problems.append(f"closing the stream after the mesh raised {type(exc).__name__}: {exc}")
        if not poll(lambda: not (held & {p.name for p in query_dirs(work_root)}), 5):
            problems.append(f"query directories left on the workers: {sorted(held)}")
    finally:
        pool = ClientPool(TLSConfig.from_dir(certs_dir))  # clean up for the other tests
        try:
            for w in workers:
                for qid in held:
                    pool.action(w.address, "release", qid.encode(), 10.0)
        finally:
            pool.close()
    assert problems == []


def test_a_dead_peer_is_routed_around_and_a_dead_mesh_fails_fast(
    certs_dir: Path, tpch_data: Path, tmp_path: Path
) -> None:
    with spawned_workers(2, certs_dir, tmp_path) as pair:
        tls = TLSConfig.from_dir(certs_dir)
        with Mesh([w.address for w in pair], tls, min_task_bytes=1, task_timeout=TASK_TIMEOUT) as m:
            m.register_parquet("lineitem", tpch_data / "lineitem.parquet")
            expected = m.sql(GROUP_BY_LINEITEM)
            assert expected.num_rows == 4
            dead, alive = pair[1], pair[0]
            dead.process.kill()
            dead.process.wait(10)
            # the query still answers, on the live peer only
            got = m.sql(GROUP_BY_LINEITEM)
            assert compare_tables(got, expected, ordered=False) is None
            assert m.last_run is not None and m.last_run.peers_used == {alive.address}
            assert dead.address not in m.peers_alive
            wait_until(lambda: not query_dirs(tmp_path), 10, "the live peer to release the query")
            # with no peer left, a clear error within seconds
            alive.process.kill()
            alive.process.wait(10)
            started = time.monotonic()
            with pytest.raises(PeerUnreachableError):
                m.sql(GROUP_BY_LINEITEM)
            assert time.monotonic() - started < 15


def test_explain_names_every_stage(mesh: Mesh, tpch_data: Path) -> None:
    sql = tpch.query(9)
    text = mesh.explain(sql)
    ctx = planning_context(mesh.partitions)
    tpch.register_all(ctx, tpch_data)
    graph = plan_query(ctx, sql).graph
    assert text.splitlines()[0] == f"Distributed plan: {len(graph.stages)} stages over 3 peers"
    for stage in graph.stages:
        assert f"Stage {stage.id} ({stage.kind}" in text
    assert "shuffle" in text and "gather" in text and "root" in text
    assert "HashJoinExec" in text
    with pytest.raises(QueryError):
        mesh.explain("SELECT * FROM no_such_table")


def test_local_insecure_mesh(tpch_data: Path, tmp_path: Path, reference: Callable[[str], pa.Table]) -> None:
    submit_dirs = set(Path(tempfile.gettempdir()).glob("flow-submit-*"))
    with local_mesh(workers=2, insecure=True, work_dir=tmp_path, min_task_bytes=1) as m:
        assert m.tls is None
        procs = [w.process for w in m.workers]
        (base,) = list(tmp_path.glob("flow-local-*"))
        assert not (base / "certs").exists()
        m.register_parquet("lineitem", tpch_data / "lineitem.parquet")
        _check(m.sql(GROUP_BY_LINEITEM), reference(GROUP_BY_LINEITEM), GROUP_BY_LINEITEM)
        assert m.last_run is not None and len(m.last_run.peers_used) == 2
    assert all(p.poll() is not None for p in procs), "Mesh.close left a worker running"
    assert list(tmp_path.iterdir()) == [], "Mesh.close left files behind"
    assert set(Path(tempfile.gettempdir()).glob("flow-submit-*")) <= submit_dirs


def test_mesh_needs_peers_and_tls() -> None:
    with pytest.raises(ConfigError):
        Mesh([], None, insecure=True)
    with pytest.raises(ConfigError):
        Mesh(["127.0.0.1:1"])
    assert issubclass(ConfigError, FlowError)
