"""Flight SQL messages: small frozen dataclasses, protobuf-encoded, wrapped in ``google.protobuf.Any``.

Hand-written on purpose over the codec the planner uses too (:mod:`ematix_flow.protobuf`): the dozen
messages served here fit in a page, and no ``.proto`` file or generated code has to ship or be kept
in step. Field numbers are those of the Flight SQL specification (``FlightSql.proto`` in apache/arrow);
each field below names its number with ``pb(N)``.

Example:
    >>> cmd = CommandStatementQuery(query="SELECT 1")
    >>> name, payload = unpack(cmd.pack())
    >>> name, CommandStatementQuery.from_bytes(payload).query
    ('CommandStatementQuery', 'SELECT 1')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar, get_type_hints

from ematix_flow import protobuf
from ematix_flow.errors import ProtocolError

TYPE_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."
_TYPE_URL, _VALUE = 1, 2  # google.protobuf.Any
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")

#: Every command and ticket message of the specification (served or not): unsupported ones are named
#: in errors and metrics, anything else is "not a Flight SQL command".
SPEC_COMMANDS = frozenset(
    {
        "CommandGetSqlInfo",
        "CommandGetXdbcTypeInfo",
        "CommandGetCatalogs",
        "CommandGetDbSchemas",
        "CommandGetTables",
        "CommandGetTableTypes",
        "CommandGetPrimaryKeys",
        "CommandGetExportedKeys",
        "CommandGetImportedKeys",
        "CommandGetCrossReference",
        "CommandStatementQuery",
        "CommandStatementSubstraitPlan",
        "CommandPreparedStatementQuery",
        "CommandStatementUpdate",
        "CommandPreparedStatementUpdate",
        "CommandStatementIngest",
        "TicketStatementQuery",
    }
)
#: Every DoAction type of Flight SQL and of Flight's session and cancellation management.
SPEC_ACTIONS = frozenset(
    {
        "CreatePreparedStatement",
        "CreatePreparedSubstraitPlan",
        "ClosePreparedStatement",
        "BeginTransaction",
        "EndTransaction",
        "BeginSavepoint",
        "EndSavepoint",
        "CancelQuery",
        "CancelFlightInfo",
        "RenewFlightEndpoint",
        "SetSessionOptions",
        "GetSessionOptions",
        "CloseSession",
    }
)

M = TypeVar("M", bound="Message")


def pb(number: int, default: Any = None) -> Any:
    """A dataclass field carried as protobuf field ``number`` (``default``: its value when absent)."""
    return field(default=default, metadata={"pb": number})


_LAYOUTS: dict[type, tuple[tuple[str, int, str], ...]] = {}


def _layout(cls: type[Message]) -> tuple[tuple[str, int, str], ...]:
    """(attribute, field number, kind) of each field of ``cls``; kind from its annotation."""
    if cls in _LAYOUTS:
        return _LAYOUTS[cls]
    kinds = {
        str: "str",
        bytes: "bytes",
        bool: "bool",
        int: "int",
        str | None: "str?",
        bytes | None: "bytes?",
        tuple[int, ...]: "ints",
        tuple[str, ...]: "strs",
    }
    hints = get_type_hints(cls)
    layout = tuple((f.name, f.metadata["pb"], kinds[hints[f.name]]) for f in fields(cls))
    _LAYOUTS[cls] = layout
    return layout


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8") from exc


def _read_packed(raw: bytes) -> list[int]:
    """The values of a packed repeated varint field."""
    out, value, shift = [], 0, 0
    for b in raw:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            out.append(value)
            value, shift = 0, 0
        elif shift > 63:
            raise ProtocolError("varint too long")
    if shift:
        raise ProtocolError("truncated packed varints")
    return out


class Message:
    """Base of the Flight SQL messages: protobuf (de)serialization from the ``pb`` field numbers."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # every subclass is a dataclass

    def to_bytes(self) -> bytes:
        """The protobuf encoding (proto3: empty scalars are left out, optional ones when None)."""
        out: list[protobuf.Field] = []
        for name, number, kind in _layout(type(self)):
            value = getattr(self, name)
            if value is None or (not value and not kind.endswith("?")):
                continue
            if kind in ("str", "str?"):
                out.append(protobuf.message(number, value.encode()))
            elif kind in ("bytes", "bytes?"):
                out.append(protobuf.message(number, bytes(value)))
            elif kind in ("bool", "int"):
                out.append(protobuf.varint(number, int(value)))
            elif kind == "ints":
                out.append(protobuf.message(number, b"".join(protobuf.encode_varint(v) for v in value)))
            else:
                out += [protobuf.message(number, v.encode()) for v in value]
        return protobuf.encode(out)

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        """Decode a message; unknown fields are skipped, malformed ones raise ProtocolError."""
        what = cls.__name__
        try:
            parsed = protobuf.parse(data)
        except ProtocolError as exc:
            raise ProtocolError(f"malformed {what}: {exc}") from exc
        values: dict[str, Any] = {}
        for name, number, kind in _layout(cls):
            found = [f for f in parsed if f.number == number]
            if not found:
                continue
            try:
                values[name] = _value(found, kind, f"{what}.{name}")
            except ProtocolError as exc:
                raise ProtocolError(f"malformed {what}: {exc}") from exc
        return cls(**values)

    def pack(self) -> bytes:
        """This message wrapped in ``google.protobuf.Any`` (what travels in descriptors and tickets)."""
        return pack(type(self).__name__, self.to_bytes())


def _value(found: list[protobuf.Field], kind: str, what: str) -> Any:
    """A field's value from its occurrences (the last one wins for scalars, as in protobuf)."""
    last = found[-1]
    if kind in ("str", "str?"):
        return _text(last.data, what)
    if kind in ("bytes", "bytes?"):
        return last.data
    if kind == "bool":
        return bool(last.int)
    if kind == "int":
        return last.int
    if kind == "ints":  # repeated uint32: packed (one blob) or one varint per value
        out: list[int] = []
        for f in found:
            out += _read_packed(f.value) if isinstance(f.value, bytes) else [f.int]
        return tuple(out)
    return tuple(_text(f.data, what) for f in found)


def pack(name: str, payload: bytes) -> bytes:
    """``google.protobuf.Any`` holding Flight SQL message ``name``."""
    return protobuf.encode(
        [protobuf.message(_TYPE_URL, (TYPE_PREFIX + name).encode()), protobuf.message(_VALUE, payload)]
    )


def unpack(data: bytes) -> tuple[str, bytes]:
    """The message name and payload of an ``Any``; ProtocolError unless it is a Flight SQL message."""
    try:
        parsed = protobuf.parse(data)
        urls = [f.data for f in parsed if f.number == _TYPE_URL]
        payloads = [f.data for f in parsed if f.number == _VALUE]
    except ProtocolError as exc:
        raise ProtocolError(f"malformed Flight SQL message: {exc}") from exc
    url = _text(urls[-1], "type URL") if urls else ""
    name = url[len(TYPE_PREFIX) :]
    if not url.startswith(TYPE_PREFIX) or not _NAME.fullmatch(name):
        shown = url[:80] or "(none)"
        raise ProtocolError(f"not a Flight SQL message: type URL {shown!r} (expected {TYPE_PREFIX}<Message>)")
    return name, payloads[-1] if payloads else b""


def is_flight_sql(data: bytes) -> bool:
    """Whether a ticket or command is a packed ``Any`` (Flight SQL) rather than one of our msgpack maps.

    An ``Any`` starts with the key of its field 1 (``0x0a``); a msgpack map never does (``0x0a`` is the
    msgpack integer 10), so the two kinds of tickets cannot be mistaken for each other.
    """
    return data[:1] == b"\x0a"


# ----------------------------------------------------------------------------- the messages
@dataclass(frozen=True)
class CommandStatementQuery(Message):
    """Run a SQL query (GetFlightInfo)."""

    query: str = pb(1, "")
    transaction_id: bytes | None = pb(2)


@dataclass(frozen=True)
class TicketStatementQuery(Message):
    """The ticket of a statement's result (DoGet)."""

    statement_handle: bytes = pb(1, b"")


@dataclass(frozen=True)
class CommandPreparedStatementQuery(Message):
    """Run a prepared statement (GetFlightInfo)."""

    prepared_statement_handle: bytes = pb(1, b"")


@dataclass(frozen=True)
class CommandGetSqlInfo(Message):
    """Server information by ``SqlInfo`` id (all known ones when empty)."""

    info: tuple[int, ...] = pb(1, ())


@dataclass(frozen=True)
class CommandGetCatalogs(Message):
    """List the catalogs."""


@dataclass(frozen=True)
class CommandGetDbSchemas(Message):
    """List the schemas of a catalog (``%`` / ``_`` patterns)."""

    catalog: str | None = pb(1)
    db_schema_filter_pattern: str | None = pb(2)


@dataclass(frozen=True)
class CommandGetTables(Message):
    """List tables, optionally with their Arrow schemas."""

    catalog: str | None = pb(1)
    db_schema_filter_pattern: str | None = pb(2)
    table_name_filter_pattern: str | None = pb(3)
    table_types: tuple[str, ...] = pb(4, ())
    include_schema: bool = pb(5, False)


@dataclass(frozen=True)
class CommandGetTableTypes(Message):
    """List the table types."""


@dataclass(frozen=True)
class CommandGetPrimaryKeys(Message):
    """The primary key of a table (ours have none)."""

    catalog: str | None = pb(1)
    db_schema: str | None = pb(2)
    table: str = pb(3, "")


@dataclass(frozen=True)
class CommandGetExportedKeys(CommandGetPrimaryKeys):
    """Foreign keys that reference a table (ours have none)."""


@dataclass(frozen=True)
class CommandGetImportedKeys(CommandGetPrimaryKeys):
    """Foreign keys of a table (ours have none)."""


@dataclass(frozen=True)
class CommandGetCrossReference(Message):
    """Foreign keys between two tables (ours have none)."""

    pk_catalog: str | None = pb(1)
    pk_db_schema: str | None = pb(2)
    pk_table: str = pb(3, "")
    fk_catalog: str | None = pb(4)
    fk_db_schema: str | None = pb(5)
    fk_table: str = pb(6, "")


@dataclass(frozen=True)
class ActionCreatePreparedStatementRequest(Message):
    """DoAction ``CreatePreparedStatement``: prepare a SQL statement."""

    query: str = pb(1, "")
    transaction_id: bytes | None = pb(2)


@dataclass(frozen=True)
class ActionCreatePreparedStatementResult(Message):
    """The answer to ``CreatePreparedStatement`` (schemas IPC-serialized)."""

    prepared_statement_handle: bytes = pb(1, b"")
    dataset_schema: bytes = pb(2, b"")
    parameter_schema: bytes = pb(3, b"")


@dataclass(frozen=True)
class ActionClosePreparedStatementRequest(Message):
    """DoAction ``ClosePreparedStatement``: forget a prepared statement."""

    prepared_statement_handle: bytes = pb(1, b"")


#: The messages served here, by name.
MESSAGES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        CommandStatementQuery,
        TicketStatementQuery,
        CommandPreparedStatementQuery,
        CommandGetSqlInfo,
        CommandGetCatalogs,
        CommandGetDbSchemas,
        CommandGetTables,
        CommandGetTableTypes,
        CommandGetPrimaryKeys,
        CommandGetExportedKeys,
        CommandGetImportedKeys,
        CommandGetCrossReference,
        ActionCreatePreparedStatementRequest,
        ActionCreatePreparedStatementResult,
        ActionClosePreparedStatementRequest,
    )
}

#: ``CloseSessionResult.Status`` (Flight.proto): the answer to the ``CloseSession`` action.
SESSION_CLOSED, SESSION_NOT_CLOSEABLE = 1, 3


def close_session_result(status: int) -> bytes:
    """A ``CloseSessionResult`` (a plain Flight message: not wrapped in ``Any``)."""
    return protobuf.encode([protobuf.varint(1, status)])


#: The cookie that names a Flight SQL session (the name the specification's session management uses).
SESSION_COOKIE = "arrow_flight_session_id"


def session_from_cookies(values: list[str]) -> str:
    """The session id in ``cookie`` header values, "" when there is none (or it is malformed)."""
    for value in values:
        for part in value.split(";"):
            name, _, sid = part.strip().partition("=")
            if name == SESSION_COOKIE and re.fullmatch(r"[0-9a-f]{32}", sid):
                return sid
    return ""
