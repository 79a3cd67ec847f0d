"""``python -m bench``: TPC-H / TPC-DS on several engines, interleaved, validated; JSON, Markdown, PNG.

python -m bench tpch --sf 1 --engines mesh,datafusion,duckdb,pyspark --workers 2 --runs 3 --out results/
python -m bench tpcds --sf 1 --engines mesh,datafusion,duckdb --queries q03,q07
python -m bench tpch --sf 1 --scaling --runs 3      # 1 worker on core 0 vs 2 workers on cores 0 and 1
python -m bench publish tpch_sf1 tpch_sf1_scaling   # results/ -> docs/bench/ and docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import engines as registry
from bench.engines import DataFusionEngine, Engine, EngineOptions, EngineUnavailable, UnknownEngine
from bench.machine import cpu_seconds, git_state, machine
from bench.memory import RssSampler
from bench.publish import publish
from bench.report import SCALING, TITLES, Meta, markdown, write_json
from bench.runner import QueryResult, run_queries
from bench.suites import SUITES
from ematix_flow.errors import FlowError

__all__ = ["main", "run"]

DEFAULT_ENGINES = "mesh,datafusion,duckdb"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUITES:
        p = sub.add_parser(name, help=f"run {name.upper()} on several engines")
        p.add_argument("--sf", type=float, default=1.0, help="scale factor (default 1)")
        p.add_argument(
            "--engines",
            default=DEFAULT_ENGINES,
            help=f"comma-separated, run in this order; known: {', '.join(registry.ENGINES)} "
            f"(default {DEFAULT_ENGINES})",
        )
        p.add_argument("--workers", type=int, default=2, help="flow-worker processes of `mesh` (default 2)")
        p.add_argument("--runs", type=int, default=3, help="timed runs per engine and query (default 3)")
        p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
        p.add_argument("--data", type=Path, default=None, help=f"data folder (default data/{name}-sf<SF>)")
        p.add_argument("--queries", default=None, help="e.g. q01,q05 (default: all)")
        p.add_argument("--partitions", type=int, default=None, help="Mesh.local(partitions=)")
        p.add_argument("--min-task-bytes", type=int, default=None, help="Mesh.local(min_task_bytes=)")
        p.add_argument("--log-level", default="warning", help="flow-worker log level (default warning)")
        p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
        p.add_argument("--sample-interval", type=float, default=0.05, help="RSS sampling period, s")
        p.add_argument(
            "--scaling",
            "--pin",
            action="store_true",
            help=f"run {' vs '.join(SCALING)} instead of --engines (pins CPUs; writes *_scaling.*)",
        )
        p.add_argument("--no-chart", action="store_true", help="skip the PNG")
        p.add_argument(
            "--storage",
            choices=["local", "s3"],
            default="local",
            help="s3: also run mesh-s3 and datafusion-s3 (the data in a moto S3 server on loopback) beside "
            "mesh and datafusion on local files",
        )
    p = sub.add_parser("publish", help="copy results into docs/bench and paste the tables into the doc")
    p.add_argument("stems", nargs="+", help="e.g. tpch_sf1 tpch_sf1_scaling")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--dest", type=Path, default=Path("docs/bench"))
    p.add_argument("--doc", type=Path, default=Path("docs/BENCHMARKS.md"))
    return parser


def _options(args: argparse.Namespace) -> EngineOptions:
    conf = dict(item.split("=", 1) for item in args.spark_conf if "=" in item)
    return EngineOptions(args.workers, args.partitions, args.min_task_bytes, args.log_level, conf)


def _start_engines(
    names: Sequence[str],
    options: EngineOptions,
    data: Path,
    tables: Sequence[str],
    stack: contextlib.ExitStack,
) -> tuple[list[Engine], dict[str, str], dict[str, dict[str, object]]]:
    started: list[Engine] = []
    skipped: dict[str, str] = {}
    info: dict[str, dict[str, object]] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            engine = registry.create(name, options)
            stack.callback(engine.close)
            print(f"starting {name} ...", flush=True)
            engine.start(data, tables)
        except EngineUnavailable as exc:
            print(f"skipping {name}: {exc}", flush=True)
            skipped[name] = str(exc)
            continue
        info[name] = {"version": engine.version(), "start_s": time.perf_counter() - t0, **engine.info()}
        started.append(engine)
    return started, skipped, info


def _progress(result: QueryResult) -> None:
    parts = [result.query]
    for name, res in result.engines.items():
        shown = f"{res.median_s:.3f}s" if res.median_s is not None else "-"
        flag = "" if res.valid else (" ERROR" if res.error else (" DIFFERS" if res.valid is False else " ?"))
        parts.append(f"{name} {shown}{flag}")
    print("  ".join(parts), flush=True)


def run(args: argparse.Namespace) -> tuple[Meta, list[QueryResult]]:
    """Run the benchmark ``args`` describe and write ``<out>/<bench>_sf<SF>[_scaling].{json,md,png}``.

    Raises:
        UnknownEngine: an engine name is not known.
        FlowError: data generation or a query name failed.
    """
    suite = SUITES[args.command]
    names = list(SCALING) if args.scaling else registry.parse_names(args.engines)
    if getattr(args, "storage", "local") == "s3":  # each local engine's twin over a bucket, beside it
        for local, remote in (("mesh", "mesh-s3"), ("datafusion", "datafusion-s3")):
            if remote not in names:
                names.insert(names.index(local) + 1 if local in names else len(names), remote)
    queries = suite.select(args.queries)
    data: Path = args.data or suite.default_data_dir(args.sf)
    suite.generate(args.sf, data)
    meta = Meta(args.command, args.sf, [], machine=machine(), git=git_state())
    meta.settings = {
        "runs": args.runs,
        "warmup": 1,
        "workers": 1 if args.scaling else args.workers,
        "scaling": args.scaling,
        "engines_requested": names,
        "queries": list(queries),
        "data": str(data.resolve()),
        "reference": "datafusion (single process, its warm-up answer)",
        "sample_interval_s": args.sample_interval,
    }
    with contextlib.ExitStack() as stack:
        engines, meta.skipped, meta.engine_info = _start_engines(
            names, _options(args), data, suite.tables, stack
        )
        if not engines:
            raise EngineUnavailable(f"no engine could start: {meta.skipped}")
        meta.engines = [e.name for e in engines]
        reference = next((e for e in engines if e.name == "datafusion"), None)
        if reference is None:
            reference = DataFusionEngine(_options(args), name="datafusion (reference, untimed)")
            stack.callback(reference.close)
            reference.start(data, suite.tables)
        sampler = stack.enter_context(RssSampler(args.sample_interval))
        meta.load_before = list(os.getloadavg())
        meta.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (busy0, ours0), t0 = cpu_seconds(), time.perf_counter()
        results = run_queries(queries, engines, reference, args.runs, sampler, _progress)
        (busy1, ours1), meta.wall_s = cpu_seconds(), time.perf_counter() - t0
        meta.other_cpu_s = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        meta.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta.load_after = list(os.getloadavg())
    _write(args, meta, results)
    return meta, results


def _write(args: argparse.Namespace, meta: Meta, results: list[QueryResult]) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{meta.benchmark}_sf{meta.sf:g}" + ("_scaling" if args.scaling else "")
    paths = {suffix: out / f"{stem}{suffix}" for suffix in (".json", ".md", ".png")}
    write_json(paths[".json"], meta, results)
    text = markdown(meta, results)
    paths[".md"].write_text(text)
    written = [paths[".json"], paths[".md"]]
    if not args.no_chart:
        try:
            from bench.chart import write_chart

            title = f"{TITLES[meta.benchmark]} SF {meta.sf:g}, median of {args.runs} runs"
            title += ": 1 worker on 1 core vs 2 workers on 2 cores" if args.scaling else ""
            write_chart(paths[".png"], results, meta.engines, title)
            written.append(paths[".png"])
        except ImportError as exc:
            print(f"no chart: {exc} (pip install -e '.[bench]')", file=sys.stderr)
    print("\n" + text)
    print("wrote " + ", ".join(map(str, written)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, 1 if an answer differed or a mesh query failed, 2 on a usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "publish":
        try:
            for path in publish(args.results, args.stems, args.dest, args.doc):
                print(f"wrote {path}")
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    try:
        meta, results = run(args)
    except UnknownEngine as exc:
        parser.error(str(exc))
    except (FlowError, EngineUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    strict = [e for e in meta.engines if e.startswith("mesh")]
    bad = any(
        res.valid is False or (name in strict and res.error)
        for r in results
        for name, res in r.engines.items()
    )
    return 1 if bad else 0
