"""``make demo``: a few TPC-H queries on a local 3-worker mesh, checked against single-process DataFusion.

Run as ``python -m ematix_flow.demo [--sf 0.1] [--workers 3] [--queries q01,q03]``. Data is generated
into ``data/tpch-sf{SF}`` under the current folder once and reused afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ematix_flow import tpch
from ematix_flow.compare import compare_tables, query_is_ordered
from ematix_flow.errors import FlowError

DEFAULT_QUERIES = "q01,q03,q05,q10,q18"
_CELL = 24


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


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ematix_flow.demo", description=__doc__)
    parser.add_argument("--sf", type=float, default=0.1, help="TPC-H scale factor (default 0.1)")
    parser.add_argument("--workers", type=int, default=3, help="flow-worker processes (default 3)")
    parser.add_argument("--queries", default=DEFAULT_QUERIES, help=f"default {DEFAULT_QUERIES}")
    return parser.parse_args(argv)


def run(sf: float, workers: int, query_spec: str) -> bool:
    """Run the demo; True when every mesh answer equals DataFusion's."""
    selected = tpch.select_queries(query_spec)

    from datafusion import SessionContext

    from ematix_flow import Mesh  # type: ignore[attr-defined,unused-ignore]

    data = tpch.default_data_dir(sf)
    if tpch.is_generated(data):
        print(f"Using TPC-H SF {sf:g} in {data}")
    else:
        print(f"Generating TPC-H SF {sf:g} into {data} ...", flush=True)
        started = time.perf_counter()
        tpch.generate(sf, data)
        print(f"  done in {time.perf_counter() - started:.1f} s")
    local = SessionContext()
    tpch.register_all(local, data)

    summary: list[tuple[str, float, float, bool, int]] = []
    print(f"Starting a local mesh of {workers} flow-worker processes (mTLS on 127.0.0.1) ...", flush=True)
    with Mesh.local(workers=workers) as mesh:
        for peer in mesh.workers:
            print(f"  worker pid {peer.pid} at {peer.address}")
        tpch.register_all(mesh, data)
        for name, sql in selected.items():
            print(f"\n=== {name} " + "=" * 60)
            print(mesh.explain(sql))
            started = time.perf_counter()
            answer = mesh.sql(sql)
            mesh_s = time.perf_counter() - started
            report = mesh.last_run
            peers = sorted(report.peers_used) if report is not None else []
            started = time.perf_counter()
            expected = local.sql(sql).to_arrow_table()
            local_s = time.perf_counter() - started
            diff = compare_tables(answer, expected, ordered=query_is_ordered(sql))
            print(f"mesh {mesh_s:.3f} s | single-process DataFusion {local_s:.3f} s")
            print("answers equal" if diff is None else f"ANSWERS DIFFER: {diff}")
            print(f"tasks ran on {len(peers)} peer(s): {', '.join(peers) or '-'}")
            print(format_rows(answer))
            summary.append((name, mesh_s, local_s, diff is None, len(peers)))

    print("\n=== summary (one cold run each; see bench/ for measured numbers) ===")
    print(f"{'query':<6} {'mesh s':>8} {'datafusion s':>13} {'peers':>6}  equal")
    for name, mesh_s, local_s, equal, npeers in summary:
        print(f"{name:<6} {mesh_s:>8.3f} {local_s:>13.3f} {npeers:>6}  {'yes' if equal else 'NO'}")
    return all(row[3] for row in summary)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 all equal, 1 a difference, 2 a FlowError)."""
    args = _parse(argv)
    try:
        return 0 if run(args.sf, args.workers, args.queries) else 1
    except FlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
