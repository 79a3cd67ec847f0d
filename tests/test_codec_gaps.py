"""Plans DataFusion 55's codec cannot carry run in-process; everything else still runs on the peers.

Two families gave wrong answers on the mesh: window functions with IGNORE NULLS (the codec drops the
flag, peers computed RESPECT NULLS) and GROUPING SETS (()) (the codec turns the partial aggregate's
``gby=[()]`` into ``gby=[]``: no row instead of one). ``plan_query`` now refuses to ship such a plan
(``coordinator_lib/codec.py``). Each query runs on a real 3-peer mesh that distributes everything it
can (``min_task_bytes=1``, no adaptive gate), planned with 1, 2 and 4 partitions, and must equal
single-process DataFusion; the RESPECT NULLS and non-empty grouping-set forms must still run as stages.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionConfig, SessionContext
from support import local_mesh

from ematix_flow import Mesh
from ematix_flow.workloads.compare import compare_tables

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FILES = 3
ROWS_PER_FILE = 40

FUNCTIONS = {
    "first_value": "first_value(v)",
    "last_value": "last_value(v)",
    "nth_value": "nth_value(v, 2)",
    "lag": "lag(v)",
    "lead": "lead(v)",
}
FRAMES = ["ROWS", "RANGE", "GROUPS"]
TREATMENTS = ["IGNORE NULLS", "RESPECT NULLS"]

#: Every grouping-set form, and whether it must run in-process (only grouping by nothing but ()).
_MEASURES = "count(*) AS n, sum(v) AS s"
_AB = f"a, b, {_MEASURES}, grouping(a) AS ga, grouping(b) AS gb"
GROUPINGS: dict[str, tuple[str, bool]] = {
    "empty": (f"SELECT {_MEASURES} FROM t GROUP BY GROUPING SETS (())", True),
    "empty_twice": (f"SELECT {_MEASURES} FROM t GROUP BY GROUPING SETS ((), ())", True),
    "empty_no_rows": (f"SELECT {_MEASURES} FROM t WHERE k < 0 GROUP BY GROUPING SETS (())", True),
    "a_and_empty": (
        f"SELECT a, {_MEASURES}, grouping(a) AS ga FROM t GROUP BY GROUPING SETS ((a), ())",
        False,
    ),
    "a_and_b": (f"SELECT {_AB} FROM t GROUP BY GROUPING SETS ((a), (b))", False),
    "ab_a_empty": (f"SELECT {_AB} FROM t GROUP BY GROUPING SETS ((a, b), (a), ())", False),
    "rollup": (f"SELECT {_AB} FROM t GROUP BY ROLLUP (a, b)", False),
    "cube": (f"SELECT {_AB} FROM t GROUP BY CUBE (a, b)", False),
}


def window_sql(function: str, treatment: str, frame: str) -> str:
    """``function`` over the whole table and per group, both ordered by the unique key ``k``."""
    call = f"{FUNCTIONS[function]} {treatment}"
    bounds = f"{frame} BETWEEN 1 PRECEDING AND 1 FOLLOWING"
    return (
        f"SELECT k, {call} OVER (ORDER BY k {bounds}) AS whole, "
        f"{call} OVER (PARTITION BY a ORDER BY k {bounds}) AS per_group FROM t"
    )


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def table_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Table ``t``: unique keys with uneven gaps (RANGE differs from ROWS), half the values NULL, in
    several files so that every plan scans more than one partition."""
    base = tmp_path_factory.mktemp("codec-gaps") / "t"
    base.mkdir()
    rng = random.Random(55)
    for f in range(FILES):
        ids = range(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE)
        pq.write_table(
            pa.table(
                {
                    "k": [i + i // 2 for i in ids],  # gaps of 1 and 2
                    "v": [rng.randint(1, 99) if rng.random() < 0.5 else None for _ in ids],
                    "a": [rng.choice([1, 2, 3, None]) for _ in ids],
                    "b": [rng.choice(["x", "y", None]) for _ in ids],
                }
            ),
            base / f"part-{f}.parquet",
        )
    yield base
    shutil.rmtree(base.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def expected(table_dir: Path) -> Callable[[str], pa.Table]:
    """Single-process DataFusion's answer to a query."""
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    ctx.register_parquet("t", str(table_dir))
    return lambda sql: ctx.sql(sql).to_arrow_table()


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda p: f"p{p}")
def mesh(
    request: pytest.FixtureRequest, table_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """3 peers that distribute every stage they can, planned with ``request.param`` partitions."""
    base = tmp_path_factory.mktemp(f"codec-gaps-mesh-p{request.param}")
    options = {"workers": 3, "min_task_bytes": 1, "local_below_bytes": 0, "partitions": request.param}
    with local_mesh(**options, work_dir=base) as m:
        m.register_parquet("t", str(table_dir))
        yield m
    shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- checks
def _check(mesh: Mesh, expected: Callable[[str], pa.Table], sql: str, in_process: str | None) -> None:
    """The mesh's answer equals DataFusion's; it ran in-process for ``in_process`` (a reason's words),
    else as a stage graph (on the peers whenever the plan has more than one partition)."""
    got = mesh.sql(sql)
    diff = compare_tables(got, expected(sql), ordered=False)
    assert diff is None, diff
    run = mesh.last_run
    assert run is not None
    if in_process is not None:
        assert run.graph is None and in_process in run.note, f"expected in-process ({in_process}):\n{run}"
        assert in_process in mesh.explain(sql).splitlines()[0]
        return
    assert run.graph is not None and not run.note, f"expected stages, ran in-process: {run.note}"
    if mesh.partitions > 1:
        assert run.distributed, f"expected tasks on the peers:\n{run}"


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("treatment", TREATMENTS, ids=["ignore", "respect"])
@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_window_null_treatment(
    mesh: Mesh, expected: Callable[[str], pa.Table], function: str, treatment: str, frame: str
) -> None:
    sql = window_sql(function, treatment, frame)
    ignore = treatment == "IGNORE NULLS"
    _check(mesh, expected, sql, "drops IGNORE NULLS" if ignore else None)


@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_the_data_tells_ignore_from_respect_nulls(expected: Callable[[str], pa.Table], function: str) -> None:
    # without this the window tests could not see the codec's loss
    for frame in FRAMES:
        ignore, respect = (expected(window_sql(function, t, frame)) for t in TREATMENTS)
        assert compare_tables(ignore, respect, ordered=False) is not None, (function, frame)


@pytest.mark.parametrize("form", list(GROUPINGS))
def test_grouping_sets(mesh: Mesh, expected: Callable[[str], pa.Table], form: str) -> None:
    sql, in_process = GROUPINGS[form]
    _check(mesh, expected, sql, "gby=[]" if in_process else None)
