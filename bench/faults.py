"""Kill one peer at a random moment during each TPC-H query and check the answer.

    python -m bench.faults --sf 0.1 --workers 3 --seed 1

For every query: a baseline run on a fresh 3-peer mesh, then the same query on another fresh mesh
while one peer (chosen at random) is SIGKILLed after a random fraction of the baseline time. Prints
per query: equal or not, whether the kill landed mid-query, retries, and the extra time; then totals.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from datafusion import SessionConfig, SessionContext

from ematix_flow import Mesh
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered


@dataclass
class KillResult:
    """One query with one peer killed while it ran."""

    query: str
    equal: bool
    landed: bool  # the peer died while the query ran (else it had finished first)
    retries: int
    baseline_s: float
    killed_s: float
    error: str = ""


def run_with_kill(mesh: Mesh, sql: str, delay: float, victim: int) -> tuple[pa.Table | None, str, float]:
    """Run ``sql`` and SIGKILL worker ``victim`` after ``delay`` seconds: (result, error, seconds)."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["table"] = mesh.sql(sql, timeout=120)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"

    started = time.perf_counter()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(delay)
    mesh.workers[victim].process.kill()
    thread.join(180)
    seconds = time.perf_counter() - started
    table = out.get("table")
    return (table if isinstance(table, pa.Table) else None), str(out.get("error", "")), seconds


def kill_one(
    name: str, sql: str, data: Path, workers: int, rng: random.Random, expected: pa.Table
) -> KillResult:
    """Baseline, then a run with one peer killed at a random moment."""
    with Mesh.local(workers=workers, min_task_bytes=1) as mesh:
        tpch.register_all(mesh, data)
        mesh.sql(sql)  # warm
        t0 = time.perf_counter()
        mesh.sql(sql)
        baseline = time.perf_counter() - t0
    with Mesh.local(workers=workers, min_task_bytes=1) as mesh:
        tpch.register_all(mesh, data)
        victim = rng.randrange(workers)
        table, error, seconds = run_with_kill(mesh, sql, rng.uniform(0.0, baseline), victim)
        run = mesh.last_run
        landed = bool(run and run.peers_lost)
        retries = run.retries if run else 0
    equal = table is not None and compare_tables(table, expected, ordered=query_is_ordered(sql)) is None
    return KillResult(name, equal, landed, retries, baseline, seconds, error)


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sf", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", type=Path)
    a = ap.parse_args()
    data = tpch.generate(a.sf, a.data or tpch.default_data_dir(a.sf))
    ref = SessionContext(SessionConfig().with_target_partitions(2))
    tpch.register_all(ref, data)
    rng = random.Random(a.seed)
    results = []
    for name, sql in tpch.queries().items():
        r = kill_one(name, sql, data, a.workers, rng, ref.sql(sql).to_arrow_table())
        results.append(r)
        verdict = "equal" if r.equal else f"WRONG {r.error}"
        print(
            f"{name}  {verdict}  kill {'mid-query' if r.landed else 'after the end'}  retries={r.retries}  "
            f"baseline {r.baseline_s:.3f}s  with kill {r.killed_s:.3f}s",
            flush=True,
        )
    landed = [r for r in results if r.landed]
    extra = sum(r.killed_s - r.baseline_s for r in landed)
    print(
        f"{sum(r.equal for r in results)}/{len(results)} equal; {len(landed)} kills landed mid-query; "
        f"{sum(r.retries for r in results)} tasks re-run; extra time over those queries {extra:.2f}s"
    )
    raise SystemExit(0 if all(r.equal for r in results) else 1)


if __name__ == "__main__":
    main()
