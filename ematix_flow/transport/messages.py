"""Wire messages between submitters and workers: small frozen dataclasses packed with msgpack.

Plans travel as DataFusion plan bytes inside :class:`TaskSpec`; everything else is plain values.
Every ``from_bytes`` validates shape and types and raises :class:`ProtocolError` on garbage.
"""

from __future__ import annotations

import functools
import types
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

import msgpack

from ematix_flow.errors import ProtocolError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SQL_INFO_CHARS = 4000  # the SQL text a task carries for status pages
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the largest message accepted (a task spec is ~10 KB)

T = TypeVar("T", bound="_Message")
D = TypeVar("D", bound="DataclassInstance")


def _conforms(value: object, hint: Any) -> bool:
    """Whether a decoded msgpack value has the annotated type (a bool is no int; an int is a float)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin is Union or origin is types.UnionType:
        return any(_conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


@functools.cache
def _field_types(cls: type[DataclassInstance]) -> dict[str, Any]:
    """The resolved annotation of each field of dataclass ``cls``."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _build(cls: type[D], raw: object, what: str) -> D:
    """An instance of dataclass ``cls`` from a decoded map, its field types checked (unknown keys ignored).

    Raises:
        ProtocolError: ``raw`` is not a map, lacks a field, or a field has the wrong type.
    """
    if not isinstance(raw, dict):
        raise ProtocolError(f"malformed {what}: not a map")
    hints = _field_types(cls)
    values = {name: raw[name] for name in hints if name in raw}
    for name, value in values.items():
        hint = hints[name]
        if not _conforms(value, hint):
            expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise ProtocolError(f"malformed {what}: field {name!r} is {type(value).__name__}, not {expected}")
    try:
        return cls(**values)
    except TypeError as exc:  # a missing field
        raise ProtocolError(f"malformed {what}: {exc}") from exc


class _Message:
    """msgpack (de)serialization for a flat dataclass of plain values."""

    if TYPE_CHECKING:
        __dataclass_fields__: ClassVar[dict[str, Any]]  # every subclass is a dataclass

    def to_bytes(self) -> bytes:
        """Pack this message."""
        return msgpack.packb(asdict(self), use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def from_bytes(cls: type[T], data: bytes) -> T:
        """Unpack a message, raising ProtocolError on anything malformed."""
        if len(data) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"{cls.__name__} of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES} limit")
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:
            raise ProtocolError(f"malformed {cls.__name__}: {exc}") from exc
        return _build(cls, raw, cls.__name__)


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
        """The groups as typed sources (ProtocolError if one is malformed)."""
        return [[_build(Source, s, "input source") for s in g] for g in self.groups]


@dataclass(frozen=True)
class TaskSpec(_Message):
    """Everything a worker needs to run one task."""

    query_id: str
    stage: int
    task: int
    plan: bytes
    inputs: list[dict[str, Any]] = field(default_factory=list)
    local_reads: bool = True  # may read a same-host producer's files instead of fetching them
    #: What the query is, for status pages and logs: {"sql": str (at most SQL_INFO_CHARS),
    #: "stages": [{"id": int, "kind": "shuffle" | "gather" | "root", "inputs": [stage ids]}]}.
    info: dict[str, Any] = field(default_factory=dict)

    def input_specs(self) -> list[InputSpec]:
        """The inputs as typed specs (ProtocolError if one is malformed)."""
        return [_build(InputSpec, i, "task input") for i in self.inputs]


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
        """Outputs as typed values (ProtocolError if one is malformed)."""
        return [_build(TaskOutput, o, "task output") for o in self.outputs]


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
    peers_down: list[str] = field(default_factory=list)  # of ``peers``, those that did not answer lately
    tasks_running: int = 0  # its load when it answered (older workers: 0)
    tasks_queued: int = 0  # tasks waiting for one of its --max-tasks slots
    http: str = ""  # its status page and API ("http(s)://HOST:PORT"), "" when it serves none


@dataclass(frozen=True)
class ErrorRecord(_Message):
    """A failure as it crosses the wire, in a Flight error's ``extra_info``: the client rebuilds it.

    The Flight error's message stays ``<kind>: <message>`` for people and other Flight clients;
    ours read this record and never the text.
    """

    kind: str  # the FlowError subclass, by name (a kind the client does not know: TaskFailedError)
    message: str  # one line
    peer: str = ""  # the peer the failure is about (PeerUnreachableError: the one that did not answer)
    stage: int = -1  # the stage of the task that failed, -1 outside a task
    query: str = ""  # the query id of that task, "" outside a task
    reason: str = ""  # TaskFailedError.reason: "cut" when the stage cannot start over spliced inputs
