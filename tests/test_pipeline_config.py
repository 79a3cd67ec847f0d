"""Pipeline declarations: every mistake is one message naming the file, the key and the fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ematix_flow.errors import ConfigError
from ematix_flow.pipelines.config import Pipeline, Source, Target, Transform

GOOD: dict[str, Any] = {
    "pipeline_name": "daily_revenue",
    "sources": {"orders": {"kind": "parquet", "path": "data/orders/"}},
    "transform": {"sql": "SELECT 1 AS x FROM orders"},
    "target": {"kind": "duckdb", "path": "w.duckdb", "table": "analytics.daily", "mode": "append"},
}


def build(**changes: Any) -> dict[str, Any]:
    """GOOD with ``section__key=value`` changes (value None deletes the key)."""
    data = copy.deepcopy(GOOD)
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return data


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict(data, origin="p.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("p.toml: "), message
    return message


def test_a_good_declaration_reads_with_defaults() -> None:
    p = Pipeline.from_dict(GOOD, origin="p.toml", base_dir=Path("/srv/jobs"))
    assert p.name == "daily_revenue"
    assert p.sources["orders"] == Source(kind="parquet", path="data/orders/")
    assert p.transform.engine == "datafusion" and p.transform.dialect == "datafusion"
    assert p.target == Target(kind="duckdb", path="w.duckdb", table="analytics.daily", mode="append")
    assert p.resolve("data/orders/") == Path("/srv/jobs/data/orders")
    assert p.sql_text() == "SELECT 1 AS x FROM orders"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"target__kyes": ["a"]}, "p.toml: [target] kyes: unknown key (did you mean 'keys'?"),
        ({"transform__engin": "distributed"}, "[transform] engin: unknown key (did you mean 'engine'?"),
        ({"colour": "blue"}, "p.toml: colour: unknown key"),
        ({"pipeline_name": None}, "p.toml: pipeline_name: missing (add pipeline_name = <a string>)"),
        ({"target": None}, "p.toml: target: missing"),
        ({"sources": {}}, "[sources] is empty"),
        ({"sources__orders__kind": None}, "[sources.orders] kind: missing (add kind = one of parquet"),
        ({"sources__orders__kind": "xls"}, "[sources.orders] kind: 'xls' is not one of parquet, csv"),
        (
            {"sources__orders__path": None},
            '[sources.orders] path: missing (add path = "data/orders.parquet")',
        ),
        ({"sources__orders": "data/x.parquet"}, "sources.orders must be a table"),
        ({"transform__sql": None}, "[transform]: give exactly one of sql"),
        ({"transform__engine": "spark"}, "[transform] engine: 'spark' is not one of datafusion, distributed"),
        (
            {"transform__engine": "distributed"},
            '[transform]: engine = "distributed" needs peers = ["host:50051", ...]',
        ),
        (
            {"transform__engine": "distributed", "transform__peers": ["h:1"]},
            "peers need [transform.tls] dir",
        ),
        (
            {"transform__engine": "distributed", "transform__peers": ["h:1"], "transform__local": 3},
            "either peers = [...] or local = N",
        ),
        ({"transform__local": 3}, '[transform] local: only for engine = "distributed"'),
        ({"transform__peers": "h:1"}, "[transform] peers: must be a list of strings, not str"),
        ({"transform__timeout": "5"}, "[transform] timeout: must be a number"),
        ({"transform__insecure": "yes"}, "[transform] insecure: must be true or false"),
        ({"transform__tls": {"directory": "c"}}, "[transform.tls] directory: unknown key"),
        ({"target__mode": "upsert"}, "[target] mode: 'upsert' is not one of append, truncate, merge, scd2"),
        ({"target__mode": "merge"}, '[target] keys: mode = "merge" needs keys = ["id", ...]'),
        ({"target__mode": "scd2"}, '[target] keys: mode = "scd2" needs keys'),
        ({"target__keys": ["x"]}, '[target] keys: only used by mode = "merge" or "scd2"'),
        (
            {
                "target__kind": "parquet",
                "target__table": None,
                "target__mode": "merge",
                "target__keys": ["x"],
            },
            "parquet targets support append, truncate, not merge",
        ),
        ({"target__table": None}, "[target] table: missing"),
        (
            {"target__mode": "truncate", "transform__watermark_column": "ts"},
            '[target] mode: "truncate" replaces the whole table, so with [transform] watermark_column',
        ),
        ({"target__kind": "postgres", "target__path": None}, "[target] dsn: missing"),
        ({"pipeline_name": "daily revenue"}, "must be letters, digits and _"),
        ({"pipeline_name": 7}, "pipeline_name: must be a string, not int 7"),
    ],
)
def test_each_mistake_names_the_key_and_the_fix(changes: dict[str, Any], expected: str) -> None:
    assert expected in error(build(**changes))


def test_database_sources_need_exactly_one_of_table_or_query() -> None:
    both = build(sources__orders={"kind": "sqlite", "path": "x.db", "table": "t", "query": "SELECT 1"})
    assert "give exactly one of table" in error(both)
    neither = build(sources__orders={"kind": "duckdb", "path": "x.db"})
    assert "give exactly one of table" in error(neither)
    pg = build(sources__orders={"kind": "postgres", "path": "x", "table": "t"})
    assert "[sources.orders] path: unknown key" in error(pg)


def test_dsn_reads_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    data = build(target={"kind": "postgres", "dsn": "postgresql://u:${PG_PASS}@h/db", "table": "t"})
    monkeypatch.delenv("PG_PASS", raising=False)
    assert "environment variable PG_PASS is not set" in error(data)
    monkeypatch.setenv("PG_PASS", "s3cret")
    assert Pipeline.from_dict(data).target.dsn == "postgresql://u:s3cret@h/db"


def test_from_toml_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: no such pipeline file"):
        Pipeline.from_toml(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text('pipeline_name = "x"\n[sources\n')
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        Pipeline.from_toml(bad)
    good = tmp_path / "jobs" / "p.toml"
    good.parent.mkdir()
    good.write_text(
        'pipeline_name = "p"\n[sources.t]\nkind = "csv"\npath = "t.csv"\n'
        '[transform]\nsql_file = "q.sql"\n[target]\npath = "w.duckdb"\ntable = "t"\n'
    )
    (good.parent / "q.sql").write_text("SELECT * FROM t;\n")
    p = Pipeline.from_toml(good)
    assert p.base_dir == good.parent.resolve() and p.origin == str(good)
    assert p.sql_text() == "SELECT * FROM t"
    (good.parent / "q.sql").unlink()
    with pytest.raises(ConfigError, match=r"\[transform\] sql_file 'q.sql': cannot read"):
        p.sql_text()


def test_python_declarations_get_the_same_checks() -> None:
    p = Pipeline(
        name="p",
        sources={"t": Source("csv", path="t.csv")},
        transform=Transform(sql="SELECT 1", engine="distributed"),
        target=Target("sqlite", path="w.sqlite", table="t"),
        origin="pipeline p",
    )
    with pytest.raises(ConfigError, match='pipeline p: \\[transform\\]: engine = "distributed" needs peers'):
        p.check()
