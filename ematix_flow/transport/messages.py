"""Wire messages between submitters and workers: small frozen dataclasses packed with msgpack.

Plans travel as DataFusion plan bytes inside :class:`TaskSpec`; everything else is plain values.
Every ``from_bytes`` validates shape and types and raises :class:`ProtocolError` on garbage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

import msgpack

from ematix_flow.errors import ProtocolError

MAX_MESSAGE_BYTES = 256 * 1024 * 1024

T = TypeVar("T", bound="_Message")


class _Message:
    """msgpack (de)serialization for a flat dataclass of plain values."""

    def to_bytes(self) -> bytes:
        """Pack this message."""
        return msgpack.packb(asdict(self), use_bin_type=True)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_bytes(cls: type[T], data: bytes) -> T:
        """Unpack a message, raising ProtocolError on anything malformed."""
        if len(data) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"{cls.__name__} of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES} limit")
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:
            raise ProtocolError(f"malformed {cls.__name__}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ProtocolError(f"malformed {cls.__name__}: not a map")
        return cls._from_dict(raw)

    @classmethod
    def _from_dict(cls: type[T], raw: dict[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise ProtocolError(f"malformed {cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class OutputRef(_Message):
    """Names one output partition a task wrote: the Flight ticket that fetches it."""

    query_id: str
    stage: int
    task: int
    partition: int


@dataclass(frozen=True)
class Source:
    """Where a consumer finds one piece of an input partition."""

    address: str  # producer peer ("host:port"); "" for the submitter itself
    host_id: str  # producer machine: a consumer on the same machine may read ``path`` directly
    path: str
    ticket: bytes  # OutputRef bytes for Flight do_get
    nbytes: int
    rows: int


@dataclass(frozen=True)
class InputSpec:
    """One exchange input of a task: a scan partition per entry of ``groups``."""

    index: int
    schema: bytes  # IPC-serialized Arrow schema (unique column names, as written on disk)
    names: list[str]  # the original column names (may repeat)
    groups: list[list[dict[str, Any]]]  # per scan partition: Source dicts

    def sources(self) -> list[list[Source]]:
        """The groups as typed sources."""
        try:
            return [[Source(**s) for s in g] for g in self.groups]
        except TypeError as exc:
            raise ProtocolError(f"malformed input source: {exc}") from exc


@dataclass(frozen=True)
class TaskSpec(_Message):
    """Everything a worker needs to run one task."""

    query_id: str
    stage: int
    task: int
    plan: bytes
    inputs: list[dict[str, Any]] = field(default_factory=list)
    local_reads: bool = True  # may read a same-host producer's files instead of fetching them

    def input_specs(self) -> list[InputSpec]:
        """The inputs as typed specs."""
        try:
            return [InputSpec(**i) for i in self.inputs]
        except TypeError as exc:
            raise ProtocolError(f"malformed task input: {exc}") from exc


@dataclass(frozen=True)
class TaskOutput:
    """One non-empty output partition of a finished task."""

    partition: int
    rows: int
    nbytes: int
    path: str


@dataclass(frozen=True)
class TaskResult(_Message):
    """What a worker reports when a task finished."""

    outputs: list[dict[str, Any]]
    schema: bytes | None  # IPC-serialized schema of the outputs (None when every partition is empty)
    names: list[str]
    rows: int
    seconds: float
    host_id: str
    fetched_bytes: int = 0

    def output_list(self) -> list[TaskOutput]:
        """Outputs as typed values."""
        return [TaskOutput(**o) for o in self.outputs]


@dataclass(frozen=True)
class PeerInfo(_Message):
    """A worker's answer to ``hello``: who it is and whether it computes like us."""

    name: str
    address: str
    version: str
    datafusion_version: str
    host_id: str
    hash_digest: str
    peers: list[str] = field(default_factory=list)
