"""All 22 TPC-H queries (SF 0.1) on a real 3-peer mTLS mesh equal single-process DataFusion."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from support import local_mesh

from ematix_flow import Mesh, RunReport
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

QUERIES = [f"q{n:02d}" for n in range(1, 23)]


@pytest.fixture(scope="module")
def flight_mesh(tpch_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A second mesh whose consumers always fetch their inputs over Flight (no reading files in place)."""
    base = tmp_path_factory.mktemp("flight-mesh")
    with local_mesh(workers=3, min_task_bytes=1, local_reads=False, work_dir=base) as mesh:
        tpch.register_all(mesh, tpch_data)
        yield mesh
    shutil.rmtree(base, ignore_errors=True)


def _run(mesh: Mesh, name: str, reference: Callable[[str], pa.Table]) -> tuple[pa.Table, RunReport]:
    sql = tpch.query(int(name[1:]))
    got = mesh.sql(sql)
    diff = compare_tables(got, reference(sql), ordered=query_is_ordered(sql))
    assert diff is None, f"{name}: {diff}"
    report = mesh.last_run
    assert report is not None and report.sql == sql
    assert report.rows == got.num_rows
    return got, report


def _spread(report: RunReport) -> dict[int, set[str]]:
    return {s.stage: set(s.peers) for s in report.stages}


@pytest.mark.parametrize("name", QUERIES)
def test_tpch_query_on_mesh(tpch_mesh: Mesh, reference: Callable[[str], pa.Table], name: str) -> None:
    _, report = _run(tpch_mesh, name, reference)
    spread = _spread(report)
    assert any(len(peers) > 1 for peers in spread.values()), (
        f"{name}: no stage ran on more than one peer: {spread}"
    )
    assert report.peers_used == set(tpch_mesh.peers)
    assert report.stages[-1].kind == "root" and not report.stages[-1].tasks  # the submitter ran the root
    for stage in report.stages[:-1]:
        assert stage.tasks, f"{name}: stage {stage.stage} ran no task"
        assert sorted(t.task for t in stage.tasks) == list(range(len(stage.tasks)))
    # every peer runs on this host: consumers read producers' files in place, nothing crosses Flight
    assert sum(t.fetched_bytes for s in report.stages for t in s.tasks) == 0


@pytest.mark.parametrize("name", QUERIES)
def test_tpch_query_with_shuffle_over_flight(
    flight_mesh: Mesh, reference: Callable[[str], pa.Table], name: str
) -> None:
    _, report = _run(flight_mesh, name, reference)
    assert any(len(peers) > 1 for peers in _spread(report).values())
    if len(report.stages) > 2:  # some worker stage consumes another stage's output: it must have fetched it
        assert sum(t.fetched_bytes for s in report.stages for t in s.tasks) > 0, str(report)
