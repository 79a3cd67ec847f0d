"""``explain(sql, analyze=True)`` and ``flow explain --analyze``: what each stage of a real run did."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from support import clean_env, executable, local_mesh

from ematix_flow import Mesh, RunReport
from ematix_flow.coordinator_lib.report import StageReport
from ematix_flow.workloads import tpch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Q09 = tpch.query(9)
Q09_FILE = tpch.query_dir() / "q09.sql"
STAGE_KEYS = {"id", "kind", "inputs", "tasks", "peers", "rows", "bytes_written", "bytes_read"}
STAGE_KEYS |= {"bytes_fetched", "seconds", "started", "failures", "task_runs"}
RUN_KEYS = {"query_id", "sql", "seconds", "rows", "distributed", "peers", "note", "retries", "peers_lost"}
RUN_KEYS |= {"replanned", "files_written", "stages"}


@pytest.fixture(scope="module")
def analyzed(tpch_mesh: Mesh) -> tuple[str, RunReport]:
    """Q9 explained with analyze=True on the session's 3-peer mesh, and its report."""
    text = tpch_mesh.explain(Q09, analyze=True)
    assert tpch_mesh.last_run is not None
    return text, tpch_mesh.last_run


def _expected_read(report: RunReport, stage: StageReport) -> int:
    """Bytes a stage must have read: a shuffle input once in all, a gathered input once per task."""
    assert report.graph is not None
    total = 0
    for inp in report.graph[stage.stage].inputs:
        written = report.stages[inp.stage].bytes_written
        total += written if inp.mode == "shuffle" else written * stage.task_count
    return total


def test_every_stage_reports_what_it_did(
    analyzed: tuple[str, RunReport], tpch_mesh: Mesh, reference: Callable[[str], pa.Table]
) -> None:
    _, report = analyzed
    assert report.graph is not None and len(report.stages) == len(report.graph.stages) > 2
    for stage in report.stages[:-1]:
        assert stage.task_count >= 1, stage
        assert len(stage.final) == stage.task_count and stage.failures == 0
        assert stage.peers_used and set(stage.peers_used) <= set(tpch_mesh.peers), stage.peers_used
        assert stage.rows == sum(t.rows for t in stage.final) > 0
        assert stage.started is not None and stage.started >= 0 and stage.seconds >= 0
        assert stage.started + stage.seconds <= report.seconds + 1e-6
        assert stage.bytes_read == _expected_read(report, stage), stage.stage
        if stage.kind == "shuffle":
            assert stage.bytes_written > 0
    root = report.stages[-1]
    assert root.kind == "root" and root.submitter is not None and root.peers_used == []
    assert root.task_count == 1 and root.seconds >= 0
    assert root.rows == report.rows == reference(Q09).num_rows
    assert root.bytes_read == _expected_read(report, root) > 0
    assert {p for s in report.stages for p in s.peers_used} == report.peers_used


def test_the_text_annotates_every_stage(analyzed: tuple[str, RunReport]) -> None:
    text, report = analyzed
    lines = text.splitlines()
    assert lines[0] == f"Distributed plan: {len(report.stages)} stages over 3 peers"
    assert lines[1].startswith(f"Ran in {report.seconds:.3f}s: {report.rows:,} result rows, tasks on ")
    heads = [i for i, line in enumerate(lines) if line.startswith("Stage ")]
    assert len(heads) == len(report.stages)
    for i in heads:
        assert lines[i + 1].startswith("    ran: "), lines[i : i + 2]
    assert lines[heads[0] + 1].startswith(f"    ran: on the submitter; {report.rows:,} rows out; read ")
    shuffle = re.compile(
        r"    ran: \d+ tasks? on 127\.0\.0\.1:\d+.*; [\d,]+ rows out; wrote [\d.]+ [kMG]?B, read "
    )
    assert sum(bool(shuffle.match(lines[i + 1])) for i in heads) == len(report.stages) - 1


def test_to_dict_is_json_with_the_documented_shape(analyzed: tuple[str, RunReport]) -> None:
    _, report = analyzed
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == RUN_KEYS
    assert data["rows"] == report.rows and data["query_id"] == report.query_id and data["sql"] == Q09
    assert [s["id"] for s in data["stages"]] == list(range(len(report.stages)))
    for stage, got in zip(report.stages, data["stages"], strict=True):
        assert set(got) == STAGE_KEYS
        assert got["kind"] == stage.kind and got["tasks"] == stage.task_count and got["rows"] == stage.rows
        assert got["bytes_written"] == stage.bytes_written and got["peers"] == stage.peers_used
    assert data["stages"][-1]["kind"] == "root" and data["stages"][-1]["peers"] == []


def test_analyze_of_an_in_process_query(tpch_data: Path) -> None:
    with local_mesh(workers=1, local_below_bytes=1 << 40) as mesh:
        tpch.register_all(mesh, tpch_data)
        text = mesh.explain("SELECT count(*) FROM nation", analyze=True)
        assert text.startswith("Runs in-process on the submitter")
        assert text.splitlines()[-1].startswith("Ran in-process in ")
        assert text.endswith(": 1 result rows")
        run = mesh.last_run
        assert run is not None and run.graph is None and run.to_dict()["stages"] == []


# ----------------------------------------------------------------------------------- the command
def _flow(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return subprocess.run(
        [executable("flow"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(TMPDIR=str(scratch)),
    )


def test_flow_explain_analyze(tpch_data: Path, tmp_path: Path) -> None:
    args = ["explain", "--analyze", "--local", "2", "--tables-dir", str(tpch_data), "-f", str(Q09_FILE)]
    result = _flow(*args, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress display
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Distributed plan: ") and lines[1].startswith("Ran in ")
    stages = [line for line in lines if line.startswith("Stage ")]
    ran = [line for line in lines if line.startswith("    ran: ")]
    assert len(stages) == len(ran) > 2
    assert "ran: on the submitter; 175 rows out" in result.stdout
    assert list((tmp_path / "tmp").iterdir()) == []


def test_flow_explain_analyze_json(tpch_data: Path, tmp_path: Path) -> None:
    args = ["explain", "--analyze", "--format", "json", "--local", "2", "--tables-dir", str(tpch_data)]
    result = _flow(*args, "-f", str(Q09_FILE), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == RUN_KEYS and data["rows"] == 175 and data["distributed"]
    assert all(set(s) == STAGE_KEYS for s in data["stages"])
    peers = set(data["peers"])
    assert len(peers) == 2
    for s in data["stages"][:-1]:
        assert s["tasks"] >= 1 and set(s["peers"]) <= peers and s["seconds"] >= 0
    assert data["stages"][-1]["rows"] == 175


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [(["--format", "json"], "--format json needs --analyze"), (["--timeout", "5"], "--timeout needs")],
    ids=["json", "timeout"],
)
def test_flow_explain_options_need_analyze(
    tpch_data: Path, tmp_path: Path, extra: list[str], fragment: str
) -> None:
    result = _flow(
        "explain", "--local", "1", "--tables-dir", str(tpch_data), *extra, "SELECT 1", tmp_path=tmp_path
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and fragment in result.stderr
