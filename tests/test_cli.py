"""The ``flow`` and ``flow-worker`` commands as a user runs them (real processes, bounded by timeouts)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import clean_env, executable, flow_worker

from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REGIONS = "SELECT r_regionkey, r_name FROM region ORDER BY r_regionkey"
COUNTS = "SELECT n_regionkey, count(*) AS c FROM nation GROUP BY n_regionkey ORDER BY n_regionkey"


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """The TMPDIR of the commands: whatever they leave behind shows up here."""
    path = tmp_path / "tmp"
    path.mkdir()
    return path


def flow(
    *args: str, scratch: Path, timeout: float = 60, program: str = "flow", stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable(program), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env=clean_env(TMPDIR=str(scratch)),
    )


def _tail(text: str, lines: int = 4) -> str:
    return " / ".join(text.strip().splitlines()[-lines:])


def _first_error(text: str) -> str:
    """The exception line that ends the first traceback in ``text`` (or its last lines)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            rest = [x for x in lines[i + 1 :] if x and not x.startswith(" ")]
            return rest[0] if rest else _tail(text)
    return _tail(text)


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}: {_first_error(result.stderr)}"
    assert "Traceback" not in result.stderr, f"traceback on stderr: {_first_error(result.stderr)}"
    return result


def _user_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, f"exit {result.returncode}: {_first_error(result.stderr)}"
    assert "Traceback" not in result.stderr, f"traceback on stderr: {_first_error(result.stderr)}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def _tables(tpch_data: Path, *names: str) -> list[str]:
    return [a for n in names for a in ("--table", f"{n}={tpch_data / (n + '.parquet')}")]


def _nothing_left(scratch: Path) -> None:
    assert list(scratch.iterdir()) == [], "the command left temporary files behind"


# ----------------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command",
    [
        ["flow", "--help"],
        ["flow", "sql", "--help"],
        ["flow", "explain", "--help"],
        ["flow", "certs", "--help"],
        ["flow", "demo", "--help"],
        ["flow-worker", "--help"],
    ],
    ids=lambda c: " ".join(c),
)
def test_help(command: list[str], scratch: Path) -> None:
    result = _ok(flow(*command[1:], program=command[0], scratch=scratch, timeout=30))
    assert "Usage:" in result.stdout


# ----------------------------------------------------------------------------------- flow demo
def test_demo(tpch_data: Path, tmp_path: Path, scratch: Path) -> None:
    """``make demo`` runs ``flow demo``: it reuses data/tpch-sf0.1 under the cwd and compares answers."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tpch-sf0.1").symlink_to(tpch_data)
    result = _ok(
        subprocess.run(
            [executable("flow"), "demo", "--workers", "2", "--queries", "q01,q06"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=clean_env(TMPDIR=str(scratch)),
        )
    )
    out = result.stdout
    assert "Using TPC-H SF 0.1 in data/tpch-sf0.1" in out
    assert out.count("answers equal") == 2 and "ANSWERS DIFFER" not in out
    summary = out.split("=== summary")[1].splitlines()[2:]
    assert [line.split()[0] for line in summary] == ["q01", "q06"]
    assert all(line.split()[-1] == "yes" for line in summary)
    _nothing_left(scratch)


# ----------------------------------------------------------------------------------- flow sql
def test_sql_prints_the_result(tpch_data: Path, scratch: Path) -> None:
    result = _ok(flow("sql", "--local", "2", *_tables(tpch_data, "nation"), COUNTS, scratch=scratch))
    lines = result.stdout.strip().splitlines()
    assert [c.strip() for c in lines[0].split("|")] == ["n_regionkey", "c"]
    rows = [[c.strip() for c in line.split("|")] for line in lines[2:]]
    assert rows == [[str(k), "5"] for k in range(5)]
    assert "5 rows in" in result.stderr and "on 2 peers" in result.stderr
    _nothing_left(scratch)


def test_sql_reads_the_query_from_stdin(tpch_data: Path, scratch: Path) -> None:
    result = _ok(
        flow(
            "sql",
            "--local",
            "2",
            "-q",
            "--format",
            "json",
            *_tables(tpch_data, "nation"),
            "-f",
            "-",
            scratch=scratch,
            stdin=COUNTS + ";\n",
        )
    )
    assert [json.loads(x) for x in result.stdout.splitlines()] == [
        {"n_regionkey": k, "c": 5} for k in range(5)
    ]
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (COUNTS, [["n_regionkey", "c"], *[[str(k), "5"] for k in range(5)]]),
        (
            REGIONS,
            [
                ["r_regionkey", "r_name"],
                ["0", "AFRICA"],
                ["1", "AMERICA"],
                ["2", "ASIA"],
                ["3", "EUROPE"],
                ["4", "MIDDLE EAST"],
            ],
        ),
        ("SELECT n_regionkey FROM nation WHERE false", [["n_regionkey"]]),
        ("SELECT n_name FROM nation WHERE false", [["n_name"]]),
    ],
    ids=["numbers", "text", "empty_numbers", "empty_text"],
)
def test_sql_csv(tpch_data: Path, scratch: Path, sql: str, expected: list[list[str]]) -> None:
    result = _ok(
        flow(
            "sql",
            "--local",
            "2",
            "--format",
            "csv",
            *_tables(tpch_data, "nation", "region"),
            sql,
            scratch=scratch,
        )
    )
    assert list(csv.reader(io.StringIO(result.stdout))) == expected
    _nothing_left(scratch)


def test_sql_json(tpch_data: Path, scratch: Path) -> None:
    result = _ok(
        flow(
            "sql", "--local", "2", "--format", "json", *_tables(tpch_data, "region"), REGIONS, scratch=scratch
        )
    )
    got = [json.loads(line) for line in result.stdout.splitlines()]
    names = ["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"]
    assert got == [{"r_regionkey": k, "r_name": n} for k, n in enumerate(names)]


def test_sql_parquet_output(
    tpch_data: Path, scratch: Path, tmp_path: Path, reference: Callable[[str], pa.Table]
) -> None:
    out = tmp_path / "q03.parquet"
    query = tmp_path / "q03.sql"
    query.write_text(tpch.query(3) + ";\n")
    result = _ok(
        flow(
            "sql",
            "--local",
            "2",
            "--tables-dir",
            str(tpch_data),
            "-f",
            str(query),
            "--format",
            "parquet",
            "--output",
            str(out),
            scratch=scratch,
        )
    )
    assert result.stdout == ""
    assert compare_tables(pq.read_table(out), reference(tpch.query(3)), ordered=True) is None
    _nothing_left(scratch)


def test_sql_parquet_needs_output(tpch_data: Path, scratch: Path) -> None:
    line = _user_error(
        flow(
            "sql",
            "--local",
            "2",
            "--format",
            "parquet",
            *_tables(tpch_data, "region"),
            REGIONS,
            scratch=scratch,
        )
    )
    assert "--output" in line


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("sql", "fragment"),
    [("SELECT * FROM no_such_table", "no_such_table"), ("SELEC 1", "SELEC"), ("SELECT 1 +", "invalid query")],
    ids=["missing_table", "bad_sql", "truncated_sql"],
)
def test_sql_user_errors_are_one_line(tpch_data: Path, scratch: Path, sql: str, fragment: str) -> None:
    line = _user_error(flow("sql", "--local", "2", *_tables(tpch_data, "region"), sql, scratch=scratch))
    assert fragment in line
    _nothing_left(scratch)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--table", "t=/no/such/file.parquet", "SELECT 1"], "no such file"),
        (["--table", "just-a-name", "SELECT 1"], "NAME=PATH"),
        ([], "no SQL"),
    ],
    ids=["missing_file", "bad_table_option", "no_sql"],
)
def test_sql_bad_invocations(scratch: Path, args: list[str], fragment: str) -> None:
    assert fragment in _user_error(flow("sql", "--local", "1", *args, scratch=scratch))


def test_unreachable_peer(certs_dir: Path, scratch: Path) -> None:
    started = time.monotonic()
    line = _user_error(
        flow(
            "sql",
            "--peers",
            "127.0.0.1:1",
            "--tls-dir",
            str(certs_dir),
            "SELECT 1",
            scratch=scratch,
            timeout=15,
        )
    )
    assert time.monotonic() - started < 15
    assert "unreachable" in line and "127.0.0.1:1" in line


def test_peers_without_tls_dir(scratch: Path) -> None:
    assert "--tls-dir" in _user_error(flow("sql", "--peers", "127.0.0.1:1", "SELECT 1", scratch=scratch))


# ----------------------------------------------------------------------------------- explain
def test_explain(tpch_data: Path, scratch: Path) -> None:
    result = _ok(
        flow("explain", "--local", "2", "--tables-dir", str(tpch_data), tpch.query(5), scratch=scratch)
    )
    assert result.stdout.startswith("Distributed plan: ")
    assert "Stage 0 (" in result.stdout and "(root" in result.stdout
    assert "shuffle" in result.stdout and "gather" in result.stdout
    _nothing_left(scratch)


# ----------------------------------------------------------------------------------- the whole user path
def test_certs_worker_and_sql_end_to_end(tpch_data: Path, tmp_path: Path, scratch: Path) -> None:
    certs = tmp_path / "certs"
    made = _ok(flow("certs", "init", "--dir", str(certs), "--hosts", "127.0.0.1,localhost", scratch=scratch))
    assert "wrote" in made.stdout and (certs / "ca.pem").is_file()
    work = tmp_path / "work"
    args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-dir",
        str(certs),
        "--work-dir",
        str(work),
        "--log-level",
        "warning",
    ]
    with flow_worker(args) as worker:
        assert worker.scheme == "grpc+tls"
        result = _ok(
            flow(
                "sql",
                "--peers",
                worker.address,
                "--tls-dir",
                str(certs),
                *_tables(tpch_data, "nation"),
                "--format",
                "csv",
                COUNTS,
                scratch=scratch,
            )
        )
        assert list(csv.reader(io.StringIO(result.stdout))) == [
            ["n_regionkey", "c"],
            *[[str(k), "5"] for k in range(5)],
        ]
        assert "on 1 peer)" in result.stderr, result.stderr
        # the same through the environment variable instead of --tls-dir
        env_run = subprocess.run(
            [
                executable("flow"),
                "sql",
                "--peers",
                worker.address,
                *_tables(tpch_data, "nation"),
                "-q",
                COUNTS,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(TMPDIR=str(scratch), FLOW_TLS_DIR=str(certs)),
        )
        _ok(env_run)
        worker.process.terminate()
        assert worker.process.wait(timeout=10) == 0
    assert list(work.iterdir()) == []
    _nothing_left(scratch)
