from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from datafusion import SessionContext

from ematix_flow.cli.tpch_cmd import tpch as tpch_cli
from ematix_flow.errors import ConfigError
from ematix_flow.workloads import tpch

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tpch.generate(0.01, tmp_path_factory.mktemp("tpch") / "sf0.01")


def test_generate_writes_all_tables(tiny: Path) -> None:
    assert sorted(p.name for p in tiny.iterdir()) == sorted(f"{t}.parquet" for t in tpch.TABLES)
    assert pq.read_metadata(tiny / "region.parquet").num_rows == 5
    assert pq.read_metadata(tiny / "nation.parquet").num_rows == 25
    assert pq.read_metadata(tiny / "orders.parquet").num_rows == 15_000
    assert not [p for p in tiny.parent.iterdir() if p.name.startswith(".")], "temp folder left behind"


@pytest.mark.integration
def test_generate_skips_existing_unless_forced(tiny: Path) -> None:
    stamp = (tiny / "lineitem.parquet").stat().st_mtime_ns
    assert tpch.generate(0.01, tiny) == tiny
    assert (tiny / "lineitem.parquet").stat().st_mtime_ns == stamp
    os.utime(tiny / "lineitem.parquet", ns=(0, 0))
    tpch.generate(0.01, tiny, force=True)
    assert (tiny / "lineitem.parquet").stat().st_mtime_ns != 0
    assert tpch.is_generated(tiny)


@pytest.mark.integration
def test_generate_completes_partial_folder(tmp_path: Path) -> None:
    out = tmp_path / "partial"
    out.mkdir()
    (out / "region.parquet").write_bytes(b"half written")
    (out / "notes.txt").write_text("kept")
    assert not tpch.is_generated(out)
    tpch.generate(0.01, out)
    assert tpch.is_generated(out)
    assert pq.read_metadata(out / "region.parquet").num_rows == 5
    assert (out / "notes.txt").read_text() == "kept"


def test_generate_rejects_bad_scale_factor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="positive"):
        tpch.generate(0, tmp_path / "x")


def test_missing_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="tpchgen-cli not found"):
        tpch.generate(0.01, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_queries() -> None:
    texts = tpch.queries()
    assert list(texts) == [f"q{n:02d}" for n in range(1, 23)]
    assert all(sql and not sql.rstrip().endswith(";") for sql in texts.values())
    assert texts["q06"] == tpch.query(6)
    assert tpch.query_dir().name == "queries"


@pytest.mark.parametrize("n", [0, 23, -1])
def test_unknown_query(n: int) -> None:
    with pytest.raises(ConfigError, match="no TPC-H query"):
        tpch.query(n)


def test_select_queries() -> None:
    assert list(tpch.select_queries("q01, 3,Q5,q01")) == ["q01", "q03", "q05"]
    assert len(tpch.select_queries(None)) == 22
    with pytest.raises(ConfigError, match="no TPC-H query"):
        tpch.select_queries("q1,q99")
    with pytest.raises(ConfigError):
        tpch.parse_query_name("lineitem")


def test_default_data_dir() -> None:
    assert tpch.default_data_dir(0.1) == Path("data/tpch-sf0.1")
    assert tpch.default_data_dir(1.0) == Path("data/tpch-sf1")


def test_register_all_on_datafusion(tiny: Path) -> None:
    ctx = SessionContext()
    registered = tpch.register_all(ctx, tiny)
    assert set(registered) == set(tpch.TABLES)
    count = ctx.sql("SELECT count(*) AS n FROM region").to_arrow_table()
    assert count.column("n").to_pylist() == [5]
    assert ctx.sql(tpch.query(6)).to_arrow_table().num_rows == 1


def test_register_all_on_any_registrar(tiny: Path) -> None:
    calls: list[tuple[str, str]] = []

    class Recorder:
        def register_parquet(self, name: str, path: str) -> None:
            calls.append((name, path))

    tpch.register_all(Recorder(), tiny)
    assert [name for name, _ in calls] == list(tpch.TABLES)
    assert calls[-1][1] == str(tiny / "lineitem.parquet")


def test_register_all_missing_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="table region missing"):
        tpch.register_all(SessionContext(), tmp_path)


def test_cli_queries() -> None:
    runner = CliRunner()
    listed = runner.invoke(tpch_cli, ["queries"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[0].startswith("q01  lineitem")
    assert len(listed.output.splitlines()) == 22
    shown = runner.invoke(tpch_cli, ["queries", "--show", "q6"])
    assert shown.exit_code == 0
    assert shown.output.strip() == tpch.query(6) + ";"
    bad = runner.invoke(tpch_cli, ["queries", "--show", "42"])
    assert isinstance(bad.exception, ConfigError)


@pytest.mark.integration
def test_cli_gen(tiny: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    reused = runner.invoke(tpch_cli, ["gen", "--sf", "0.01", "--out", str(tiny)])
    assert reused.exit_code == 0 and "already present" in reused.output
    fresh = runner.invoke(tpch_cli, ["gen", "--sf", "0.01", "--out", str(tmp_path / "d")])
    assert fresh.exit_code == 0, fresh.output
    assert "wrote 8 tables" in fresh.output
    assert "lineitem.parquet" in fresh.output
