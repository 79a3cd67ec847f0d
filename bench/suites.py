"""The benchmarks (TPC-H, TPC-DS): tables, query texts, data generation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ematix_flow.workloads import tpcds, tpch

__all__ = ["SUITES", "Suite"]


@dataclass(frozen=True)
class Suite:
    """One benchmark's tables and queries."""

    name: str
    tables: tuple[str, ...]
    select: Callable[[str | None], dict[str, str]]  # "q01,q05" -> {name: sql}; all when None
    generate: Callable[[float, Path], Path]  # generate(sf, folder): nothing to do if already there
    default_data_dir: Callable[[float], Path]


SUITES: dict[str, Suite] = {
    "tpch": Suite("tpch", tpch.TABLES, tpch.select_queries, tpch.generate, tpch.default_data_dir),
    "tpcds": Suite("tpcds", tpcds.TABLES, tpcds.select_queries, tpcds.generate, tpcds.default_data_dir),
}
