"""A schema-less protobuf wire-format reader and writer.

No ``.proto`` schema ships with the ``datafusion`` wheel, so plans are walked and edited at the wire
level: a message is a list of :class:`Field` (number, wire type, value). Hand-written on purpose:
the whole codec is ~80 lines and adding ``protobuf`` + a copied schema would not remove the field map.
Shared by the planner (DataFusion plans) and :mod:`ematix_flow.flightsql` (Flight SQL messages), it is
a leaf: it imports nothing of the project but :mod:`ematix_flow.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ematix_flow.errors import ProtocolError

VARINT = 0
FIXED64 = 1
LEN = 2
FIXED32 = 5


@dataclass(frozen=True)
class Field:
    """One field occurrence of a protobuf message."""

    number: int
    wire_type: int
    value: int | bytes

    @property
    def data(self) -> bytes:
        """The value of a length-delimited field."""
        if not isinstance(self.value, bytes) or self.wire_type != LEN:
            raise ProtocolError(f"field {self.number} is not length-delimited")
        return self.value

    @property
    def int(self) -> int:
        """The value of a varint field."""
        if not isinstance(self.value, int):
            raise ProtocolError(f"field {self.number} is not a varint")
        return self.value


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    n = len(buf)
    while True:
        if i >= n:
            raise ProtocolError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ProtocolError("varint too long")


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def parse(buf: bytes) -> list[Field]:
    """Split a serialized message into its fields, in wire order."""
    i, n, out = 0, len(buf), []
    while i < n:
        key, i = _read_varint(buf, i)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtocolError("field number 0")
        value: int | bytes
        if wire_type == VARINT:
            value, i = _read_varint(buf, i)
        elif wire_type == FIXED64:
            value, i = buf[i : i + 8], i + 8
        elif wire_type == LEN:
            length, i = _read_varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire_type == FIXED32:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ProtocolError(f"unsupported wire type {wire_type}")
        if i > n:
            raise ProtocolError("truncated message")
        out.append(Field(number, wire_type, value))
    return out


def encode(fields: list[Field]) -> bytes:
    """Serialize fields back into a message (byte-exact for an unmodified parse)."""
    out = bytearray()
    for f in fields:
        out += encode_varint((f.number << 3) | f.wire_type)
        if f.wire_type == VARINT:
            out += encode_varint(f.int)
        elif f.wire_type == LEN:
            out += encode_varint(len(f.data))
            out += f.data
        else:
            assert isinstance(f.value, bytes)
            out += f.value
    return bytes(out)


def message(number: int, body: bytes) -> Field:
    """A length-delimited field holding ``body``."""
    return Field(number, LEN, body)


def varint(number: int, value: int) -> Field:
    """A varint field."""
    return Field(number, VARINT, value)


def first(fields: list[Field], number: int) -> Field | None:
    """The first field with ``number``, or None."""
    return next((f for f in fields if f.number == number), None)
