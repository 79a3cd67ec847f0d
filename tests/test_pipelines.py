"""Pipelines end to end: ``flow run`` on the examples, every strategy on DuckDB and SQLite with the
SQL in-process and on a real 3-peer mTLS mesh (same target contents), failed runs that change
nothing, and a run killed before its commit that leaves no duplicates and no gaps.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datafusion
import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from support import run_on_terminal, spawned_workers, terminal_env

from ematix_flow.errors import ConfigError, FlowError, LoadError, QueryError
from ematix_flow.pipelines import runner
from ematix_flow.pipelines.config import Pipeline

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FLOW = [sys.executable, "-m", "ematix_flow.cli.main"]
SCD2_META = ("valid_from", "valid_to", "is_current", "row_hash")


# ------------------------------------------------------------------------------------ helpers
def flow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def read_target(kind: str, path: Path, table: str, dsn: str = "") -> pa.Table:
    """A target table's contents, as Arrow."""
    if kind == "postgres":
        with psycopg.connect(dsn) as con:
            cur = con.execute(f"SELECT * FROM {table}")
            names = [d.name for d in cur.description or ()]
            found = cur.fetchall()
        return pa.table({n: [r[i] for r in found] for i, n in enumerate(names)})
    if kind == "duckdb":
        with duckdb.connect(str(path), read_only=True) as con:
            return con.execute(f"SELECT * FROM {table}").arrow().read_all()
    if kind == "sqlite":
        with sqlite3.connect(path) as con:
            cur = con.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
    if kind == "delta":
        from deltalake import DeltaTable, QueryBuilder

        reader = QueryBuilder().register("t", DeltaTable(str(path))).execute("SELECT * FROM t")
        return pa.RecordBatchReader.from_stream(reader).read_all()
    return pq.read_table(path)


def rows(table: pa.Table, drop: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Sorted rows, with ``drop`` columns removed and values made comparable across databases."""
    keep = [c for c in table.column_names if c not in drop]
    out = []
    for row in table.select(keep).to_pylist():
        out.append(tuple(_plain(row[c]) for c in keep))
    return sorted(out, key=repr)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "as_tuple"):  # Decimal
        return round(float(value), 6)
    if isinstance(value, bool):
        return int(value)
    return value


def datafusion_answer(sql: str, tables: dict[str, Path]) -> pa.Table:
    """What single-process DataFusion answers for ``sql`` over CSV files."""
    ctx = datafusion.SessionContext()
    for name, path in tables.items():
        ctx.register_csv(name, str(path))
    return ctx.sql(sql).to_arrow_table()


def history(kind: str, path: Path) -> list[dict[str, Any]]:
    table = "ematix_flow.run_history" if kind == "duckdb" else "ematix_flow_run_history"
    if kind == "sqlite":
        return read_target("sqlite", path, table).to_pylist()
    return read_target(kind, path, table).to_pylist()


# ------------------------------------------------------------------------------------ examples
@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of examples/ without anything a previous run wrote."""
    dest = tmp_path / "examples"
    shutil.copytree(
        EXAMPLES, dest, ignore=shutil.ignore_patterns("*.duckdb*", "*.sqlite*", "out", "__pycache__")
    )
    return dest


EXAMPLE_CASES = {
    "append_orders.toml": ("duckdb", "warehouse.duckdb", "raw.orders"),
    "truncate_region_totals.toml": ("parquet", "out/region_totals", ""),
    "merge_daily_revenue.toml": ("duckdb", "warehouse.duckdb", "analytics.daily_revenue"),
    "scd2_customers.toml": ("sqlite", "warehouse.sqlite", "dim_customer"),
    "spark_dialect.toml": ("duckdb", "warehouse.duckdb", "analytics.big_spenders"),
    "delta_daily_revenue.toml": ("delta", "out/daily_revenue_delta", ""),
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_CASES))
def test_each_example_runs_as_written_and_reruns_idempotently(examples: Path, name: str) -> None:
    kind, path, table = EXAMPLE_CASES[name]
    pipeline = Pipeline.from_toml(examples / name)
    sql = runner.prepare(pipeline).sql
    csvs = {n: pipeline.resolve(s.path or "") for n, s in pipeline.sources.items()}
    expected = rows(datafusion_answer(sql, csvs))
    assert expected, "the example's SQL selects nothing"

    first = flow("run", name, cwd=examples)
    assert first.returncode == 0, first.stderr
    assert f"{pipeline.name}: {pipeline.target.mode} of {len(expected)} rows" in first.stderr
    drop = SCD2_META if pipeline.target.mode == "scd2" else ()
    assert rows(read_target(kind, examples / path, table), drop) == expected

    again = flow("run", "--quiet", name, cwd=examples)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert rows(read_target(kind, examples / path, table), drop) == expected  # no duplicates, no versions


def test_the_python_module_example_runs(examples: Path) -> None:
    result = flow("run", "--module", "my_pipelines", "customer_tiers", cwd=examples)
    assert result.returncode == 0, result.stderr
    expected = datafusion_answer(
        "SELECT tier, count(*) AS customers FROM customers GROUP BY tier",
        {"customers": examples / "data" / "customers.csv"},
    )
    assert rows(read_target("sqlite", examples / "warehouse.sqlite", "customer_tiers")) == rows(expected)
    unknown = flow("run", "--module", "my_pipelines", "nope", cwd=examples)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "error: --module my_pipelines: no pipeline 'nope' (it declares: customer_tiers)"
    )


def test_the_lake_tables_example_runs(examples: Path) -> None:
    """examples/lake_tables.py: a Delta and an Iceberg table, each read at two versions."""
    result = subprocess.run(
        [sys.executable, "lake_tables.py"], cwd=examples, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("-- ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [
        "Delta, latest version",
        "Delta, version 0",
        "Iceberg, current snapshot",
        "Iceberg, first snapshot",
    ]
    latest = [ln for ln in blocks[0].splitlines()[1:] if ln.startswith("   {")]
    assert latest == [ln for ln in blocks[2].splitlines()[1:] if ln.startswith("   {")]
    assert "2 of 8 files" in result.stdout  # a filter on the partition column skips files
    total = sum(int(ln.split("'orders': ")[1].split(",")[0]) for ln in latest)
    assert total == len((examples / "data" / "orders.csv").read_text().splitlines()) - 1


def test_validate_and_dry_run_write_nothing(examples: Path) -> None:
    ok = flow("validate", "merge_daily_revenue.toml", cwd=examples)
    assert ok.returncode == 0, ok.stderr
    assert "ok: pipeline daily_revenue" in ok.stdout and "mode merge" in ok.stdout
    dry = flow("run", "--dry-run", "merge_daily_revenue.toml", cwd=examples)
    assert dry.returncode == 0, dry.stderr
    for part in ("engine: distributed on 3 local peers", "load: merge on keys day, region, tier", "plan:"):
        assert part in dry.stdout, dry.stdout
    assert "Stage" in dry.stdout  # the mesh's stage graph
    assert not (examples / "warehouse.duckdb").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('mode = "merge"', 'mode = "merge"\nkyes = 1'), "[target] kyes: unknown key (did you mean 'keys'?"),
        (('keys = ["day", "region", "tier"]', ""), '[target] keys: mode = "merge" needs keys'),
        (("local = 3", ""), 'engine = "distributed" needs peers'),
        (('path = "data/orders.csv"', 'path = "data/missing.csv"'), "data/missing.csv"),
        (("GROUP BY o.order_day", "GROUP BY o.no_such_column"), "no_such_column"),
    ],
)
def test_a_bad_pipeline_is_one_line_exit_2_and_writes_nothing(
    examples: Path, edit: tuple[str, str], message: str
) -> None:
    file = examples / "merge_daily_revenue.toml"
    text = file.read_text()
    assert edit[0] in text
    file.write_text(text.replace(edit[0], edit[1], 1))
    result = flow("run", file.name, cwd=examples)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.stderr, result.stderr  # one line, last
    assert lines[-1].startswith(f"error: {file.name}"), lines[-1]
    assert message in lines[-1], lines[-1]
    assert not (examples / "warehouse.duckdb").exists() or _empty_duckdb(examples / "warehouse.duckdb")


def _empty_duckdb(path: Path) -> bool:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return all(t[0] == "run_history" for t in tables)


def test_a_spark_construct_that_cannot_translate_is_named(examples: Path) -> None:
    file = examples / "spark_dialect.toml"
    file.write_text(
        file.read_text().replace(
            "SELECT `customer_id`", "SELECT TRANSFORM(`customer_id`) USING 'cat' AS (x),"
        )
    )
    result = flow("validate", file.name, cwd=examples)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {file.name}: [transform] cannot translate"), result.stderr
    assert "TRANSFORM ... USING" in result.stderr


# ------------------------------------------------------------------------------------ engines
@pytest.fixture(scope="module")
def mesh_peers(certs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three real flow-worker processes over mTLS, for engine = "distributed" with peers."""
    with spawned_workers(3, certs_dir, tmp_path_factory.mktemp("pipeline-mesh")) as workers:
        yield [w.address for w in workers]


HEADER = "id,name,city,score,updated\n"
VERSIONS = {
    1: HEADER
    + "1,ann,oslo,10,2026-01-01 10:00:00\n"
    + "2,bob,rome,20,2026-01-01 11:00:00\n"
    + "3,cy,kyiv,30,2026-01-02 09:00:00\n"
    + "4,dee,lima,40,2026-01-02 10:00:00\n",
    # 1 unchanged, 2 changed city, 3 changed score, 4 unchanged, 5 new
    2: HEADER
    + "1,ann,oslo,10,2026-01-01 10:00:00\n"
    + "2,bob,bern,20,2026-01-03 08:00:00\n"
    + "3,cy,kyiv,31,2026-01-03 09:00:00\n"
    + "4,dee,lima,40,2026-01-02 10:00:00\n"
    + "5,eve,nice,50,2026-01-03 10:00:00\n",
}


def declare(
    base: Path, kind: str, mode: str, engine: dict[str, Any], watermark: bool = False, dsn: str = ""
) -> Pipeline:
    target: dict[str, Any] = {
        "kind": kind,
        "table": "people" if kind == "sqlite" else f"dw.people_{base.name}",
        "mode": mode,
    }
    if kind == "postgres":
        target["dsn"] = dsn
    else:
        target["path"] = "warehouse." + kind
    if mode in ("merge", "scd2"):
        target["keys"] = ["id"]
    transform: dict[str, Any] = {"sql": "SELECT id, name, city, score, updated FROM src", **engine}
    if watermark:
        transform["watermark_column"] = "updated"
    data = {
        "pipeline_name": f"people_{mode}",
        "sources": {"src": {"kind": "parquet", "path": "src.parquet"}},
        "transform": transform,
        "target": target,
    }
    return Pipeline.from_dict(data, origin=str(base / "p.toml"), base_dir=base)


def write_version(base: Path, version: int) -> None:
    table = pacsv.read_csv(pa.BufferReader(VERSIONS[version].encode()))
    pq.write_table(table, base / "src.parquet")


def engines(peers: list[str], certs: Path) -> dict[str, dict[str, Any]]:
    return {
        "datafusion": {},
        "distributed": {
            "engine": "distributed",
            "peers": peers,
            "tls": {"dir": str(certs)},
            "local_below_bytes": 0,
        },
    }


@pytest.mark.parametrize("kind", ["duckdb", "sqlite", "postgres"])
@pytest.mark.parametrize("mode", ["append", "truncate", "merge", "scd2"])
def test_every_strategy_gives_the_same_target_in_process_and_on_the_mesh(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mesh_peers: list[str],
    certs_dir: Path,
    kind: str,
    mode: str,
) -> None:
    dsn = request.getfixturevalue("postgres_db") if kind == "postgres" else ""
    contents = {}
    for name, engine in engines(mesh_peers, certs_dir).items():
        base = tmp_path / name
        base.mkdir()
        for version in (1, 2):
            write_version(base, version)
            said: list[str] = []
            record = runner.run(declare(base, kind, mode, engine, dsn=dsn), echo=said.append)
            assert record.status == "success" and record.rows_read == VERSIONS[version].count("\n") - 1
            where = "tasks on " if engine else "in this process"  # tiny input: 1 task suffices
            assert any(where in line for line in said), said
        p = declare(base, kind, mode, engine, dsn=dsn)
        contents[name] = read_target(kind, base / f"warehouse.{kind}", p.target.table or "", dsn)
    got, want = contents["distributed"], contents["datafusion"]
    drop = ("valid_from", "valid_to") if mode == "scd2" else ()
    assert rows(got, drop) == rows(want, drop)
    assert got.num_rows == {"append": 9, "truncate": 5, "merge": 5, "scd2": 7}[mode]
    if mode == "scd2":
        current = [r for r in got.to_pylist() if r["is_current"]]
        closed = [r for r in got.to_pylist() if not r["is_current"]]
        assert sorted(r["id"] for r in current) == [1, 2, 3, 4, 5]
        assert sorted((r["id"], r["city"], r["score"]) for r in closed) == [(2, "rome", 20), (3, "kyiv", 30)]
        assert all(r["valid_to"] is not None for r in closed)
        assert all(r["valid_to"] is None for r in current)


def test_a_failed_run_leaves_target_and_watermark_as_they_were(tmp_path: Path) -> None:
    write_version(tmp_path, 1)
    good = declare(tmp_path, "duckdb", "merge", {}, watermark=True)
    runner.run(good)
    before = read_target("duckdb", tmp_path / "warehouse.duckdb", good.target.table or "")

    # the SQL fails while it runs
    bad_sql = declare(tmp_path, "duckdb", "merge", {}, watermark=True)
    bad_sql.transform.sql = "SELECT id, name, city, CAST(name AS INT) AS score, updated FROM src"
    write_version(tmp_path, 2)
    with pytest.raises(QueryError, match=r"\[transform\] the SQL failed"):
        runner.run(bad_sql)
    # the load fails: a duplicate merge key
    dup = declare(tmp_path, "duckdb", "merge", {}, watermark=True)
    dup.transform.sql = (
        "SELECT id, name, city, score, updated FROM src "
        "UNION ALL SELECT 5, 'x', 'y', 1, updated FROM src WHERE id = 5"
    )
    with pytest.raises(LoadError):
        runner.run(dup)

    after = read_target("duckdb", tmp_path / "warehouse.duckdb", good.target.table or "")
    assert rows(after) == rows(before)
    runs = sorted(history("duckdb", tmp_path / "warehouse.duckdb"), key=lambda r: r["started"])
    assert [r["status"] for r in runs] == ["success", "failed", "failed"]
    assert runs[1]["error"] and runs[2]["error"]
    assert runs[1]["watermark"] == runs[0]["watermark"]
    assert dt.datetime.fromisoformat(runs[0]["watermark"]) == dt.datetime(2026, 1, 2, 10)
    # and the next good run picks up exactly the rows after the committed watermark
    record = runner.run(declare(tmp_path, "duckdb", "merge", {}, watermark=True))
    assert record.rows_read == 3 and record.watermark
    assert dt.datetime.fromisoformat(record.watermark) == dt.datetime(2026, 1, 3, 10)


KILLER = textwrap.dedent(
    """
    import os, sqlite3, sys
    real_connect = sqlite3.connect

    class Cursor(sqlite3.Cursor):
        def execute(self, sql, *args):
            if sql.strip().upper().startswith(("COMMIT", "END")):
                os._exit(9)
            return super().execute(sql, *args)

    class Connection(sqlite3.Connection):
        def cursor(self, factory=Cursor):
            return super().cursor(factory)
        def execute(self, sql, *args):
            return self.cursor().execute(sql, *args)
        def commit(self):
            if self.in_transaction:
                os._exit(9)

    sqlite3.connect = lambda *a, **k: real_connect(*a, **{**k, "factory": Connection})
    from ematix_flow.cli.main import main
    sys.argv = ["flow", "run", sys.argv[1]]
    main()
    """
)


def test_a_run_killed_before_its_commit_is_rerun_without_duplicates_or_gaps(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        textwrap.dedent(
            """
            pipeline_name = "people_append"
            [sources.src]
            kind = "parquet"
            path = "src.parquet"
            [transform]
            sql = "SELECT id, name, city, score, updated FROM src"
            watermark_column = "updated"
            [target]
            kind = "sqlite"
            path = "warehouse.sqlite"
            table = "people"
            mode = "append"
            """
        )
    )
    write_version(tmp_path, 1)
    ok = flow("run", "p.toml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    write_version(tmp_path, 2)  # 3 rows above the watermark
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "p.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == 9, (killed.returncode, killed.stderr)
    people = read_target("sqlite", tmp_path / "warehouse.sqlite", "people")
    assert people.num_rows == 4  # the killed run's rows are not there
    assert [r["status"] for r in history("sqlite", tmp_path / "warehouse.sqlite")] == ["success"]

    rerun = flow("run", "p.toml", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    people = read_target("sqlite", tmp_path / "warehouse.sqlite", "people")
    ids = sorted(people.column("id").to_pylist())
    assert ids == [1, 2, 2, 3, 3, 4, 5]  # the 3 newer rows exactly once (2 and 3 are new versions)
    assert flow("run", "p.toml", cwd=tmp_path).returncode == 0
    assert read_target("sqlite", tmp_path / "warehouse.sqlite", "people").num_rows == 7


def test_run_errors_keep_the_cli_contract(examples: Path) -> None:
    result = flow("run", "no_such.toml", cwd=examples)
    assert (result.returncode, result.stderr) == (
        2,
        "error: no_such.toml: no such pipeline file (check the path)\n",
    )
    result = flow("run", cwd=examples)
    assert result.returncode == 2 and "no pipeline given" in result.stderr
    assert issubclass(LoadError, FlowError)
    env_help = flow("run", "--help", cwd=examples)
    assert (
        "--dry-run" in env_help.stdout and "flow run --module my_pipelines daily_revenue" in env_help.stdout
    )
    assert os.path.isdir(examples)


def test_flow_run_shows_the_mesh_stages_live_on_a_terminal(examples: Path) -> None:
    args = [*FLOW, "run", "merge_daily_revenue.toml"]
    code, _, shown = run_on_terminal(args, terminal_env(examples), cwd=examples)
    assert code == 0, shown[-2000:]
    assert re.search(r"stage +\d+ (shuffle|gather|root) .*\d+/\d+ tasks", shown), shown[-2000:]
    assert "daily_revenue: merge of 42 rows" in shown
    quiet = run_on_terminal([*args[:-1], "--quiet", args[-1]], terminal_env(examples), cwd=examples)
    assert quiet[0] == 0 and quiet[2] == "", quiet[2][-500:]


@pytest.mark.parametrize(
    "kind",
    [
        pa.timestamp("us", tz="Europe/Paris"),
        pa.timestamp("ns", tz="America/New_York"),
        pa.timestamp("ns"),
        pa.timestamp("s"),
        pa.date32(),
        pa.int64(),
        pa.decimal128(12, 3),
        pa.string(),
    ],
    ids=str,
)
def test_a_watermark_loads_each_row_once_whatever_its_type(tmp_path: Path, kind: pa.DataType) -> None:
    def marks(count: int) -> pa.Array:  # increasing in every type; nanoseconds apart where they can be
        if pa.types.is_timestamp(kind):
            start = 1_772_366_400_123_456_000  # 2026-03-01T12:00:00.123456 UTC, in ns
            ticks = [start + i * 3_600_000_000_000 + i for i in range(count)]
            per_tick = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[kind.unit]
            ticks = [t // per_tick for t in ticks]
            utc = pa.array(ticks, pa.int64()).cast(pa.timestamp(kind.unit, tz="UTC"))
            return utc.cast(kind)
        if pa.types.is_date(kind):
            return pa.array([dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(count)], kind)
        if pa.types.is_decimal(kind):
            return pa.array([f"{i}.125" for i in range(count)]).cast(kind)
        if pa.types.is_integer(kind):
            return pa.array(range(count), kind)
        return pa.array([f"k{i:04d}" for i in range(count)], kind)

    def write(count: int) -> None:
        table = pa.table({"id": pa.array(range(count), pa.int64()), "mark": marks(count)})
        pq.write_table(table, tmp_path / "src.parquet")

    data = {
        "pipeline_name": "marks",
        "sources": {"src": {"kind": "parquet", "path": "src.parquet"}},
        "transform": {
            "sql": "SELECT id, mark FROM src -- a comment on the last line",
            "watermark_column": "mark",
        },
        "target": {"kind": "parquet", "path": "marks", "mode": "append"},  # keeps nanoseconds
    }
    for count, new in ((3, 3), (3, 0), (5, 2), (6, 1)):
        write(count)
        record = runner.run(Pipeline.from_dict(data, origin="p.toml", base_dir=tmp_path))
        assert record.rows_read == new, (count, record.watermark)
    ids = read_target("parquet", tmp_path / "marks", "").column("id").to_pylist()
    assert sorted(ids) == list(range(6))  # every row once: no duplicates, no gaps


def test_an_unusable_watermark_column_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "flag": [True, False]}), tmp_path / "src.parquet")
    data = {
        "pipeline_name": "flags",
        "sources": {"src": {"kind": "parquet", "path": "src.parquet"}},
        "transform": {"sql": "SELECT id, flag FROM src", "watermark_column": "flag"},
        "target": {"kind": "duckdb", "path": "w.duckdb", "table": "flags", "mode": "append"},
    }
    with pytest.raises(ConfigError, match=r"p.toml: \[transform\] watermark_column 'flag' has type bool"):
        runner.run(Pipeline.from_dict(data, origin="p.toml", base_dir=tmp_path))
    assert _empty_duckdb(tmp_path / "w.duckdb")
