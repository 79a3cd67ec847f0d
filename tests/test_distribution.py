"""Where work runs: scans run on the peers, never on the submitter, whatever the plan's shape."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from ematix_flow import Mesh
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = pytest.mark.integration

QUERIES = {
    # no exchange at all above the scan: the whole plan is one stage the peers run
    "filter": "SELECT l_orderkey, l_comment FROM lineitem WHERE l_quantity > 49",
    "projection": "SELECT o_orderkey * 2 AS k FROM orders WHERE o_totalprice > 400000",
    "limit": "SELECT l_orderkey FROM lineitem WHERE l_discount = 0.1 LIMIT 5",
    "ordered": "SELECT o_orderkey, o_totalprice FROM orders WHERE o_totalprice > 450000 ORDER BY 2 DESC",
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_scans_run_on_the_peers(tpch_mesh: Mesh, reference: Callable[[str], pa.Table], name: str) -> None:
    sql = QUERIES[name]
    got = tpch_mesh.sql(sql)
    expected = reference(sql)
    if name == "limit":  # any 5 qualifying rows are a right answer
        assert got.num_rows == 5
        every = reference(sql.replace(" LIMIT 5", "")).column(0).to_pylist()
        assert set(got.column(0).to_pylist()) <= set(every)
    else:
        assert compare_tables(got, expected, ordered=query_is_ordered(sql)) is None
    run = tpch_mesh.last_run
    assert run is not None
    root = run.stages[-1]
    assert root.kind == "root" and not root.tasks
    assert len(run.peers_used) > 1, str(run)


def test_explain_shows_the_gather_of_a_scan_only_plan(tpch_mesh: Mesh) -> None:
    text = tpch_mesh.explain(QUERIES["filter"])
    assert "gather from stage 0" in text
    assert text.count("Stage ") == 2


def test_adaptive_gate_runs_small_queries_in_process(
    tpch_mesh: Mesh, reference: Callable[[str], pa.Table], tpch_data: Path
) -> None:
    sql = (
        "SELECT n_name, count(*) AS c FROM nation JOIN supplier ON n_nationkey = s_nationkey GROUP BY n_name"
    )
    with Mesh(tpch_mesh.peers, tpch_mesh.tls, local_below_bytes=64 << 20) as gated:
        tpch.register_all(gated, tpch_data)
        assert "in-process" in gated.explain(sql).splitlines()[0]
        got = gated.sql(sql)
        run = gated.last_run
        assert run is not None and not run.distributed and "adaptive gate" in str(run)
        assert compare_tables(got, reference(sql), ordered=False) is None
    # the same query on a mesh without the gate is distributed
    tpch_mesh.sql(sql)
    assert tpch_mesh.last_run is not None and tpch_mesh.last_run.distributed
