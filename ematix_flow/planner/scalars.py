"""Arrow values as DataFusion 55's ``ScalarValue`` messages (``datafusion_common.proto``).

Used for the partition values of lake-table files (``planner/lake.py``): a file's value of a
partition column travels in its ``PartitionedFile.partition_values``. The types are those a
partition column can have; any other is refused rather than encoded wrongly.
"""

from __future__ import annotations

import datetime
import decimal
import struct

import pyarrow as pa

from ematix_flow import protobuf
from ematix_flow.errors import PlanningError

#: Arrow type -> (ScalarValue field, ArrowType field) of the types encoded as a varint.
_VARINTS: dict[pa.DataType, tuple[int, int]] = {
    pa.bool_(): (1, 2),
    pa.int8(): (4, 4),
    pa.int16(): (5, 6),
    pa.int32(): (6, 8),
    pa.int64(): (7, 10),
    pa.uint8(): (8, 3),
    pa.uint16(): (9, 5),
    pa.uint32(): (10, 7),
    pa.uint64(): (11, 9),
}
_UTF8, _LARGE_UTF8, _UTF8_VIEW, _FLOAT32, _FLOAT64, _DATE32 = 2, 3, 23, 12, 13, 14  # ScalarValue fields
_DECIMAL128, _TIMESTAMP, _BINARY, _NULL = 20, 26, 28, 33
_UNITS = {"s": (3, 0), "ms": (4, 1), "us": (1, 2), "ns": (2, 3)}  # ScalarTimestampValue field, TimeUnit
_EPOCH = datetime.date(1970, 1, 1)


def arrow_type(t: pa.DataType) -> bytes:
    """``t`` as an ``ArrowType`` message."""
    if t in _VARINTS:
        return protobuf.encode([protobuf.message(_VARINTS[t][1], b"")])
    simple = {
        pa.float32(): 12,
        pa.float64(): 13,
        pa.string(): 14,
        pa.large_string(): 32,
        pa.string_view(): 35,
    }
    simple[pa.date32()] = 17
    if t in simple:
        return protobuf.encode([protobuf.message(simple[t], b"")])
    if t == pa.binary():
        return protobuf.encode([protobuf.message(15, b"")])
    if pa.types.is_decimal128(t):
        body = protobuf.encode([protobuf.varint(3, t.precision), protobuf.varint(4, t.scale)])
        return protobuf.encode([protobuf.message(24, body)])
    if pa.types.is_timestamp(t):
        fields = [protobuf.varint(1, _UNITS[t.unit][1])] + (
            [protobuf.message(2, t.tz.encode())] if t.tz else []
        )
        return protobuf.encode([protobuf.message(20, protobuf.encode(fields))])
    raise PlanningError(f"a partition column of type {t} is not supported")


def scalar(value: object, t: pa.DataType) -> bytes:
    """``value`` (a Python value of Arrow type ``t``, or None) as a ``ScalarValue`` message.

    Raises:
        PlanningError: ``t`` is not a type partition values are encoded for.
    """
    if value is None:
        return protobuf.encode([protobuf.message(_NULL, arrow_type(t))])
    if t in _VARINTS:
        return protobuf.encode([protobuf.varint(_VARINTS[t][0], int(value))])  # type: ignore[call-overload]
    if t in (pa.string(), pa.large_string(), pa.string_view()):
        field = {pa.string(): _UTF8, pa.large_string(): _LARGE_UTF8}.get(t, _UTF8_VIEW)
        return protobuf.encode([protobuf.message(field, str(value).encode())])
    if t == pa.float32():
        return protobuf.encode([protobuf.Field(_FLOAT32, protobuf.FIXED32, struct.pack("<f", value))])
    if t == pa.float64():
        return protobuf.encode([protobuf.Field(_FLOAT64, protobuf.FIXED64, struct.pack("<d", value))])
    if t == pa.date32():
        assert isinstance(value, datetime.date)
        return protobuf.encode([protobuf.varint(_DATE32, (value - _EPOCH).days)])
    if t == pa.binary():
        assert isinstance(value, bytes)
        return protobuf.encode([protobuf.message(_BINARY, value)])
    if pa.types.is_decimal128(t):
        unscaled = int(decimal.Decimal(str(value)).scaleb(t.scale).to_integral_exact())
        body = [
            protobuf.message(1, unscaled.to_bytes(16, "big", signed=True)),
            protobuf.varint(2, t.precision),
            protobuf.varint(3, t.scale),
        ]
        return protobuf.encode([protobuf.message(_DECIMAL128, protobuf.encode(body))])
    if pa.types.is_timestamp(t):
        ticks = pa.scalar(value, t).cast(pa.int64()).as_py()
        fields = [protobuf.varint(_UNITS[t.unit][0], ticks)] + (
            [protobuf.message(5, t.tz.encode())] if t.tz else []
        )
        return protobuf.encode([protobuf.message(_TIMESTAMP, protobuf.encode(fields))])
    raise PlanningError(f"a partition column of type {t} is not supported")
