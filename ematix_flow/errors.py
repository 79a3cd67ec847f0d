"""The one exception hierarchy of ematix-flow.

Every failure a user can act on has its own subclass of :class:`FlowError`; its message is one line
naming the cause and, where there is one, the fix. DataFusion's plain exceptions and Flight errors
are translated at the boundary with the original kept as ``__cause__``.
"""

from __future__ import annotations


class FlowError(Exception):
    """Root of every ematix-flow error."""


class ConfigError(FlowError):
    """A setting, flag or input file is wrong (fix the invocation)."""


class LoadError(FlowError):
    """A target refused or failed a load; nothing was written."""


class TLSError(FlowError):
    """TLS material is missing, unreadable or refused by a peer."""


class PeerUnreachableError(FlowError):
    """A peer did not answer (down, wrong address, or refused the connection)."""

    def __init__(self, message: str, *, peer: str = "") -> None:
        super().__init__(message)
        self.peer = peer


class PeerMismatchError(FlowError):
    """A peer runs an incompatible engine (other version or hash digest): it must not share a query."""


class QueryTimeoutError(FlowError):
    """A query ran longer than its timeout; its tasks were cancelled on every peer."""


class QueryCancelledError(FlowError):
    """A query was stopped on request (its client went away); its tasks were cancelled on every peer."""


class QueryError(FlowError):
    """The SQL is invalid or references something that does not exist (not retried)."""


class PlanningError(FlowError):
    """The physical plan could not be cut into stages (an engine limitation, not the user's SQL)."""


class TaskFailedError(FlowError):
    """A task failed on a peer while the query ran."""

    def __init__(self, message: str, *, peer: str = "", stage: int = -1) -> None:
        super().__init__(message)
        self.peer = peer
        self.stage = stage


class ProtocolError(FlowError):
    """A message on the wire was malformed, truncated or of an unknown kind."""


class AccessDeniedError(FlowError):
    """A worker refused a request: an unlisted identity, a path outside its data roots, a Python UDF."""
