"""ematix-flow: SQL over Arrow data on a peer-to-peer mesh of identical ``flow-worker`` processes.

Example:
    >>> from ematix_flow import Mesh
    >>> with Mesh.local(workers=3) as mesh:  # doctest: +SKIP
    ...     mesh.register_parquet("lineitem", "data/tpch-sf0.1/lineitem.parquet")
    ...     print(mesh.sql("SELECT count(*) FROM lineitem"))
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING

from ematix_flow.errors import (
    AccessDeniedError,
    ConfigError,
    FlowError,
    LoadError,
    PeerMismatchError,
    PeerUnreachableError,
    PlanningError,
    ProtocolError,
    QueryCancelledError,
    QueryError,
    QueryTimeoutError,
    TaskFailedError,
    TLSError,
)

if TYPE_CHECKING:
    from ematix_flow.coordinator_lib.mesh import Mesh
    from ematix_flow.coordinator_lib.report import RunReport
    from ematix_flow.pipelines.api import pipeline
    from ematix_flow.pipelines.config import Pipeline, Source, Target, Transform
    from ematix_flow.transport.tls import TLSConfig

# Imported on first use (PEP 562), so that importing a submodule (the planner, the codec, the errors)
# does not load the submitter, Flight and the pipelines.
_LAZY = {
    "Mesh": "ematix_flow.coordinator_lib.mesh",
    "RunReport": "ematix_flow.coordinator_lib.report",
    "pipeline": "ematix_flow.pipelines.api",
    "Pipeline": "ematix_flow.pipelines.config",
    "Source": "ematix_flow.pipelines.config",
    "Target": "ematix_flow.pipelines.config",
    "Transform": "ematix_flow.pipelines.config",
    "TLSConfig": "ematix_flow.transport.tls",
}

__all__ = [
    "AccessDeniedError",
    "ConfigError",
    "FlowError",
    "LoadError",
    "Mesh",
    "PeerMismatchError",
    "PeerUnreachableError",
    "Pipeline",
    "PlanningError",
    "ProtocolError",
    "QueryCancelledError",
    "QueryError",
    "QueryTimeoutError",
    "RunReport",
    "Source",
    "TLSConfig",
    "TLSError",
    "Target",
    "TaskFailedError",
    "Transform",
    "__version__",
    "pipeline",
]


def __getattr__(name: str) -> object:
    """Import a public name of :data:`_LAZY` on first access (PEP 562) and keep it."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
