from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from datafusion import SessionContext
from support import clean_env, executable, local_mesh

from ematix_flow.cli.main import cli
from ematix_flow.errors import ConfigError, QueryError
from ematix_flow.workloads import check, tpch

pytestmark = pytest.mark.timeout(180)

BAD_SQL = "SELECT no_such_column FROM region"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return check.prepare_data("tpch", 0.01, tmp_path_factory.mktemp("check") / "tpch-sf0.01")


class FakeMesh:
    """DataFusion posing as a mesh, with one query answered wrongly and one failing."""

    def __init__(self, wrong: str, failing: str, untranslated: str) -> None:
        self.ctx = SessionContext()
        self.wrong, self.failing, self.untranslated = wrong, failing, untranslated
        self.registered: list[str] = []

    def register_parquet(self, name: str, path: str) -> None:
        self.registered.append(name)
        self.ctx.register_parquet(name, path)

    def sql(self, sql: str) -> pa.Table:
        if sql == self.failing:
            raise QueryError("the mesh says no\nsecond line")
        if sql == self.untranslated:
            raise RuntimeError("plain engine error")
        table = self.ctx.sql(sql).to_arrow_table()
        if sql == self.wrong:
            return table.slice(1)
        return table


def test_verdicts_without_processes(tiny: Path) -> None:
    texts = tpch.select_queries("q01,q03,q06,q14")
    queries = {**texts, "bad": BAD_SQL}
    mesh = FakeMesh(wrong=texts["q03"], failing=texts["q06"], untranslated=texts["q14"])
    seen: list[str] = []
    results = check.run_check("tpch", mesh, tiny, queries, on_result=lambda r: seen.append(r.query))
    assert mesh.registered == list(tpch.TABLES)
    assert seen == ["q01", "q03", "q06", "q14", "bad"]
    by_name = {r.query: r for r in results}
    assert by_name["q01"].status == "equal" and by_name["q01"].rows == 4
    assert by_name["q03"].status == "differs"
    assert by_name["q03"].message is not None and "row count differs" in by_name["q03"].message
    assert by_name["q06"].status == "error"
    assert by_name["q06"].message == "QueryError: the mesh says no"
    assert by_name["q14"].message == "untranslated RuntimeError: plain engine error"
    assert by_name["bad"].status == "skip" and not by_name["bad"].counted
    assert by_name["bad"].line().startswith("bad  SKIP: DataFusion cannot run it: ")
    assert all(r.duckdb in ("agrees", "differs") for r in results if r.counted)
    assert by_name["q03"].line().startswith("q03  DIFFERS: row count differs")
    assert by_name["q06"].line().startswith("q06  ERROR (mesh): QueryError: the mesh says no  duckdb=")
    assert check.exit_code(results) == 1
    assert check.summary_lines(results)[0] == (
        "1/4 equal (1 differ, 2 mesh errors, 1 skipped (DataFusion cannot run them))"
    )


def test_no_duckdb_and_json(tiny: Path, tmp_path: Path) -> None:
    texts = tpch.select_queries("q06")
    mesh = FakeMesh(wrong="", failing="", untranslated="")
    results = check.run_check("tpch", mesh, tiny, texts, use_duckdb=False)
    assert [r.duckdb for r in results] == ["off"]
    assert "duckdb" not in results[0].line()
    assert check.exit_code(results) == 0
    assert check.summary_lines(results) == ["1/1 equal"]
    out = tmp_path / "r.json"
    check.write_json(out, results, benchmark="tpch", sf=0.01)
    document = json.loads(out.read_text())
    assert document["benchmark"] == "tpch"
    assert document["summary"]["equal"] == 1
    assert document["queries"][0]["query"] == "q06"


def test_unknown_benchmark_and_query() -> None:
    with pytest.raises(ConfigError, match="no benchmark"):
        check.select("tpcx", None)
    result = CliRunner().invoke(cli, ["check", "tpch", "--queries", "q42", "--local", "1"])
    assert result.exit_code == 2
    assert "no TPC-H query 'q42'" in result.output


@pytest.mark.integration
def test_check_on_a_local_mesh(tiny: Path, tmp_path: Path) -> None:
    queries = tpch.select_queries("q01,q03,q06")
    with local_mesh(workers=2, min_task_bytes=1, work_dir=tmp_path) as mesh:
        results = check.run_check("tpch", mesh, tiny, queries, timeout=60)
    assert [r.query for r in results] == ["q01", "q03", "q06"]
    for r in results:
        assert r.status == "equal", r.line()
        assert r.message is None and r.rows is not None and r.rows > 0
        assert r.mesh_seconds is not None and r.datafusion_seconds is not None
        assert r.peers_used == 2
        assert r.duckdb in ("agrees", "differs")
        assert r.line().startswith(f"{r.query}  equal  ")
    assert check.exit_code(results) == 0
    assert check.summary_lines(results)[0] == "3/3 equal"


@pytest.mark.integration
def test_cli_check(tiny: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "check.json"
    args = ["check", "tpch", "--sf", "0.01", "--local", "2", "--queries", "q01,q06"]
    proc = subprocess.run(
        [executable("flow"), *args, "--data", str(tiny), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(TMPDIR=str(scratch)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("q01  equal  ") and lines[1].startswith("q06  equal  ")
    assert "2/2 equal" in lines
    assert json.loads(out.read_text())["summary"]["equal"] == 2
