"""Structured worker logs: JSON lines or text, every line of a task tagged with its query, stage, task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import TASK_TIMEOUT, spawned_workers_with, wait_until

from ematix_flow import Mesh, TLSConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

QUERY = "SELECT l_returnflag, count(*) AS n FROM lineitem GROUP BY l_returnflag"


def _run(workers: list, certs_dir: Path, tpch_data: Path) -> str:  # type: ignore[type-arg]
    with Mesh([w.address for w in workers], TLSConfig.from_dir(certs_dir), task_timeout=TASK_TIMEOUT) as mesh:
        mesh.register_parquet("lineitem", tpch_data / "lineitem.parquet")
        mesh.sql(QUERY)
        return mesh.last_run.query_id


def test_json_logs_carry_the_task_ids(certs_dir: Path, tpch_data: Path, tmp_path: Path) -> None:
    extra = ["--log-format", "json", "--log-level", "info"]
    with spawned_workers_with(2, certs_dir, tmp_path, extra) as workers:
        query_id = _run(workers, certs_dir, tpch_data)

        def task_lines() -> list[dict[str, object]]:
            rows = [json.loads(line) for w in workers for line in list(w.log) if line.startswith("{")]
            return [r for r in rows if r.get("query_id") == query_id]

        wait_until(lambda: any(r["message"].startswith("done") for r in task_lines()), 10, "task log lines")
        for w in workers:
            for line in list(w.log):
                if line.startswith("{"):
                    record = json.loads(line)  # every line a worker writes after start-up is JSON
                    assert {"ts", "level", "logger", "message"} <= record.keys()
        done = [r for r in task_lines() if str(r["message"]).startswith("done")]
        assert done and all(isinstance(r["stage"], int) and r["stage"] >= 0 for r in done)
        assert all(isinstance(r["task"], int) for r in done)


def test_text_logs_prefix_task_lines_with_their_ids(certs_dir: Path, tpch_data: Path, tmp_path: Path) -> None:
    with spawned_workers_with(1, certs_dir, tmp_path, ["--log-level", "info"]) as workers:
        query_id = _run(workers, certs_dir, tpch_data)
        prefix = f"query={query_id} stage="
        wait_until(lambda: any(prefix in line for line in list(workers[0].log)), 10, "a task log line")
        line = next(line for line in list(workers[0].log) if prefix in line)
        assert " task=" in line and ": done: " in line
