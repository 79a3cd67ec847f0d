"""Lake-table pieces that start no process: file skipping, partition values, file groups, catalogs."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path

import datafusion.expr as dfx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext
from datafusion.plan import ExecutionPlan

from ematix_flow.engine.lake.pruning import FileFacts, keep
from ematix_flow.engine.lake.registry import read_type, type_name
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.tables import parse_iceberg_url
from ematix_flow.errors import ConfigError
from ematix_flow.planner.lake import MIN_SPLIT_BYTES, LakeFile, LakeScan, concretize, spread
from ematix_flow.planner.scalars import scalar


def _filters(sql: str, tmp_path: Path) -> list[dfx.Expr]:
    """The filters DataFusion pushes into the scan of table t for ``sql``."""
    schema = pa.schema(
        [("k", pa.int64()), ("s", pa.string()), ("d", pa.date32()), ("m", pa.decimal128(10, 2)),
         ("ts", pa.timestamp("us", "UTC")), ("f", pa.float64())]
    )  # fmt: skip
    (tmp_path / "t").mkdir(exist_ok=True)
    pq.write_table(schema.empty_table(), tmp_path / "t" / "0.parquet")
    ctx = SessionContext()
    ctx.register_parquet("t", f"{tmp_path}/t/")
    found: list[dfx.Expr] = []

    def walk(plan: object) -> None:
        variant = plan.to_variant()  # type: ignore[attr-defined]
        if isinstance(variant, dfx.TableScan):
            found.extend(variant.filters())
        for child in plan.inputs():  # type: ignore[attr-defined]
            walk(child)

    walk(ctx.sql(sql).optimized_logical_plan())
    return found


FILE = FileFacts(
    minimum={"k": 10, "s": "b", "d": datetime.date(2020, 1, 1), "m": decimal.Decimal("1.00"),
             "ts": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), "f": 1.0},
    maximum={"k": 20, "s": "d", "d": datetime.date(2020, 12, 31), "m": decimal.Decimal("5.00"),
             "ts": datetime.datetime(2020, 1, 2, tzinfo=datetime.UTC), "f": 2.0},
    nulls={"k": 0, "s": 3},
    rows=10,
)  # fmt: skip


@pytest.mark.parametrize(
    ("where", "kept"),
    [
        ("k = 15", True),
        ("k = 25", False),
        ("k > 20", False),
        ("k >= 20", True),
        ("k < 10", False),
        ("k BETWEEN 21 AND 30", False),
        ("k IN (1, 2, 3)", False),
        ("k IN (1, 15)", True),
        ("k = 25 OR k = 15", True),
        ("k = 25 OR s = 'z'", False),
        ("s = 'c'", True),
        ("s > 'd'", False),
        ("d >= DATE '2021-01-01'", False),
        ("d < DATE '2020-06-01'", True),
        ("m > 5.5", False),
        ("m < 1.5", True),
        ("k IS NULL", False),  # no nulls in k
        ("s IS NULL", True),
        ("ts > TIMESTAMP '2021-01-01T00:00:00Z'", True),  # timestamps are never trusted
        ("f > 3.0", True),  # floats neither (NaN)
        ("k + 1 = 100", True),  # an expression: kept
        ("k != 15", True),
    ],
)
def test_a_file_is_skipped_only_when_no_row_can_pass(where: str, kept: bool, tmp_path: Path) -> None:
    assert keep(FILE, _filters(f"SELECT * FROM t WHERE {where}", tmp_path)) is kept


def test_a_long_string_maximum_is_not_trusted(tmp_path: Path) -> None:
    """It may be a truncated prefix, below the true maximum ("abcdefghijklmnopqrst" > the stat)."""
    facts = FileFacts(minimum={"s": "a"}, maximum={"s": "abcdefghijklmnop"})
    assert keep(facts, _filters("SELECT * FROM t WHERE s = 'abcdefghijklmnopqrst'", tmp_path))
    assert not keep(facts, _filters("SELECT * FROM t WHERE s < 'a'", tmp_path))  # the minimum still is
    short = FileFacts(minimum={"s": "a"}, maximum={"s": "abc"})
    assert not keep(short, _filters("SELECT * FROM t WHERE s = 'abd'", tmp_path))


def test_partition_values_are_exact_and_null_never_equals(tmp_path: Path) -> None:
    facts = FileFacts(partition={"s": "x"})
    assert keep(facts, _filters("SELECT * FROM t WHERE s = 'x'", tmp_path))
    assert not keep(facts, _filters("SELECT * FROM t WHERE s = 'y'", tmp_path))
    null = FileFacts(partition={"s": None})
    assert not keep(null, _filters("SELECT * FROM t WHERE s = 'x'", tmp_path))
    assert keep(null, _filters("SELECT * FROM t WHERE s IS NULL", tmp_path))
    assert not keep(facts, _filters("SELECT * FROM t WHERE s IS NULL", tmp_path))


@pytest.mark.parametrize(
    ("value", "arrow_type"),
    [
        ("a#1", pa.string_view()),
        ("x", pa.string()),
        (None, pa.string_view()),
        (-7, pa.int32()),
        (2**40, pa.int64()),
        (True, pa.bool_()),
        (datetime.date(2021, 3, 4), pa.date32()),
        (decimal.Decimal("-12.34"), pa.decimal128(10, 2)),
        (1.25, pa.float64()),
        (datetime.datetime(2021, 3, 4, 5, 6, 7, tzinfo=datetime.UTC), pa.timestamp("us", "UTC")),
    ],
)
def test_partition_values_decode_as_datafusion_reads_them(
    value: object, arrow_type: pa.DataType, tmp_path: Path
) -> None:
    """A template scan made concrete with one file whose partition column p has ``value``."""
    (tmp_path / "tpl").mkdir()
    pq.write_table(
        pa.schema([("k", pa.int64()), ("p", arrow_type)]).empty_table(), tmp_path / "tpl" / "0.parquet"
    )
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"k": [1, 2]}), tmp_path / "data" / "f.parquet")
    ctx = SessionContext()
    ctx.register_parquet("t", f"{tmp_path}/tpl/")
    planned = ctx.table("t").schema().field("p").type
    plan = ctx.sql("SELECT k, p FROM t").execution_plan().to_bytes()
    data = tmp_path / "data" / "f.parquet"
    scan = LakeScan(f"{tmp_path}/tpl/", "file://", ("p",), (LakeFile(str(data), data.stat().st_size,
                    (scalar(value, planned),)),), "test")  # fmt: skip
    concrete, labels = concretize(plan, [scan])
    assert list(labels.values()) == ["test"]
    other = SessionContext()
    decoded = ExecutionPlan.from_bytes(other, concrete)
    rows = [
        r
        for i in range(decoded.partition_count)
        for b in other.execute(decoded, i)
        for r in b.to_pyarrow().to_pylist()
    ]
    assert sorted(r["k"] for r in rows) == [1, 2]
    assert {r["p"] for r in rows} == {value}


def test_files_spread_by_size_and_big_files_split_into_ranges() -> None:
    big = LakeFile("data/big.parquet", 10 * MIN_SPLIT_BYTES)
    small = [LakeFile(f"data/s{i}.parquet", 1000) for i in range(3)]
    groups = spread((big, *small), 4)
    assert len(groups) == 4
    assert sum(len(g) for g in groups) >= 4 + 3 - 1  # the big file became several ranges
    assert spread((), 3) == [[], [], []]


def test_iceberg_urls_and_catalogs_of_the_storage_file(tmp_path: Path) -> None:
    assert parse_iceberg_url("iceberg://lake/ns.orders") == ("lake", "ns.orders")
    with pytest.raises(ConfigError, match=r"iceberg://CATALOG/namespace\.table"):
        parse_iceberg_url("iceberg://lake/orders")
    file = tmp_path / "storage.toml"
    file.write_text(
        '[iceberg.lake]\ntype = "sql"\nuri = "postgresql://flow:${PGPASS}@db/cat"\nwarehouse = "s3://wh/x"\n'
        's3.secret-access-key = "${SECRET}"\n'
    )
    conf = StorageConfig.load(file, env={"PGPASS": "hunter2", "SECRET": "topsecret"})
    assert conf.catalog("lake")["uri"] == "postgresql://flow:hunter2@db/cat"
    assert conf.catalog("lake")["name"] == "lake"
    shown = conf.describe()
    assert "hunter2" not in shown and "topsecret" not in shown and "iceberg.lake" in shown
    assert conf.catalog("lake")["s3.secret-access-key"] == "topsecret"  # a dotted TOML key, flat again
    with pytest.raises(ConfigError, match=r"\[iceberg.other\]"):
        conf.catalog("other")


def test_union_views_name_types_as_arrow_cast_does() -> None:
    ctx = SessionContext()
    for t in (pa.int64(), pa.string_view(), pa.decimal128(12, 3), pa.date32(), pa.timestamp("us", "UTC"),
              pa.timestamp("ns"), pa.bool_(), pa.float32()):  # fmt: skip
        got = ctx.sql(f"SELECT arrow_cast(NULL, '{type_name(t)}') AS x").schema().field("x").type
        assert got == t
    assert read_type(pa.large_string()) == pa.string_view()
