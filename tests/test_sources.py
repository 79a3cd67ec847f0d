"""Sources: files by path, databases read into Arrow, into a SessionContext and onto a real mesh."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path

import datafusion
import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import local_mesh

from ematix_flow.errors import ConfigError, QueryError
from ematix_flow.pipelines.sources import SourceSpec, describe_source, register_source


def sql(ctx: datafusion.SessionContext, query: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = ctx.sql(query).to_arrow_table().to_pylist()
    return rows


def register(tmp_path: Path, name: str, spec: SourceSpec) -> datafusion.SessionContext:
    ctx = datafusion.SessionContext()
    register_source(ctx, name, spec, tmp_path, tmp_path / "staging")
    return ctx


# ------------------------------------------------------------------------------------ files
def test_parquet_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "data" / "orders").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2]}), tmp_path / "data" / "orders" / "a.parquet")
    pq.write_table(pa.table({"id": [3]}), tmp_path / "data" / "orders" / "b.parquet")
    pq.write_table(pa.table({"id": [9]}), tmp_path / "one.pq")
    ctx = datafusion.SessionContext()
    info = register_source(ctx, "orders", SourceSpec("parquet", path="data/orders"), tmp_path, tmp_path)
    register_source(ctx, "one", SourceSpec("parquet", path=str(tmp_path / "one.pq")), Path("/"), tmp_path)
    assert info.location == str(tmp_path / "data" / "orders") and info.rows is None and info.staged is None
    assert sql(ctx, "SELECT sum(id) AS s FROM orders") == [{"s": 6}]
    assert sql(ctx, "SELECT id FROM one") == [{"id": 9}]


def test_csv_options_and_json_files_of_any_suffix(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("1;ann\n2;bob\n")
    (tmp_path / "events.jsonl").write_text('{"k": "a", "v": 1}\n{"k": "b", "v": 2}\n')
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "x.json").write_text('{"v": 5}\n')
    ctx = datafusion.SessionContext()
    csv = SourceSpec("csv", path="plain.txt", has_header=False, delimiter=";")
    register_source(ctx, "people", csv, tmp_path, tmp_path)
    register_source(ctx, "events", SourceSpec("json", path="events.jsonl"), tmp_path, tmp_path)
    register_source(ctx, "logs", SourceSpec("json", path="logs"), tmp_path, tmp_path)
    assert sql(ctx, "SELECT column_2 AS name FROM people ORDER BY column_1") == [
        {"name": "ann"},
        {"name": "bob"},
    ]
    assert sql(ctx, "SELECT sum(v) AS s FROM events") == [{"s": 3}]
    assert sql(ctx, "SELECT v FROM logs") == [{"v": 5}]
    register_source(ctx, "events", SourceSpec("json", path="logs"), tmp_path, tmp_path)  # replaced
    assert sql(ctx, "SELECT v FROM events") == [{"v": 5}]


def test_a_missing_path_or_an_empty_folder_names_the_source_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"source orders: data/orders.csv: no such file .*fix path"):
        register(tmp_path, "orders", SourceSpec("csv", path="data/orders.csv"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"source t: folder .*empty has no \*.parquet files"):
        register(tmp_path, "t", SourceSpec("parquet", path="empty"))
    (tmp_path / "nested" / "year=2026").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1]}), tmp_path / "nested" / "year=2026" / "a.parquet")
    with pytest.raises(ConfigError, match=r"has no \*.parquet files \(subfolders are not read\)"):
        register(tmp_path, "t", SourceSpec("parquet", path="nested"))
    with pytest.raises(ConfigError, match="source t: give exactly one of table"):
        register(tmp_path, "t", SourceSpec("sqlite", path="x.sqlite", table="a", query="SELECT 1"))
    with pytest.raises(ConfigError, match="source t: postgres needs dsn"):
        register(tmp_path, "t", SourceSpec("postgres", table="a"))


# ------------------------------------------------------------------------------------ duckdb
@pytest.fixture
def duckdb_file(tmp_path: Path) -> Path:
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA raw")
        con.execute(
            "CREATE TABLE raw.orders (id INTEGER, day DATE, amount DECIMAL(10, 2), note VARCHAR, "
            "placed TIMESTAMP)"
        )
        con.execute(
            "INSERT INTO raw.orders VALUES (1, '2026-01-01', 10.50, 'a', '2026-01-01 10:00:00'), "
            "(2, '2026-01-02', 2.25, NULL, '2026-01-02 11:30:00')"
        )
    return path


def test_a_duckdb_table_or_query_keeps_its_types(tmp_path: Path, duckdb_file: Path) -> None:
    ctx = datafusion.SessionContext()
    info = register_source(
        ctx, "o", SourceSpec("duckdb", path="w.duckdb", table="raw.orders"), tmp_path, tmp_path
    )
    assert info.rows == 2 and info.location == str(duckdb_file)
    schema = ctx.table("o").schema()
    assert [str(f.type) for f in schema] == [
        "int32",
        "date32[day]",
        "decimal128(10, 2)",
        "string",
        "timestamp[us]",
    ]
    assert sql(ctx, "SELECT sum(amount) AS s FROM o") == [{"s": Decimal("12.75")}]
    query = SourceSpec(
        "duckdb", path="w.duckdb", query="SELECT id * 10 AS x FROM raw.orders WHERE note IS NULL"
    )
    register_source(ctx, "q", query, tmp_path, tmp_path)
    assert sql(ctx, "SELECT x FROM q") == [{"x": 20}]


def test_duckdb_errors_name_the_source(tmp_path: Path, duckdb_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"source o: duckdb has no table raw\.nope: fix table"):
        register(tmp_path, "o", SourceSpec("duckdb", path="w.duckdb", table="raw.nope"))
    with pytest.raises(QueryError, match=r"source o: duckdb: the query failed: .*fix query"):
        register(tmp_path, "o", SourceSpec("duckdb", path="w.duckdb", query="SELEC 1"))
    with pytest.raises(ConfigError, match=r"source o: missing\.duckdb: no such file"):
        register(tmp_path, "o", SourceSpec("duckdb", path="missing.duckdb", table="t"))


# ------------------------------------------------------------------------------------ sqlite
@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE people (id INTEGER, born DATE, balance DECIMAL(10,2), name VARCHAR(20), "
            "seen DATETIME, active BOOLEAN, score REAL, anything, photo BLOB, odd DATE)"
        )
        con.execute(
            "INSERT INTO people VALUES (1, '1990-05-01', 10.5, 'ann', '2026-01-01 10:00:00', 1, 0.5, "
            "'x', x'00ff', 'not a date'), (2, NULL, 0.1, 'bob', '2026-01-02T11:30:00.250', 0, NULL, 7, "
            "NULL, NULL)"
        )
    con.close()
    return path


def test_sqlite_declared_types_become_arrow_types(tmp_path: Path, sqlite_file: Path) -> None:
    ctx = register(tmp_path, "people", SourceSpec("sqlite", path="s.sqlite", table="people"))
    types = {f.name: str(f.type) for f in ctx.table("people").schema()}
    assert types == {
        "id": "int64",
        "born": "date32[day]",
        "balance": "decimal128(10, 2)",
        "name": "string",
        "seen": "timestamp[us]",
        "active": "bool",
        "score": "double",
        "anything": "string",  # 'x' and 7: no declared type, mixed values: text
        "photo": "binary",
        "odd": "string",  # declared DATE, holds text that is not a date: read as it is
    }
    got = sql(ctx, "SELECT * FROM people ORDER BY id")
    assert got[0]["born"] == dt.date(1990, 5, 1) and got[1]["balance"] == Decimal("0.10")
    assert got[1]["seen"] == dt.datetime(2026, 1, 2, 11, 30, 0, 250000)
    assert (got[0]["active"], got[1]["active"], got[0]["photo"]) == (True, False, b"\x00\xff")


def test_a_sqlite_query_keeps_the_types_of_plain_columns(tmp_path: Path, sqlite_file: Path) -> None:
    spec = SourceSpec("sqlite", path="s.sqlite", query="SELECT id, born, id * 2.5 AS x FROM people")
    ctx = register(tmp_path, "q", spec)
    assert [str(f.type) for f in ctx.table("q").schema()] == ["int64", "date32[day]", "double"]
    with pytest.raises(ConfigError, match="source q: sqlite has no table nope: fix table"):
        register(tmp_path, "q", SourceSpec("sqlite", path="s.sqlite", table="nope"))
    with pytest.raises(QueryError, match="source q: sqlite: the query failed"):
        register(tmp_path, "q", SourceSpec("sqlite", path="s.sqlite", query="SELECT nope FROM people"))


# ------------------------------------------------------------------------------------ postgres
def test_a_postgres_table_and_query(tmp_path: Path, postgres_db: str) -> None:
    with psycopg.connect(postgres_db, autocommit=True) as con:
        con.execute("CREATE SCHEMA shop")
        con.execute(
            "CREATE TABLE shop.orders (id bigint, qty smallint, price numeric(8,3), note text, "
            "day date, at timestamptz, meta jsonb, ok boolean, big numeric)"
        )
        con.execute(
            "INSERT INTO shop.orders VALUES (1, 2, 3.125, 'a', '2026-01-01', '2026-01-01 10:00+00', "
            """'{"b": 1}', true, 12345678901234567890123456789012345678901)"""
        )
    ctx = datafusion.SessionContext()
    spec = SourceSpec("postgres", dsn=postgres_db, table="shop.orders")
    info = register_source(ctx, "o", spec, tmp_path, tmp_path)
    assert info.rows == 1 and "password" not in info.location and info.location.startswith("127.0.0.1:")
    types = [str(f.type) for f in ctx.table("o").schema()]
    assert types == [
        "int64",
        "int16",
        "decimal128(8, 3)",
        "string",
        "date32[day]",
        "timestamp[us, tz=UTC]",
        "string",
        "bool",
        "decimal256(41, 0)",  # numeric without precision: as wide as its values
    ]
    row = sql(ctx, "SELECT * FROM o")[0]
    assert row["price"] == Decimal("3.125") and row["meta"] == '{"b": 1}'
    assert row["at"] == dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC)
    query = SourceSpec("postgres", dsn=postgres_db, query="SELECT id + 1 AS n, '%' AS pct FROM shop.orders")
    register_source(ctx, "q", query, tmp_path, tmp_path)
    assert sql(ctx, "SELECT n, pct FROM q") == [{"n": 2, "pct": "%"}]
    with pytest.raises(ConfigError, match=r"source o: postgres has no table shop\.nope: fix table"):
        register(tmp_path, "o", SourceSpec("postgres", dsn=postgres_db, table="shop.nope"))
    bad = postgres_db.replace("dbname=", "dbname=no_such_")
    with pytest.raises(
        ConfigError, match=r"source o: cannot connect to postgres 127.0.0.1:\d+/no_such_.*check dsn"
    ):
        register(tmp_path, "o", SourceSpec("postgres", dsn=bad, table="t"))


# ------------------------------------------------------------------------------------ describe
def test_describe_names_the_source_without_secrets(tmp_path: Path) -> None:
    base = Path("/data")
    assert describe_source(SourceSpec("csv", path="o.csv", delimiter=";"), base) == (
        "csv /data/o.csv (header, delimiter ';')"
    )
    assert describe_source(SourceSpec("parquet", path="/abs/x"), base) == "parquet /abs/x"
    assert describe_source(SourceSpec("duckdb", path="w.duckdb", table="raw.o"), base) == (
        "duckdb /data/w.duckdb table raw.o"
    )
    pg = SourceSpec("postgres", dsn="postgresql://u:secret@db.example:5433/shop", query="SELECT  *\n FROM t")
    assert describe_source(pg, base) == "postgres db.example:5433/shop query SELECT * FROM t"


# ------------------------------------------------------------------------------------ mesh
@pytest.mark.integration
def test_on_a_mesh_files_register_by_path_and_databases_are_staged(
    tmp_path: Path, duckdb_file: Path, sqlite_file: Path
) -> None:
    (tmp_path / "names.csv").write_text("id,label\n1,one\n2,two\n")
    staging = tmp_path / "staging"
    with local_mesh(workers=2, insecure=True, local_below_bytes=0) as mesh:
        files = register_source(mesh, "names", SourceSpec("csv", path="names.csv"), tmp_path, staging)
        orders = register_source(
            mesh, "orders", SourceSpec("duckdb", path="w.duckdb", table="raw.orders"), tmp_path, staging
        )
        people = register_source(
            mesh, "people", SourceSpec("sqlite", path="s.sqlite", table="people"), tmp_path, staging
        )
        assert files.staged is None and orders.staged == staging.resolve() / "orders.parquet"
        assert people.staged is not None and people.staged.is_file() and people.rows == 2
        got = mesh.sql(
            "SELECT n.label, o.amount, p.name FROM orders o JOIN names n ON o.id = n.id "
            "JOIN people p ON p.id = o.id ORDER BY n.label"
        )
        assert mesh.last_run is not None and mesh.last_run.distributed
    assert got.to_pylist() == [
        {"label": "one", "amount": Decimal("10.50"), "name": "ann"},
        {"label": "two", "amount": Decimal("2.25"), "name": "bob"},
    ]
