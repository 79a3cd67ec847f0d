"""Pipelines in Python: the ``@pipeline`` decorator, its registry, and ``flow run --module``.

Example (``my_pipelines.py``)::

    import ematix_flow as ematix
    from ematix_flow import Source, Target

    @ematix.pipeline(
        sources={"orders": Source("parquet", path="data/orders/")},
        target=Target("duckdb", path="warehouse.duckdb", table="daily", mode="merge", keys=["day"]),
    )
    def daily_revenue() -> str:
        return "SELECT o_orderdate AS day, sum(o_totalprice) AS revenue FROM orders GROUP BY 1"

then ``flow run --module my_pipelines daily_revenue``, or ``daily_revenue.pipeline().run()``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ematix_flow.errors import ConfigError
from ematix_flow.pipelines.config import Pipeline, Source, Target, Transform

SqlFunction = Callable[[], str]


@dataclass
class Registered:
    """A decorated function and the pipeline around it (its SQL is asked for at run time)."""

    name: str
    function: SqlFunction
    sources: dict[str, Source]
    target: Target
    transform: dict[str, Any]
    base_dir: Path

    def pipeline(self) -> Pipeline:
        """The pipeline, with the function's current SQL."""
        sql = self.function()
        if not isinstance(sql, str):
            raise ConfigError(
                f"pipeline {self.name}: {self.function.__qualname__}() must return the SQL as a str, "
                f"not {type(sql).__name__}"
            )
        try:
            transform = Transform(sql=sql, **self.transform)
        except TypeError as exc:
            raise ConfigError(f"pipeline {self.name}: {exc} (see ematix_flow.Transform's fields)") from exc
        pipeline = Pipeline(
            name=self.name,
            sources=dict(self.sources),
            transform=transform,
            target=self.target,
            base_dir=self.base_dir,
            origin=f"pipeline {self.name} ({self.function.__module__}.{self.function.__qualname__})",
        )
        pipeline.check()
        return pipeline


#: Decorated pipelines by name, in the order they were declared.
REGISTRY: dict[str, Registered] = {}


def pipeline(
    *,
    sources: dict[str, Source],
    target: Target,
    name: str | None = None,
    base_dir: str | Path | None = None,
    **transform: Any,
) -> Callable[[SqlFunction], SqlFunction]:
    """Register the decorated function (it returns the transform's SQL) as a pipeline.

    ``transform`` takes the fields of :class:`Transform` other than ``sql`` (``engine``,
    ``local``, ``peers``, ``dialect``, ``watermark_column``, ...). Relative paths start at
    ``base_dir`` (default: the working directory when it runs). The function gains a
    ``pipeline()`` attribute that builds the :class:`Pipeline`.
    """

    def register(function: SqlFunction) -> SqlFunction:
        key = name or function.__name__
        entry = Registered(
            key, function, sources, target, transform, Path(base_dir) if base_dir else Path.cwd()
        )
        REGISTRY[key] = entry
        function.pipeline = entry.pipeline  # type: ignore[attr-defined]
        return function

    return register


def from_module(module: str, name: str | None) -> Pipeline:
    """Import ``module`` (a dotted name, or a .py file) and build its pipeline ``name``."""
    _import(module)
    if name is None:
        if len(REGISTRY) != 1:
            known = ", ".join(REGISTRY) or "none"
            raise ConfigError(f"--module {module}: name the pipeline to run (it declares: {known})")
        name = next(iter(REGISTRY))
    if name not in REGISTRY:
        known = ", ".join(REGISTRY) or "none: decorate a function with @ematix_flow.pipeline(...)"
        raise ConfigError(f"--module {module}: no pipeline {name!r} (it declares: {known})")
    return REGISTRY[name].pipeline()


def _import(module: str) -> None:
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise ConfigError(f"--module {module}: no such file")
        sys.path.insert(0, str(path.parent))
        module = path.stem
    elif "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: modules of the working dir
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ConfigError(
                f"--module {module}: no module {exc.name!r} (run from its folder, or pass path/to/file.py)"
            ) from exc
        raise
