"""Run queries on several engines interleaved, time them, validate every answer.

For each query: one warm-up run per engine (A, B, C), then ``runs`` rounds (A B C A B C ...). The
median of the timed runs is kept. Every answer, warm-ups included, is compared with the reference
answer: the warm-up answer of single-process DataFusion. A failing run is recorded as that engine's
error for the query (no more runs of it) and the benchmark goes on.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from bench.engines import Engine
from bench.memory import MemoryPeak, RssSampler
from ematix_flow.errors import first_line
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

__all__ = ["BENCH_PROCESS", "EngineResult", "QueryResult", "run_queries", "run_query"]

BENCH_PROCESS = "bench"
"""Memory label of this process: the engine itself for datafusion/duckdb, the submitter for the mesh."""

_MAX_MESSAGE = 300


@dataclass
class EngineResult:
    """One engine on one query."""

    runs: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    valid: bool | None = None  # None: not validated (no reference answer, or no answer)
    diff: str | None = None
    error: str | None = None
    rows: int | None = None
    details: list[dict[str, Any]] = field(default_factory=list)  # per run, warm-up first
    memory: dict[str, MemoryPeak] = field(default_factory=dict)  # label -> worst over all runs

    @property
    def median_s(self) -> float | None:
        """Median of the timed runs (None if none completed)."""
        return statistics.median(self.runs) if self.runs else None

    @property
    def ok(self) -> bool:
        """Timed and validated equal to the reference."""
        return self.valid is True and self.error is None and self.median_s is not None


@dataclass
class QueryResult:
    """Every engine on one query."""

    query: str
    ordered: bool
    engines: dict[str, EngineResult]
    load1: float | None = None
    reference_error: str | None = None


def _one_line(exc: BaseException) -> str:
    text = first_line(exc)
    text = text if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _attempt(
    engine: Engine, sql: str, result: EngineResult, sampler: RssSampler | None, *, warmup: bool
) -> pa.Table | None:
    """Run once, timing it and sampling memory; an exception becomes ``result.error``."""
    pids = {BENCH_PROCESS: os.getpid(), **engine.pids()}
    peaks: dict[str, MemoryPeak] = {}
    try:
        if sampler is None:
            started = time.perf_counter()
            answer = engine.run(sql)
            seconds = time.perf_counter() - started
        else:
            with sampler.window(pids) as peaks:
                started = time.perf_counter()
                answer = engine.run(sql)
                seconds = time.perf_counter() - started
    except Exception as exc:  # the query fails on this engine: record it, go on
        result.error = _one_line(exc)
        return None
    finally:
        for label, peak in peaks.items():
            known = result.memory.get(label)
            result.memory[label] = peak if known is None else known.merge(peak)
    if warmup:
        result.warmup_s = seconds
    else:
        result.runs.append(seconds)
    result.rows = answer.num_rows
    result.details.append(engine.details())
    return answer


def _validate(
    engine: Engine, result: EngineResult, answer: pa.Table | None, expected: pa.Table | None, ordered: bool
) -> None:
    if answer is None or expected is None:
        return
    v = engine.validation
    diff = compare_tables(
        answer,
        expected,
        ordered=ordered,
        rel_tol=v.rel_tol,
        abs_tol=v.abs_tol,
        check_names=v.check_names,
    )
    if diff is not None:
        result.valid = False
        result.diff = result.diff or diff
    elif result.valid is None:
        result.valid = True


def run_query(
    name: str,
    sql: str,
    engines: Sequence[Engine],
    reference: Engine,
    runs: int,
    sampler: RssSampler | None = None,
) -> QueryResult:
    """Warm up every engine once, then time ``runs`` interleaved rounds; validate every answer.

    ``reference`` may be one of ``engines`` (its warm-up answer is the reference) or a separate,
    untimed engine run once first.
    """
    ordered = query_is_ordered(sql)
    results = {e.name: EngineResult() for e in engines}
    query = QueryResult(name, ordered, results, load1=os.getloadavg()[0])
    expected: pa.Table | None = None
    if all(e is not reference for e in engines):
        try:
            expected = reference.run(sql)
        except Exception as exc:  # nothing to validate against; the engines still run
            query.reference_error = _one_line(exc)
    answers: dict[str, pa.Table | None] = {}
    for engine in engines:
        answers[engine.name] = _attempt(engine, sql, results[engine.name], sampler, warmup=True)
        if engine is reference:
            expected = answers[engine.name]
            query.reference_error = results[engine.name].error
    for engine in engines:
        _validate(engine, results[engine.name], answers.pop(engine.name), expected, ordered)
    for _ in range(runs):
        for engine in engines:
            result = results[engine.name]
            if result.error is None:
                answer = _attempt(engine, sql, result, sampler, warmup=False)
                _validate(engine, result, answer, expected, ordered)
    return query


def run_queries(
    queries: Mapping[str, str],
    engines: Sequence[Engine],
    reference: Engine,
    runs: int,
    sampler: RssSampler | None = None,
    on_result: Callable[[QueryResult], None] | None = None,
) -> list[QueryResult]:
    """:func:`run_query` for each query in turn; ``on_result`` sees each as soon as it is done."""
    out: list[QueryResult] = []
    for name, sql in queries.items():
        result = run_query(name, sql, engines, reference, runs, sampler)
        out.append(result)
        if on_result is not None:
            on_result(result)
    return out
