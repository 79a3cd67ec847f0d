"""A query past its timeout is cancelled on every peer: tasks stop, files go, peers keep serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import local_mesh, query_dirs, wait_until

from ematix_flow import Mesh, QueryCancelledError, QueryTimeoutError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# a nested-loop join of 100k x 100k rows that keeps emitting batches for far longer than the timeout
SLOW = "SELECT a.k, b.k AS k2 FROM big a JOIN big b ON (a.k * 7 + b.k) % 100000 = 0"


@pytest.fixture
def big_mesh(tmp_path: Path) -> Iterator[tuple[Mesh, Path]]:
    """Two local workers (work dirs below the returned folder) with ``big``: k = 0 .. 99,999."""
    data = tmp_path / "big.parquet"
    pq.write_table(pa.table({"k": pa.array(range(100_000), pa.int64())}), data)
    work = tmp_path / "mesh"
    work.mkdir()
    with local_mesh(workers=2, min_task_bytes=1, work_dir=work) as mesh:
        mesh.register_parquet("big", data)
        yield mesh, work


def test_timeout_cancels_the_query_everywhere(big_mesh: tuple[Mesh, Path]) -> None:
    mesh, work = big_mesh
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="timed out"):
        mesh.sql(SLOW, timeout=1.5)
    assert time.monotonic() - started < 15
    wait_until(lambda: not query_dirs(work / next(work.iterdir()).name / "work"), 15, "no files left")
    # the peers stopped the cancelled tasks and answer the next query at once
    started = time.monotonic()
    assert mesh.sql("SELECT count(*) AS n FROM big").column("n").to_pylist() == [100_000]
    assert time.monotonic() - started < 10


def test_a_stop_callback_cancels_the_query_everywhere(big_mesh: tuple[Mesh, Path]) -> None:
    # what a Flight SQL gateway passes for "the client has gone": polled while the stages run
    mesh, work = big_mesh
    started = time.monotonic()
    with pytest.raises(QueryCancelledError, match=r"was stopped with \d+ tasks running"):
        list(mesh.sql_batches(SLOW, stop=lambda: time.monotonic() - started > 1.0))
    assert time.monotonic() - started < 15
    wait_until(lambda: not query_dirs(work / next(work.iterdir()).name / "work"), 15, "no files left")
    assert mesh.sql("SELECT count(*) AS n FROM big").column("n").to_pylist() == [100_000]
