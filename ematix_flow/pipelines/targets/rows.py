"""What SQL targets check and compute from a result before any SQL: types, keys, row hashes.

Everything here is pure (an Arrow table in; a table, a list or an error out), so it is the same
for every database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ematix_flow.errors import ConfigError, LoadError, first_line
from ematix_flow.pipelines.targets.base import SCD2_COLUMNS, LoadMode

_BATCH_ROWS = 10_000


# ------------------------------------------------------------------------------ row hash
def row_hashes(data: pa.Table, keys: Sequence[str]) -> pa.Array:
    """The scd2 ``row_hash`` of each row: sha256 hex of its non-key columns, canonically encoded.

    The encoding is the UTF-8 of the compact JSON (``separators=(",", ":")``, no ASCII escaping)
    of ``[[name, value], ...]`` over the non-key columns sorted by name, each value encoded by
    :func:`canonical`. So ``{"id": 1, "name": "a", "amount": Decimal("1.50")}`` with keys
    ``["id"]`` hashes ``[["amount","1.50"],["name","a"]]``. It depends only on the Arrow values
    (of the prepared table: timestamps in microseconds), never on the database, so it is the same
    across targets, runs and column orders as long as the result's column types stay the same.
    """
    names = sorted(name for name in data.column_names if name not in keys)
    columns = [data.column(name).to_pylist() for name in names]
    rows: Iterator[tuple[Any, ...]] = zip(*columns, strict=True) if columns else iter([()] * data.num_rows)
    hashes = []
    for values in rows:
        pairs = [[name, canonical(value)] for name, value in zip(names, values, strict=True)]
        text = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
        hashes.append(hashlib.sha256(text.encode("utf-8")).hexdigest())
    return pa.array(hashes, type=pa.string())


def canonical(value: object) -> object:
    """A JSON-ready form of one Arrow value for the row hash.

    None, bools, ints, floats and strings stay as they are; Decimals become ``str`` (their scale
    kept); dates, times and naive timestamps their ISO format; timezone-aware timestamps the ISO
    format of the same moment in UTC; bytes their hex; lists and structs are encoded element-wise.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return str(value)


# ------------------------------------------------------------------------------ data checks
def prepare(data: pa.Table, where: str) -> pa.Table:
    """``data`` in the types every target stores: microsecond times, plain strings, decoded dictionaries.

    Raises ConfigError for nameless or repeated columns and LoadError when a timestamp would lose
    its nanoseconds (the databases keep microseconds).
    """
    if data.num_columns == 0:
        raise ConfigError(f"{where}: the result has no columns: the SQL must select at least one")
    names = data.column_names
    if "" in names:
        raise ConfigError(f"{where}: the result has a column without a name: name it in the SQL (AS name)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{where}: the result has columns named twice: {', '.join(repeated)} (rename them)")
    fields = [pa.field(f.name, _storable(f.type), f.nullable) for f in data.schema]
    target = pa.schema(fields)
    if target.equals(data.schema):
        return data
    columns = []
    for name, column, field in zip(names, data.columns, fields, strict=True):
        try:
            columns.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise LoadError(
                f"{where}: column {name!r} cannot be stored as {field.type}: {first_line(exc)} "
                "(cast or truncate it in the SQL)"
            ) from exc
    return pa.Table.from_arrays(columns, schema=target)


def _storable(t: pa.DataType) -> pa.DataType:
    """The Arrow type a column is staged as (same values, the forms the databases take)."""
    if pa.types.is_dictionary(t):
        return _storable(t.value_type)
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz=t.tz)
    if pa.types.is_time(t):
        return pa.time64("us")
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    return t


def check_keys(data: pa.Table, mode: LoadMode, keys: Sequence[str], where: str) -> None:
    """Keys must be columns (ConfigError), non-null and unique in ``data`` (LoadError)."""
    missing = [key for key in keys if key not in data.column_names]
    if missing:
        raise ConfigError(
            f"{where}: keys {', '.join(missing)} are not columns of the result "
            f"({', '.join(data.column_names)}): fix keys or the SQL"
        )
    if mode == "scd2":
        clash = [name for name in data.column_names if name in SCD2_COLUMNS]
        if clash:
            raise ConfigError(
                f"{where}: the result has columns {', '.join(clash)}, which scd2 adds itself: rename them"
            )
    for key in keys:
        nulls = data.column(key).null_count
        if nulls:
            raise LoadError(
                f"{where}: {mode}: key column {key!r} is NULL in {nulls} rows of the result: keys must "
                "be non-null (filter or COALESCE them in the SQL); nothing was written"
            )
    counts = data.select(list(keys)).group_by(list(keys)).aggregate([([], "count_all")])
    dups = counts.filter(pc.greater(counts["count_all"], 1))
    if dups.num_rows:
        first = dups.slice(0, 1).to_pylist()[0]
        times = first.pop("count_all")
        value = ", ".join(f"{k}={v!r}" for k, v in first.items())
        raise LoadError(
            f"{where}: {mode}: key ({value}) appears {times} times in the result ({dups.num_rows} keys "
            "repeat): make the keys unique in the SQL (e.g. GROUP BY the keys); nothing was written"
        )


def column_types(schema: pa.Schema, names: Mapping[str, str], where: str) -> list[str]:
    """The SQL type of each column of ``schema`` (a prepared one), from a dialect's ``names``.

    ``names`` maps the categories of :func:`category` to type names; "decimal" is a format string
    with ``{precision}`` and ``{scale}``, and "decimal_max" the largest precision (as text).
    """
    types = []
    for f in schema:
        kind = category(f.type)
        if kind is None or kind not in names:
            raise ConfigError(
                f"{where}: column {f.name!r} has type {f.type}, which this target cannot store: "
                "cast it in the SQL (e.g. to a string)"
            )
        if kind == "decimal":
            limit = int(names.get("decimal_max", "1000"))
            if f.type.precision > limit:
                raise ConfigError(
                    f"{where}: column {f.name!r} is {f.type}, wider than this target's {limit} digits: "
                    "cast it in the SQL"
                )
            types.append(names["decimal"].format(precision=f.type.precision, scale=f.type.scale))
        else:
            types.append(names[kind])
    return types


def category(t: pa.DataType) -> str | None:
    """The portable category of a (prepared) Arrow type: ``int32``, ``string``, ``timestamptz``, ..."""
    if pa.types.is_integer(t):
        return str(t)  # int8 ... uint64
    checks = (
        (pa.types.is_float32, "float32"),
        (pa.types.is_float64, "float64"),
        (pa.types.is_boolean, "bool"),
        (pa.types.is_decimal, "decimal"),
        (pa.types.is_string, "string"),
        (pa.types.is_binary, "binary"),
        (pa.types.is_date32, "date"),
        (pa.types.is_time, "time"),
        (pa.types.is_null, "null"),
    )
    for test, name in checks:
        if test(t):
            return name
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    return None


def python_rows(data: pa.Table) -> Iterator[tuple[Any, ...]]:
    """The rows of ``data`` as tuples of Python values, a batch at a time."""
    for batch in data.to_batches(max_chunksize=_BATCH_ROWS):
        yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)
