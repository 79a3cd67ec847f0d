"""``flow demo`` (what ``make demo`` runs): TPC-H on a local mesh, checked against DataFusion."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import pyarrow as pa
from datafusion import SessionContext

from ematix_flow import Mesh
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

DEFAULT_QUERIES = "q01,q03,q05,q10,q18"
_CELL = 24


@click.command("demo")
@click.option("--sf", type=float, default=0.1, show_default=True, help="TPC-H scale factor.")
@click.option("--workers", type=int, default=3, show_default=True, help="flow-worker processes to start.")
@click.option("--queries", default=DEFAULT_QUERIES, show_default=True, help="TPC-H queries to run.")
def demo(sf: float, workers: int, queries: str) -> None:
    """Run a few TPC-H queries on a local mesh and check each answer against DataFusion.

    Starts --workers flow-worker processes on 127.0.0.1 with fresh mTLS certificates, generates
    TPC-H at scale factor --sf into data/tpch-sf{SF} under the current folder (once; reused
    afterwards), then for every query prints its stage plan, the mesh's and single-process
    DataFusion's time, whether the two answers are equal, the peers its tasks ran on and its first
    rows; a summary closes. Exits 1 if any answer differs.

    \b
    Examples:
      flow demo
      flow demo --sf 1 --workers 2 --queries q01,q09
    """  # noqa: D301
    if not run(sf, workers, queries):
        sys.exit(1)


def run(sf: float, workers: int, query_spec: str) -> bool:
    """Run the demo; True when every mesh answer equals DataFusion's."""
    selected = tpch.select_queries(query_spec)
    data = tpch.default_data_dir(sf)
    if tpch.is_generated(data):
        click.echo(f"Using TPC-H SF {sf:g} in {data}")
    else:
        click.echo(f"Generating TPC-H SF {sf:g} into {data} ...")
        started = time.perf_counter()
        tpch.generate(sf, data)
        click.echo(f"  done in {time.perf_counter() - started:.1f} s")
    local = SessionContext()
    tpch.register_all(local, data)

    summary: list[tuple[str, float, float, bool, int]] = []
    click.echo(f"Starting a local mesh of {workers} flow-worker processes (mTLS on 127.0.0.1) ...")
    with Mesh.local(workers=workers) as mesh:
        for peer in mesh.workers:
            click.echo(f"  worker pid {peer.pid} at {peer.address}")
        tpch.register_all(mesh, data)
        for name, sql in selected.items():
            click.echo(f"\n=== {name} " + "=" * 60)
            click.echo(mesh.explain(sql))
            started = time.perf_counter()
            answer = mesh.sql(sql)
            mesh_s = time.perf_counter() - started
            report = mesh.last_run
            peers = sorted(report.peers_used) if report is not None else []
            started = time.perf_counter()
            expected = local.sql(sql).to_arrow_table()
            local_s = time.perf_counter() - started
            diff = compare_tables(answer, expected, ordered=query_is_ordered(sql))
            click.echo(f"mesh {mesh_s:.3f} s | single-process DataFusion {local_s:.3f} s")
            click.echo("answers equal" if diff is None else f"ANSWERS DIFFER: {diff}")
            click.echo(f"tasks ran on {len(peers)} peer(s): {', '.join(peers) or '-'}")
            click.echo(format_rows(answer))
            summary.append((name, mesh_s, local_s, diff is None, len(peers)))

    click.echo("\n=== summary (one cold run each; see bench/ for measured numbers) ===")
    click.echo(f"{'query':<6} {'mesh s':>8} {'datafusion s':>13} {'peers':>6}  equal")
    for name, mesh_s, local_s, equal, npeers in summary:
        click.echo(f"{name:<6} {mesh_s:>8.3f} {local_s:>13.3f} {npeers:>6}  {'yes' if equal else 'NO'}")
    return all(row[3] for row in summary)


def format_rows(table: pa.Table, limit: int = 5) -> str:
    """The first ``limit`` rows of ``table`` as a plain aligned text table."""
    head = table.slice(0, limit).to_pylist()
    names = table.column_names
    cells = [[_cell(row[n]) for n in names] for row in head]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    if table.num_rows > limit:
        lines.append(f"... {table.num_rows} rows in all")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "NULL" if value is None else str(value)
    return text if len(text) <= _CELL else text[: _CELL - 3] + "..."
