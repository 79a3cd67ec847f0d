"""File skipping for lake tables: which data files a query's filters may need.

The filters are those DataFusion pushed into the table's scan (``TableScan.filters`` of the
optimized logical plan): a conjunction. Each file is judged from what the table's log says of it:
its partition values (exact) and its column statistics (min, max, null count, rows). A file is
skipped only when a filter is certainly false for every row of it; an expression this module does
not understand, a missing statistic or values of types that do not compare keep the file. The
filters still run on what is read, so skipping changes what is read, never the answer.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datafusion.expr as dfx

#: Statistic types trusted for ranges. Timestamps are left out (Delta writes them truncated to
#: milliseconds, so a max can be below the true max); floats too (NaN orders above everything).
_RANGE_TYPES = (int, decimal.Decimal, str, datetime.date)
#: String maxima this long or longer are not trusted: writers truncate statistics (Iceberg at 16
#: characters, Delta's Spark writer at 32), and not every writer rounds a truncated maximum up.
TRUNCATED_STRINGS = 16
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "!=": "!="}


@dataclass
class FileFacts:
    """What a table's metadata says about one data file."""

    partition: dict[str, Any] = field(default_factory=dict)  # partition column -> value (None: null)
    minimum: dict[str, Any] = field(default_factory=dict)  # column -> min (absent: unknown)
    maximum: dict[str, Any] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    rows: int | None = None


class _UnknownError(Exception):
    """An expression the pruner cannot judge: the file is kept."""


def keep(facts: FileFacts, filters: Sequence[dfx.Expr]) -> bool:
    """Whether a file described by ``facts`` may hold rows passing every filter."""
    for f in filters:
        try:
            if _never(f, facts):
                return False
        except _UnknownError:
            continue
    return True


def _never(expr: dfx.Expr, facts: FileFacts) -> bool:
    """True when ``expr`` is certainly not true for any row of the file."""
    v = expr.to_variant()
    if isinstance(v, dfx.BinaryExpr):
        op = v.op().upper()
        if op == "AND":
            return _never_or_unknown(v.left(), facts) or _never_or_unknown(v.right(), facts)
        if op == "OR":
            return _never(v.left(), facts) and _never(v.right(), facts)
        return _never_compare(v.left(), op, v.right(), facts)
    if isinstance(v, dfx.IsNull | dfx.IsNotNull):
        name = _column(v.expr())
        if name in facts.partition:
            is_null = facts.partition[name] is None
            return not is_null if isinstance(v, dfx.IsNull) else is_null
        nulls, rows = facts.nulls.get(name), facts.rows
        if nulls is None:
            raise _UnknownError
        return nulls == 0 if isinstance(v, dfx.IsNull) else rows is not None and nulls == rows
    raise _UnknownError


def _never_or_unknown(expr: dfx.Expr, facts: FileFacts) -> bool:
    try:
        return _never(expr, facts)
    except _UnknownError:
        return False


def _never_compare(left: dfx.Expr, op: str, right: dfx.Expr, facts: FileFacts) -> bool:
    if op not in _FLIP:
        raise _UnknownError
    if isinstance(left.to_variant(), dfx.Literal):
        left, right, op = right, left, _FLIP[op]
    name = _column(left)
    value = _literal(right)
    if name in facts.partition:
        actual = facts.partition[name]
        if actual is None or value is None:
            return True  # a comparison with null is never true
        if not _same_kind(actual, value):
            raise _UnknownError
        return not _compare(actual, op, value)
    if value is None:
        return True
    low, high = facts.minimum.get(name), facts.maximum.get(name)
    if isinstance(high, str) and len(high) >= TRUNCATED_STRINGS:
        high = None  # perhaps a truncated prefix: below the true maximum
    low_ok, high_ok = _usable(low, value), _usable(high, value)
    if op == "=" and (low_ok or high_ok):
        return bool((low_ok and value < low) or (high_ok and value > high))
    if op == "!=" and low_ok and high_ok:
        return bool(low == high == value)
    if op in ("<", "<=") and low_ok:
        return not _compare(low, op, value)
    if op in (">", ">=") and high_ok:
        return not _compare(high, op, value)
    raise _UnknownError


def _compare(a: Any, op: str, b: Any) -> bool:
    try:
        result = {
            "=": lambda: a == b,
            "!=": lambda: a != b,
            "<": lambda: a < b,
            "<=": lambda: a <= b,
            ">": lambda: a > b,
            ">=": lambda: a >= b,
        }[op]()
    except TypeError as exc:
        raise _UnknownError from exc
    return bool(result)


def _same_kind(a: Any, b: Any) -> bool:
    """Values Python compares as SQL does: both numbers, both naive or both aware times, one type."""
    numeric = (int, float, decimal.Decimal)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b)
    if isinstance(a, numeric) and isinstance(b, numeric):
        return True
    if isinstance(a, datetime.datetime) and isinstance(b, datetime.datetime):
        return (a.tzinfo is None) == (b.tzinfo is None)
    return type(a) is type(b)


def _usable(stat: Any, value: Any) -> bool:
    """A statistic and a literal that order the way SQL orders them."""
    if stat is None or isinstance(stat, bool) or isinstance(value, bool):
        return False
    if isinstance(stat, datetime.datetime) or isinstance(value, datetime.datetime):
        return False
    numeric = (int, decimal.Decimal)
    if isinstance(stat, numeric) and isinstance(value, numeric):
        return True
    return isinstance(stat, _RANGE_TYPES) and type(stat) is type(value)


def _column(expr: dfx.Expr) -> str:
    v = expr.to_variant()
    if not isinstance(v, dfx.Column):
        raise _UnknownError
    return str(v.name())


def _literal(expr: dfx.Expr) -> Any:
    if not isinstance(expr.to_variant(), dfx.Literal):
        raise _UnknownError
    value = expr.python_value()  # a pyarrow scalar
    return value.as_py() if hasattr(value, "as_py") else value
