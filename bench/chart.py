"""A PNG bar chart of the per-query medians: grouped bars (one per engine), log-scale time axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.runner import QueryResult

__all__ = ["write_chart"]


def write_chart(path: Path, results: Sequence[QueryResult], engines: Sequence[str], title: str) -> None:
    """Draw every query's median per engine; a hatched bar is an answer that differs, none an error.

    Raises:
        ImportError: matplotlib is not installed (``pip install -e '.[bench]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    width = 0.8 / max(1, len(engines))
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, 0.5 * n + 2)), 5.0))
    for i, engine in enumerate(engines):
        xs, ys, hatches = [], [], []
        for q, r in enumerate(results):
            res = r.engines.get(engine)
            if res is None or res.median_s is None:
                continue
            xs.append(q - 0.4 + width * (i + 0.5))
            ys.append(res.median_s)
            hatches.append("//" if res.valid is False else "")
        bars = ax.bar(xs, ys, width, label=engine)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
    ax.set_yscale("log")
    ax.set_xticks(range(n))
    ax.set_xticklabels([r.query for r in results], rotation=90 if n > 30 else 0, fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("median seconds (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, max(1, len(engines))))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
