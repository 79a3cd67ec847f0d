"""ematix-flow: SQL over Arrow data on a peer-to-peer mesh of identical ``flow-worker`` processes.

Example:
    >>> from ematix_flow import Mesh
    >>> with Mesh.local(workers=3) as mesh:  # doctest: +SKIP
    ...     mesh.register_parquet("lineitem", "data/tpch-sf0.1/lineitem.parquet")
    ...     print(mesh.sql("SELECT count(*) FROM lineitem"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from ematix_flow.coordinator_lib.mesh import Mesh
from ematix_flow.coordinator_lib.report import RunReport
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
from ematix_flow.pipelines.api import pipeline
from ematix_flow.pipelines.config import Pipeline, Source, Target, Transform
from ematix_flow.transport.tls import TLSConfig

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
