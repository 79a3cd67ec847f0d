"""The one exception hierarchy of ematix-flow.

Every failure a user can act on has its own subclass of :class:`FlowError`; its message is one line
naming the cause and, where there is one, the fix. DataFusion's plain exceptions and Flight errors
are translated at the boundary with the original kept as ``__cause__``.
"""

from __future__ import annotations


def first_line(exc: BaseException | str, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (or of a text), stripped, for one-line errors.

    An exception with an empty message gives its class name; ``limit`` cuts the line to that many
    characters. Engines and drivers put context on later lines; users get the first.
    """
    lines = (line.strip() for line in str(exc).splitlines())
    line = next((ln for ln in lines if ln), "")
    if not line and isinstance(exc, BaseException):
        line = type(exc).__name__
    return line if limit is None else line[:limit]


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


class UnknownFieldError(PlanningError):
    """A plan holds a protobuf field the plan walker does not know: it must not be cut or sliced."""


class UnsplittableError(PlanningError):
    """A stage cannot be split by partition: it must run as one task."""


class TaskFailedError(FlowError):
    """A task failed on a peer while the query ran.

    ``reason`` is :attr:`CUT` when the stage could not start over spliced inputs (an engine
    limitation at that cut, not bad data or a bad peer): the submitter then re-plans the query with
    the stage's input exchanges kept inside it. The engine boundary that caught the failure sets it.
    """

    #: ``reason`` of a stage that cannot start where the plan was cut.
    CUT = "cut"

    def __init__(
        self, message: str, *, peer: str = "", stage: int = -1, query_id: str = "", reason: str = ""
    ) -> None:
        super().__init__(message)
        self.peer = peer
        self.stage = stage
        self.query_id = query_id
        self.reason = reason


class ProtocolError(FlowError):
    """A message on the wire was malformed, truncated or of an unknown kind."""


class StorageError(FlowError):
    """An object store is not configured for a bucket, refused the credentials, or did not answer."""


class AccessDeniedError(FlowError):
    """A worker refused a request: an unlisted identity, a path outside its data roots, a Python UDF."""
