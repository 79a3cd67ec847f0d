"""TPC-H on a local ematix-flow mesh vs single-process DataFusion.

    python -m bench.tpch_vs_datafusion --sf 1 --workers 2 --runs 3 --out results/

For each query the two engines run interleaved (candidate, reference, candidate, ...): one warm-up each,
then ``--runs`` timed runs; the median is kept. The candidate's answer is validated against DataFusion's.
Writes ``results/tpch_sf{SF}_w{WORKERS}.json`` and ``.md`` and prints the Markdown table.
``--candidate datafusion-1`` benchmarks a one-partition DataFusion instead of the mesh (a harness check
that needs no workers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import datafusion
import pyarrow as pa
from datafusion import SessionConfig, SessionContext

import ematix_flow
from ematix_flow import tpch
from ematix_flow.compare import compare_tables, query_is_ordered
from ematix_flow.errors import FlowError


class Engine(Protocol):
    """Something that runs SQL over the registered TPC-H tables."""

    name: str

    def run(self, sql: str) -> pa.Table:
        """Run ``sql`` to completion and return its answer."""
        ...

    def details(self) -> dict[str, Any]:
        """Facts about the last run worth recording (e.g. the peers used)."""
        ...


class DataFusionEngine:
    """Single-process DataFusion over the Parquet files."""

    def __init__(self, name: str, data: Path, partitions: int | None) -> None:
        config = SessionConfig().with_target_partitions(partitions or os.cpu_count() or 1)
        self.name = name
        self.ctx = SessionContext(config)
        tpch.register_all(self.ctx, data)

    def run(self, sql: str) -> pa.Table:
        return self.ctx.sql(sql).to_arrow_table()

    def details(self) -> dict[str, Any]:
        return {}


class MeshEngine:
    """An ematix-flow mesh (any object with ``sql`` and ``last_run``)."""

    def __init__(self, mesh: Any, data: Path) -> None:
        self.name = "mesh"
        self.mesh = mesh
        tpch.register_all(mesh, data)

    def run(self, sql: str) -> pa.Table:
        table: pa.Table = self.mesh.sql(sql)
        return table

    def details(self) -> dict[str, Any]:
        report = self.mesh.last_run
        return {
            "peers_used": sorted(report.peers_used),
            "distributed": bool(report.distributed),
            "report_seconds": float(report.seconds),
        }


@dataclass
class QueryResult:
    """Timings and validation of one query."""

    query: str
    candidate_runs: list[float] = field(default_factory=list)
    reference_runs: list[float] = field(default_factory=list)
    equal: bool = False
    diff: str | None = None
    error: str | None = None
    rows: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def candidate_s(self) -> float | None:
        return statistics.median(self.candidate_runs) if self.candidate_runs else None

    @property
    def reference_s(self) -> float | None:
        return statistics.median(self.reference_runs) if self.reference_runs else None

    @property
    def ratio(self) -> float | None:
        c, r = self.candidate_s, self.reference_s
        return c / r if c is not None and r else None


def _timed(engine: Engine, sql: str) -> tuple[float, pa.Table]:
    started = time.perf_counter()
    table = engine.run(sql)
    return time.perf_counter() - started, table


def run_query(candidate: Engine, reference: Engine, name: str, sql: str, runs: int) -> QueryResult:
    """Warm up both engines once, validate, then time ``runs`` interleaved runs of each."""
    result = QueryResult(name)
    try:
        _, actual = _timed(candidate, sql)
        _, expected = _timed(reference, sql)
        result.rows = actual.num_rows
        result.diff = compare_tables(actual, expected, ordered=query_is_ordered(sql))
        result.equal = result.diff is None
        result.details = candidate.details()
        for _ in range(runs):
            seconds, _ = _timed(candidate, sql)
            result.candidate_runs.append(seconds)
            seconds, _ = _timed(reference, sql)
            result.reference_runs.append(seconds)
    except Exception as exc:  # a failing query is recorded, the suite goes on
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return result


def run_suite(
    candidate: Engine, reference: Engine, queries: dict[str, str], runs: int
) -> Iterator[QueryResult]:
    """Run every query in turn (see :func:`run_query`)."""
    for name, sql in queries.items():
        yield run_query(candidate, reference, name, sql, runs)


def geomean(values: Sequence[float]) -> float | None:
    positive = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: Sequence[QueryResult], candidate: str, reference: str) -> str:
    lines = [
        f"| query | {candidate} s | {reference} s | ratio | equal |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        equal = "error" if r.error else ("yes" if r.equal else "NO")
        lines.append(
            f"| {r.query} | {_fmt(r.candidate_s)} | {_fmt(r.reference_s)} | {_fmt(r.ratio, 2)} | {equal} |"
        )
    timed = [r for r in results if r.candidate_s is not None and r.reference_s is not None]
    g_cand = geomean([r.candidate_s for r in timed if r.candidate_s is not None])
    g_ref = geomean([r.reference_s for r in timed if r.reference_s is not None])
    g_ratio = g_cand / g_ref if g_cand is not None and g_ref else None
    n_equal = sum(r.equal for r in results)
    lines.append(
        f"| geomean ({len(timed)} q) | {_fmt(g_cand)} | {_fmt(g_ref)} | {_fmt(g_ratio, 2)} "
        f"| {n_equal}/{len(results)} |"
    )
    return "\n".join(lines)


def total_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def environment() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": total_memory(),
        "versions": {
            "ematix_flow": ematix_flow.__version__,
            "datafusion": datafusion.__version__,
            "pyarrow": pa.__version__,
        },
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tpch_vs_datafusion", description=__doc__)
    parser.add_argument("--sf", type=float, default=1.0, help="TPC-H scale factor (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="flow-worker processes (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine and query (default 3)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    parser.add_argument("--data", type=Path, default=None, help="data folder (default data/tpch-sf{SF})")
    parser.add_argument("--queries", default=None, help="e.g. q01,q05 (default all 22)")
    parser.add_argument("--partitions", type=int, default=None, help="passed to Mesh.local(partitions=)")
    parser.add_argument(
        "--candidate",
        choices=["mesh", "datafusion-1"],
        default="mesh",
        help="engine under test (datafusion-1: one-partition DataFusion, checks the harness)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    return args


@contextlib.contextmanager
def _candidate(args: argparse.Namespace, data: Path) -> Iterator[Engine]:
    if args.candidate == "datafusion-1":
        yield DataFusionEngine("datafusion-1", data, 1)
        return
    from ematix_flow import Mesh  # type: ignore[attr-defined,unused-ignore]

    options: dict[str, Any] = {} if args.partitions is None else {"partitions": args.partitions}
    with Mesh.local(workers=args.workers, **options) as mesh:
        yield MeshEngine(mesh, data)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    data: Path = args.data or tpch.default_data_dir(args.sf)
    try:
        selected = tpch.select_queries(args.queries)
        started = time.perf_counter()
        generated = not tpch.is_generated(data)
        tpch.generate(args.sf, data)
        gen_s = time.perf_counter() - started if generated else None
        reference = DataFusionEngine("datafusion", data, None)
        results: list[QueryResult] = []
        with _candidate(args, data) as candidate:
            for result in run_suite(candidate, reference, selected, args.runs):
                status = result.error or ("equal" if result.equal else f"DIFFERS: {result.diff}")
                print(
                    f"{result.query}: {candidate.name} {_fmt(result.candidate_s)} s, "
                    f"datafusion {_fmt(result.reference_s)} s, {status}",
                    flush=True,
                )
                results.append(result)
    except FlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(results, candidate.name, reference.name)
    stem = f"tpch_sf{args.sf:g}_w{args.workers}" + ("" if args.candidate == "mesh" else f"_{args.candidate}")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "tpch_vs_datafusion",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "sf": args.sf,
            "workers": args.workers,
            "runs": args.runs,
            "warmup": 1,
            "partitions": args.partitions,
            "candidate": args.candidate,
            "reference_target_partitions": os.cpu_count(),
            "data": str(data),
            "generation_seconds": gen_s,
        },
        "environment": environment(),
        "queries": [
            {
                **asdict(r),
                "candidate_s": r.candidate_s,
                "reference_s": r.reference_s,
                "ratio": r.ratio,
                "query_ordered": query_is_ordered(selected[r.query]),
            }
            for r in results
        ],
        "markdown": table,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(table + "\n")
    print()
    print(table)
    print(f"\nwrote {args.out / stem}.json and .md")
    return 0 if all(r.equal for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
