from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from datafusion import SessionConfig, SessionContext

from ematix_flow.cli.tpcds_cmd import tpcds as tpcds_cli
from ematix_flow.errors import ConfigError
from ematix_flow.workloads import tpcds

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tpcds.generate(0.01, tmp_path_factory.mktemp("tpcds") / "sf0.01")


def test_generate_writes_all_tables(tiny: Path) -> None:
    assert len(tpcds.TABLES) == 24
    assert sorted(p.name for p in tiny.iterdir()) == sorted(f"{t}.parquet" for t in tpcds.TABLES)
    assert pq.read_metadata(tiny / "store_sales.parquet").num_rows > 0
    assert pq.read_metadata(tiny / "date_dim.parquet").num_rows == 73_049
    assert not [p for p in tiny.parent.iterdir() if p.name.startswith(".")], "temp folder left behind"


def test_types_datafusion_reads(tiny: Path) -> None:
    schema = pq.read_schema(tiny / "store_sales.parquet")
    assert str(schema.field("ss_net_paid").type) == "decimal128(7, 2)"
    assert str(pq.read_schema(tiny / "date_dim.parquet").field("d_date").type) == "date32[day]"


def test_generate_skips_existing_unless_forced(tiny: Path) -> None:
    stamp = (tiny / "reason.parquet").stat().st_mtime_ns
    assert tpcds.generate(0.01, tiny) == tiny
    assert (tiny / "reason.parquet").stat().st_mtime_ns == stamp
    os.utime(tiny / "reason.parquet", ns=(0, 0))
    tpcds.generate(0.01, tiny, force=True)
    assert (tiny / "reason.parquet").stat().st_mtime_ns != 0
    assert tpcds.is_generated(tiny)


def test_generate_rejects_bad_scale_factor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="positive"):
        tpcds.generate(-1, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_extension_is_a_shipped_file() -> None:
    path = tpcds.duckdb_extension("tpcds")
    assert path.is_file() and path.name == "tpcds.duckdb_extension"
    with pytest.raises(ConfigError, match="pip install duckdb-extension-nosuch"):
        tpcds.duckdb_extension("nosuch")


def test_duckdb_never_downloads() -> None:
    con = tpcds.connect_duckdb()
    try:
        settings = con.sql(
            "SELECT current_setting('autoinstall_known_extensions'), "
            "current_setting('autoload_known_extensions')"
        ).fetchone()
        assert settings == (False, False)
    finally:
        con.close()


def test_queries() -> None:
    texts = tpcds.queries()
    assert list(texts) == [f"q{n:02d}" for n in range(1, 100)]
    assert all(sql and not sql.rstrip().endswith(";") for sql in texts.values())
    assert all(";" not in sql for sql in texts.values()), "one statement per query"
    assert texts["q03"] == tpcds.query(3)
    assert tpcds.query_dir().name == "queries"


@pytest.mark.parametrize("n", [0, 100, -1])
def test_unknown_query(n: int) -> None:
    with pytest.raises(ConfigError, match="no TPC-DS query"):
        tpcds.query(n)


def test_select_queries() -> None:
    assert list(tpcds.select_queries("q01, 3,Q99,q01")) == ["q01", "q03", "q99"]
    assert len(tpcds.select_queries("")) == 99
    with pytest.raises(ConfigError, match="no TPC-DS query"):
        tpcds.select_queries("q1,q100")


def test_default_data_dir() -> None:
    assert tpcds.default_data_dir(0.1) == Path("data/tpcds-sf0.1")
    assert tpcds.default_data_dir(1.0) == Path("data/tpcds-sf1")


def test_datafusion_runs_queries(tiny: Path) -> None:
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    registered = tpcds.register_all(ctx, tiny)
    assert list(registered) == list(tpcds.TABLES)
    answer = ctx.sql(tpcds.query(3)).to_arrow_table()
    assert answer.column_names == ["d_year", "brand_id", "brand", "sum_agg"]
    assert answer.num_rows == 0  # i_manufact_id 128 does not occur at SF 0.01
    assert ctx.sql(tpcds.query(7)).to_arrow_table().num_rows > 0


def test_register_all_missing_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="table call_center missing"):
        tpcds.register_all(SessionContext(), tmp_path)


def test_cli_queries() -> None:
    runner = CliRunner()
    listed = runner.invoke(tpcds_cli, ["queries"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len(lines) == 99
    assert lines[2] == "q03  date_dim, item, store_sales"
    shown = runner.invoke(tpcds_cli, ["queries", "--show", "q3"])
    assert shown.exit_code == 0
    assert shown.output.strip() == tpcds.query(3) + ";"


def test_cli_gen_reuses(tiny: Path) -> None:
    reused = CliRunner().invoke(tpcds_cli, ["gen", "--sf", "0.01", "--out", str(tiny)])
    assert reused.exit_code == 0 and "all 24 tables already present" in reused.output
