"""Benchmark results as a JSON document and Markdown tables (the chart is in :mod:`bench.chart`)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.runner import BENCH_PROCESS, EngineResult, QueryResult

__all__ = [
    "Meta",
    "common_valid",
    "document",
    "geomean",
    "markdown",
    "memory_table",
    "results_table",
    "scaling_table",
    "write_json",
]

REFERENCE = "datafusion"
TITLES = {"tpch": "TPC-H", "tpcds": "TPC-DS"}
SCALING = ("mesh-1core", "mesh-2core")
_MB = 1024 * 1024
_SHOWN = 160


@dataclass
class Meta:
    """What a run was: benchmark, settings, engines, machine, source tree, load."""

    benchmark: str
    sf: float
    engines: list[str]  # the engines that ran, in interleaving order
    settings: dict[str, Any] = field(default_factory=dict)
    engine_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> version, set-up
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it did not run
    machine: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    wall_s: float | None = None  # the timed part: warm-ups and runs of every query
    other_cpu_s: float | None = None  # CPU seconds other processes used meanwhile
    started_at: str = ""
    finished_at: str = ""


def geomean(values: Sequence[float]) -> float | None:
    """Geometric mean of positive values (None when there are none)."""
    positive = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else None


def common_valid(results: Sequence[QueryResult], engines: Sequence[str]) -> list[QueryResult]:
    """The queries every engine ran and answered equal to the reference."""
    return [r for r in results if all(r.engines[e].ok for e in engines if e in r.engines)]


def _median(r: QueryResult, engine: str) -> float:
    m = r.engines[engine].median_s
    assert m is not None
    return m


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(result: EngineResult) -> str:
    if result.error is not None:
        return "error"
    if result.valid is False:
        return "differs"
    if result.valid is None:
        return "unchecked"
    return "ok"


def _distributed(result: EngineResult) -> str:
    flags = [d["distributed"] for d in result.details if "distributed" in d]
    if not flags:
        return "-"
    return "yes" if all(flags) else ("no" if not any(flags) else "mixed")


def results_table(results: Sequence[QueryResult], engines: Sequence[str]) -> str:
    """query | each engine's median s | ratio to datafusion | distributed (mesh) | valid; geomean rows."""
    others = [e for e in engines if e != REFERENCE] if REFERENCE in engines else []
    dist = [e for e in engines if any(_distributed(r.engines[e]) != "-" for r in results)]
    head = ["query", *(f"{e} s" for e in engines), *(f"{e} / {REFERENCE}" for e in others)]
    head += [f"{e} distributed" for e in dist] + ["valid"]
    align = ["---", *["---:"] * (len(engines) + len(others)), *["---"] * (len(dist) + 1)]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for r in results:
        cells = [r.query, *(_f(r.engines[e].median_s) for e in engines)]
        for e in others:
            mine, ref = r.engines[e].median_s, r.engines[REFERENCE].median_s
            cells.append(_f(mine / ref, 2) if mine is not None and ref else "-")
        cells += [_distributed(r.engines[e]) for e in dist]
        bad = [f"{e}: {_verdict(r.engines[e])}" for e in engines if _verdict(r.engines[e]) != "ok"]
        cells.append("; ".join(bad) if bad else "yes")
        lines.append("| " + " | ".join(cells) + " |")
    common = common_valid(results, engines)
    n = len(common)
    g = {e: geomean([_median(r, e) for r in common]) for e in engines}
    cells = [f"geomean, {n} queries valid on every engine", *(_f(g[e]) for e in engines)]
    for e in others:
        ge, gr = g[e], g[REFERENCE]
        cells.append(_f(ge / gr, 2) if ge is not None and gr else "-")
    lines.append("| " + " | ".join(cells + [""] * (len(dist) + 1)) + " |")
    cells = [f"sum, same {n} queries", *(_f(sum(_median(r, e) for r in common)) for e in engines)]
    lines.append("| " + " | ".join(cells + [""] * (len(others) + len(dist) + 1)) + " |")
    cells = ["geomean, each engine's own valid queries (count)"]
    for e in engines:
        own = [_median(r, e) for r in results if r.engines[e].ok]
        cells.append(f"{_f(geomean(own))} ({len(own)})")
    for e in others:
        both = [r for r in results if r.engines[e].ok and r.engines[REFERENCE].ok]
        ratio = geomean([_median(r, e) / _median(r, REFERENCE) for r in both])
        cells.append(f"{_f(ratio, 2)} ({len(both)})")
    lines.append("| " + " | ".join(cells + [""] * (len(dist) + 1)) + " |")
    return "\n".join(lines)


def _memory_rows(results: Sequence[QueryResult], engine: str) -> dict[str, list[tuple[int, int]]]:
    rows: dict[str, list[tuple[int, int]]] = {}
    for r in results:
        for label, peak in r.engines[engine].memory.items():
            rows.setdefault(label, []).append((peak.peak_bytes, peak.delta_bytes))
    return rows


def _process_name(engine: str, label: str) -> str:
    if label != BENCH_PROCESS:
        return label
    return "bench process (submitter, root stage)" if engine.startswith("mesh") else "bench process"


def memory_table(results: Sequence[QueryResult], engines: Sequence[str]) -> str:
    """Per engine and process: the largest RSS, the largest growth within one query, the median growth."""
    lines = [
        "| engine | process | peak RSS MB | largest growth in a query MB | median growth per query MB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for engine in engines:
        for label, values in _memory_rows(results, engine).items():
            peak = max(p for p, _ in values) / _MB
            grow = max(d for _, d in values) / _MB
            median = statistics.median(d for _, d in values) / _MB
            name = _process_name(engine, label)
            lines.append(f"| {engine} | {name} | {peak:.0f} | {grow:.0f} | {median:.0f} |")
    return "\n".join(lines)


def scaling_table(results: Sequence[QueryResult], slow: str = SCALING[0], fast: str = SCALING[1]) -> str:
    """Sum and geomean of the medians of ``slow`` and ``fast`` over the queries both ran validly."""
    both = common_valid(results, [slow, fast])
    s1, s2 = (sum(_median(r, e) for r in both) for e in (slow, fast))
    g1, g2 = (geomean([_median(r, e) for r in both]) for e in (slow, fast))
    lines = [
        f"| configuration | sum of {len(both)} query medians s | geomean s |",
        "| --- | ---: | ---: |",
        f"| {slow} | {s1:.3f} | {_f(g1)} |",
        f"| {fast} | {s2:.3f} | {_f(g2)} |",
        f"| speed-up {slow} / {fast} | {_f(s1 / s2 if s2 else None, 2)} "
        f"| {_f(g1 / g2 if g1 and g2 else None, 2)} |",
    ]
    return "\n".join(lines)


def _problems(results: Sequence[QueryResult], engines: Sequence[str]) -> list[str]:
    out = []
    for r in results:
        if r.reference_error:
            out.append(f"- {r.query}, reference: {r.reference_error[:_SHOWN]}")
        for e in engines:
            res = r.engines[e]
            text = res.error or (res.diff if res.valid is False else None)
            if text:
                out.append(f"- {r.query}, {e}: {_verdict(res)}: {text[:_SHOWN]}")
    return out


def markdown(meta: Meta, results: Sequence[QueryResult]) -> str:
    """The whole Markdown report: settings, timing table, errors, memory, scaling if it was run."""
    m, s = meta.machine, meta.settings
    versions = ", ".join(f"{e} {meta.engine_info.get(e, {}).get('version', '?')}" for e in meta.engines)
    load = "/".join(f"{x:.2f}" for x in meta.load_before) + " before, "
    load += "/".join(f"{x:.2f}" for x in meta.load_after) + " after"
    commit = str(meta.git.get("commit") or "?")[:10] + (
        " (uncommitted changes)" if meta.git.get("dirty") else ""
    )
    out = [
        f"### {TITLES.get(meta.benchmark, meta.benchmark)} SF {meta.sf:g}: {', '.join(meta.engines)}",
        "",
        f"{s.get('runs')} timed runs per engine and query after one warm-up, interleaved; median shown. "
        + (f"mesh: {s.get('workers')} local workers over mTLS. " if "mesh" in meta.engines else "")
        + f"Every answer compared with single-process DataFusion's. {meta.started_at}, commit {commit}.",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, "
        f"{(m.get('memory_bytes') or 0) / 1024**3:.0f} GiB; load average (1/5/15 min) {load} "
        f"(our own threads count too); other processes used {_f(meta.other_cpu_s, 1)} CPU-seconds "
        f"during the {_f(meta.wall_s, 0)} s run.",
        f"Versions: {versions}.",
    ]
    out += [f"Skipped: {name}: {why}." for name, why in meta.skipped.items()]
    out += ["", results_table(results, meta.engines)]
    problems = _problems(results, meta.engines)
    if problems:
        out += ["", "Errors and differences (first line; all of it in the JSON):", "", *problems]
    out += [
        "",
        "#### Peak RSS per peer vs single-process DataFusion",
        "",
        f"RSS sampled every {s.get('sample_interval_s')} s during each run (warm-up included); growth = "
        "peak minus the RSS when the run started. datafusion and duckdb run inside the bench process; "
        "for the mesh the bench process is the submitter.",
        "",
        memory_table(results, meta.engines),
    ]
    if all(e in meta.engines for e in SCALING):
        out += ["", "#### Scaling: 1 worker on 1 core vs 2 workers on 2 cores", "", scaling_table(results)]
    return "\n".join(out) + "\n"


def _engine_json(result: EngineResult) -> dict[str, Any]:
    data = asdict(result)
    data["median_s"] = result.median_s
    data["memory"] = {label: asdict(peak) for label, peak in result.memory.items()}
    flags = [d["distributed"] for d in result.details if "distributed" in d]
    data["distributed"] = all(flags) if flags else None
    return data


def document(meta: Meta, results: Sequence[QueryResult]) -> dict[str, Any]:
    """The JSON document: the run's metadata, every query's every engine, and the Markdown."""
    queries = [
        {
            "query": r.query,
            "ordered": r.ordered,
            "load1_at_start": r.load1,
            "reference_error": r.reference_error,
            "engines": {e: _engine_json(res) for e, res in r.engines.items()},
        }
        for r in results
    ]
    common = common_valid(results, meta.engines)
    summary = {
        "common_valid_queries": [r.query for r in common],
        "geomean_common_s": {e: geomean([_median(r, e) for r in common]) for e in meta.engines},
        "sum_common_s": {e: sum(_median(r, e) for r in common) for e in meta.engines},
    }
    return {
        **asdict(meta),
        "summary": summary,
        "queries": queries,
        "markdown": markdown(meta, results),
    }


def write_json(path: Path, meta: Meta, results: Sequence[QueryResult]) -> None:
    """Write :func:`document` to ``path``."""
    path.write_text(json.dumps(document(meta, results), indent=2) + "\n")
