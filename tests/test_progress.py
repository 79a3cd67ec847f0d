"""Query progress: the snapshots ``Mesh.sql(..., progress=)`` sends, and ``flow sql``'s terminal display."""

from __future__ import annotations

import io
import itertools
import os
import pty
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from datafusion import SessionContext
from rich.console import Console
from support import executable, local_mesh, run_on_terminal, terminal_env

from ematix_flow import Mesh
from ematix_flow.cli.progress import StageDisplay, TerminalProgress, count_text, stage_counts
from ematix_flow.coordinator_lib.planning import plan_query
from ematix_flow.coordinator_lib.progress import QueryProgress, StageProgress
from ematix_flow.coordinator_lib.report import RunReport, StageReport
from ematix_flow.coordinator_lib.state import Assignment, QueryState
from ematix_flow.engine.exchange import schema_bytes
from ematix_flow.errors import PeerUnreachableError
from ematix_flow.transport.messages import TaskResult
from ematix_flow.workloads import tpch

Q09 = tpch.query(9)
GROUPED = "SELECT o_orderstatus, count(*) AS c FROM orders GROUP BY o_orderstatus"
#: A stage row of the terminal display, e.g. ``stage  3 shuffle ━━━━━━━━ 5/8 tasks, 1.2k rows``.
STAGE_ROW = re.compile(r"stage +\d+ (shuffle|gather|root) .*\d+/\d+ tasks")


# ----------------------------------------------------------------------------------- the hook
def _check_snapshots(snaps: list[QueryProgress], rows: int) -> None:
    """One query; counts never decrease; every stage ends done; the last snapshot is final."""
    assert snaps, "no progress reported"
    assert len({s.query_id for s in snaps}) == 1
    assert [s.finished for s in snaps] == [False] * (len(snaps) - 1) + [True]
    last = snaps[-1]
    assert last.rows == rows and last.stages[-1].kind == "root" and last.stages[-1].rows == rows
    assert all(s.finished and s.running == 0 and s.failed == 0 for s in last.stages), last.stages
    for before, after in itertools.pairwise(snaps):
        assert after.elapsed >= before.elapsed and after.rows >= before.rows
        assert [s.stage for s in after.stages] == [s.stage for s in before.stages]
        for b, a in zip(before.stages, after.stages, strict=True):
            assert a.done >= b.done and a.rows >= b.rows, (b, a)
            assert a.tasks == b.tasks or b.tasks == 0, (b, a)  # fixed once the stage starts
    for snap in snaps:
        for s in snap.stages:
            assert 0 <= s.done + s.running <= s.tasks or s.tasks == 0 == s.done == s.running


@pytest.mark.integration
def test_progress_of_a_distributed_query(tpch_mesh: Mesh, reference: Callable[[str], pa.Table]) -> None:
    snaps: list[QueryProgress] = []
    table = tpch_mesh.sql(Q09, progress=snaps.append)
    assert table.num_rows == reference(Q09).num_rows
    _check_snapshots(snaps, table.num_rows)
    run = tpch_mesh.last_run
    assert run is not None and snaps[-1].query_id == run.query_id
    assert [s.tasks for s in snaps[-1].stages] == [s.task_count for s in run.stages]
    assert [s.rows for s in snaps[-1].stages] == [s.rows for s in run.stages]
    assert any(s.running for snap in snaps for s in snap.stages)  # tasks were seen running


@pytest.mark.integration
def test_progress_of_streamed_batches(tpch_mesh: Mesh) -> None:
    snaps: list[QueryProgress] = []
    rows = sum(b.num_rows for b in tpch_mesh.sql_batches(GROUPED, progress=snaps.append))
    _check_snapshots(snaps, rows)


@pytest.mark.integration
def test_progress_of_an_in_process_query(tpch_data: Path) -> None:
    snaps: list[QueryProgress] = []
    with local_mesh(workers=1, local_below_bytes=1 << 40) as mesh:
        tpch.register_all(mesh, tpch_data)
        assert mesh.sql("SELECT count(*) FROM nation", progress=snaps.append).num_rows == 1
    assert snaps[0].stages == () and not snaps[0].finished
    assert snaps[-1].finished and snaps[-1].rows == 1


# ----------------------------------------------------------------------------------- the state
def _result(rows: int) -> TaskResult:
    out = [{"partition": 0, "rows": rows, "nbytes": 100 * rows, "path": "/nowhere"}]
    return TaskResult(out, schema_bytes(pa.schema([("x", pa.int64())])), ["x"], rows, 0.5, "host", 7)


def test_state_snapshots_follow_launches_failures_and_lost_peers(planning_ctx: SessionContext) -> None:
    """Failures are counted, a dead peer's finished tasks count as not done again, times are kept."""
    clock = itertools.count(start=100.0)
    planned = plan_query(planning_ctx, GROUPED)
    state = QueryState(
        "q", planned.graph, ["a", "b", "c"], min_task_bytes=1, local_reads=True, clock=lambda: next(clock)
    )
    assert [(s.tasks, s.done) for s in state.snapshot()] == [(0, 0), (1, 0)]  # not started; the root
    (stage,) = state.launchable()
    first = state.launch(stage)
    assert len(first) == 3 and {a.peer for a in first} == {"a", "b", "c"}
    assert state.snapshot()[0] == StageProgress(0, "shuffle", 3, 0, 3, 0, 0)
    by_peer = {a.peer: a for a in first}
    state.task_done(by_peer["a"], _result(10))
    state.task_done(by_peer["b"], _result(20))
    state.task_failed(by_peer["c"], PeerUnreachableError("gone", peer="c"))
    assert state.snapshot()[0] == StageProgress(0, "shuffle", 3, 2, 0, 1, 30)
    (again,) = state.launch(stage)
    assert again.peer == "a" and again.attempt == 2  # not c again; a and b tie, a comes first
    state.peer_down("b")  # b's finished task must run again: done goes down
    assert state.snapshot()[0] == StageProgress(0, "shuffle", 3, 1, 1, 1, 10)
    state.task_done(again, _result(30))
    (rerun,) = state.launch(stage)
    state.task_done(rerun, _result(20))
    assert state.snapshot()[0] == StageProgress(0, "shuffle", 3, 3, 0, 1, 60)
    state.root_spec()
    state.root_started()
    assert state.snapshot(5)[-1] == StageProgress(1, "root", 1, 0, 1, 0, 5)
    state.root_finished(9)
    assert state.snapshot(9)[-1] == StageProgress(1, "root", 1, 1, 0, 0, 9)
    _check_report(state)


def _check_report(state: QueryState) -> None:
    report = RunReport("q", GROUPED, [StageReport(0, "shuffle"), StageReport(1, "root", inputs=[0])])
    report.collect(state, origin=100.0)
    scan, root = report.stages
    assert scan.task_count == 3 and scan.failures == 1 and len(scan.tasks) == 4  # b's task ran twice
    assert scan.rows == 60 and scan.bytes_written == 6000 and scan.bytes_fetched == 21
    assert scan.peers_used == ["a", "b"] and {t.peer for t in scan.final} == {"a"}  # b's output was lost
    assert scan.started == 0.0 and scan.seconds > 0
    assert root.submitter is not None and root.rows == 9 and root.bytes_read == 6000
    assert root.started is not None and root.started >= scan.started + scan.seconds
    assert report.peers_used == {"a", "b"}  # b finished a task before it died


def test_assignments_carry_their_launch_time_and_input_bytes(planning_ctx: SessionContext) -> None:
    planned = plan_query(planning_ctx, GROUPED)
    state = QueryState("q", planned.graph, ["a"], min_task_bytes=1, local_reads=True, clock=lambda: 42.0)
    (stage,) = state.launchable()
    (a,) = state.launch(stage)
    assert isinstance(a, Assignment) and a.launched == 42.0 and a.input_bytes == 0
    state.task_done(a, _result(3))
    assert state.records[0].started == state.records[0].ended == 42.0
    assert state.spans[0] == (42.0, 42.0)


# ----------------------------------------------------------------------------------- the display
def test_counts_for_people() -> None:
    assert [count_text(n) for n in (0, 999, 1000, 12_345, 999_949, 1_250_000, 3_400_000_000)] == [
        "0",
        "999",
        "1.0k",
        "12.3k",
        "999.9k",
        "1.2M",
        "3.4G",
    ]
    assert (
        stage_counts(StageProgress(3, "shuffle", 8, 5, 3, 0, 1_200_000)) == "5/8 tasks (3 running), 1.2M rows"
    )
    assert stage_counts(StageProgress(3, "shuffle", 8, 8, 0, 2, 10)) == "8/8 tasks, 10 rows, 2 failed"
    assert stage_counts(StageProgress(3, "shuffle", 0, 0, 0, 0, 0)) == ""


def test_the_display_shows_one_row_per_stage() -> None:
    out = io.StringIO()
    display = StageDisplay(Console(file=out, width=120, force_terminal=True, color_system=None))
    stages = (StageProgress(0, "shuffle", 8, 5, 3, 0, 1_200_000), StageProgress(1, "root", 0, 0, 0, 0, 0))
    display.show(QueryProgress("0123456789abcdef", 2.0, stages, 0))
    display.console.print(display.get_renderable())
    lines = out.getvalue().splitlines()
    assert re.match(r"query 01234567: [\d.]+s, 0/2 stages done, 0 result rows$", lines[0])
    assert re.match(r"stage  0 shuffle ━+╸? *━* 5/8 tasks \(3 running\), 1\.2M rows", lines[1]), lines[1]
    assert re.match(r"stage  1 root +waiting", lines[2]), lines[2]
    display.show(QueryProgress("fedcba", 0.1, stages[:1], 0))  # a re-plan: a new query id starts over
    assert len(display.tasks) == 1


def test_no_display_unless_a_terminal(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream:
        with TerminalProgress(True, stream) as progress:
            assert progress.hook is None and progress.display is None
            assert list(progress.until_output(iter([1, 2]))) == [1, 2]
    assert (tmp_path / "err").read_text() == ""
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        assert TerminalProgress(False, tty).hook is None
        assert TerminalProgress(True, tty).hook is not None
    os.close(master)


# ----------------------------------------------------------------------------------- flow sql on a terminal
def _flow_sql(tpch_data: Path, tmp_path: Path, *extra: str, tty: bool) -> tuple[int, str, str]:
    """Run ``flow sql --local 2`` on Q9: stderr on a pseudo-terminal (or a pipe); (exit, stdout, stderr)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = terminal_env(scratch)
    args = [executable("flow"), "sql", "--local", "2", "--tables-dir", str(tpch_data), *extra, Q09]
    if not tty:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        return done.returncode, done.stdout, done.stderr
    return run_on_terminal(args, env)


def _check_table(stdout: str) -> None:
    lines = stdout.splitlines()
    assert [c.strip() for c in lines[0].split("|")] == ["nation", "o_year", "sum_profit"]
    assert lines[-1] == "... 75 more rows (use --max-rows or --output)"


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_flow_sql_shows_progress_on_a_terminal(tpch_data: Path, tmp_path: Path, fmt: str) -> None:
    code, stdout, shown = _flow_sql(tpch_data, tmp_path, "--format", fmt, tty=True)
    assert code == 0, shown
    if fmt == "csv":
        assert len(stdout.splitlines()) == 176  # the result alone: a header and 175 rows
    else:
        _check_table(stdout)
    assert STAGE_ROW.search(shown), shown[-2000:]
    if fmt == "table":  # the display lasts until the result prints (csv streams: it goes at the first batch)
        assert re.search(r"stage +\d+ root .*1/1 tasks, 175 rows", shown), shown[-2000:]
    assert "query " in shown and "stages done" in shown
    assert re.search(r"175 rows in [\d.]+s \(on 2 peers\)\r\n$", shown), repr(
        shown[-200:]
    )  # the summary, last
    assert shown.rindex("\x1b[2K") > shown.rindex("stage "), repr(shown[-400:])  # the display was erased


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_flow_sql_never_shows_progress_in_a_pipe(tpch_data: Path, tmp_path: Path) -> None:
    code, stdout, stderr = _flow_sql(tpch_data, tmp_path, tty=False)
    assert code == 0, stderr
    _check_table(stdout)
    assert re.fullmatch(r"175 rows in [\d.]+s \(on 2 peers\)\n", stderr), stderr


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_flow_sql_quiet_shows_nothing_on_a_terminal(tpch_data: Path, tmp_path: Path) -> None:
    code, stdout, shown = _flow_sql(tpch_data, tmp_path, "--quiet", "--format", "csv", tty=True)
    assert code == 0, shown
    assert stdout.splitlines()[0] == '"nation","o_year","sum_profit"' and len(stdout.splitlines()) == 176
    assert shown == ""
