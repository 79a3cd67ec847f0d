"""Compare two query answers (Arrow tables) the way a benchmark validates an engine against another.

Values are compared by column position. Types that differ harmlessly (``string`` vs ``string_view``,
``int32`` vs ``int64``, decimal precisions, decimal vs float) are treated as equal; floats and decimals
are compared within a relative tolerance; NULL equals NULL and NaN equals NaN.

Example:
    >>> import pyarrow as pa
    >>> a = pa.table({"x": [1.0, 2.0]})
    >>> compare_tables(a, pa.table({"x": [2.0, 1.0 + 1e-12]}), ordered=False) is None
    True
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.types as pat

__all__ = ["compare_tables", "query_is_ordered"]

ABS_TOL = 1e-9
"""Absolute tolerance, so that values near zero (where relative error is meaningless) compare equal."""

_MAX_SHOWN = 80

Row = tuple[Any, ...]


def compare_tables(
    actual: pa.Table,
    expected: pa.Table,
    *,
    ordered: bool,
    rel_tol: float = 1e-6,
    abs_tol: float = ABS_TOL,
    lenient_ties: bool = True,
    check_names: bool = True,
) -> str | None:
    """Compare two answers; None when equal, else a one-line description of the first difference.

    Args:
        actual: The answer under test.
        expected: The reference answer.
        ordered: Compare rows in order (the query has an ORDER BY); otherwise as multisets.
        rel_tol: Relative tolerance for floats and decimals.
        abs_tol: Absolute tolerance for floats and decimals near zero.
        lenient_ties: When ``ordered`` and the rows differ only in order, still report equality. The
            sort keys are unknown here, so rows tied on them may legitimately come out in any order;
            with this on, the order itself is not checked, only the multiset of rows.
        check_names: Also require equal column names (case-insensitive).

    Returns:
        None if the tables are equal, otherwise e.g. ``"row 3, column revenue: actual 1.5, expected 1.7"``.
    """
    problem = _compare_shape(actual, expected, check_names=check_names)
    if problem is not None:
        return problem
    approx = [
        _is_approx(a.type) or _is_approx(e.type) for a, e in zip(actual.schema, expected.schema, strict=True)
    ]
    names = actual.column_names
    left = _rows(actual, approx)
    right = _rows(expected, approx)

    def equal(x: Any, y: Any) -> bool:
        return _values_equal(x, y, rel_tol, abs_tol)

    if ordered:
        diff = _first_row_diff(left, right, names, equal, prefix="")
        if diff is None or not lenient_ties:
            return diff
        if _compare_unordered(left, right, approx, names, equal, rel_tol) is None:
            return None
        return diff
    return _compare_unordered(left, right, approx, names, equal, rel_tol)


def _compare_shape(actual: pa.Table, expected: pa.Table, *, check_names: bool) -> str | None:
    if actual.num_columns != expected.num_columns:
        return (
            f"column count differs: actual {actual.num_columns} {actual.column_names}, "
            f"expected {expected.num_columns} {expected.column_names}"
        )
    if check_names:
        for i, (a, e) in enumerate(zip(actual.column_names, expected.column_names, strict=True)):
            if a.lower() != e.lower():
                return f"column {i} name differs: actual {a!r}, expected {e!r}"
    for a_field, e_field in zip(actual.schema, expected.schema, strict=True):
        a_kind, e_kind = _kind(a_field.type), _kind(e_field.type)
        if a_kind != e_kind and "null" not in (a_kind, e_kind):
            return f"column {e_field.name} type differs: actual {a_field.type}, expected {e_field.type}"
    if actual.num_rows != expected.num_rows:
        return f"row count differs: actual {actual.num_rows}, expected {expected.num_rows}"
    return None


def _kind(t: pa.DataType) -> str:
    """A coarse type class: types of one class compare by value."""
    if pat.is_dictionary(t):
        return _kind(t.value_type)
    if pat.is_integer(t) or pat.is_floating(t) or pat.is_decimal(t):
        return "number"
    if pat.is_string(t) or pat.is_large_string(t) or pat.is_string_view(t):
        return "string"
    if pat.is_binary(t) or pat.is_large_binary(t) or pat.is_binary_view(t) or pat.is_fixed_size_binary(t):
        return "binary"
    if pat.is_list(t) or pat.is_large_list(t) or pat.is_list_view(t) or pat.is_fixed_size_list(t):
        return "list"
    if pat.is_null(t):
        return "null"
    for kind, test in (
        ("bool", pat.is_boolean),
        ("date", pat.is_date),
        ("timestamp", pat.is_timestamp),
        ("time", pat.is_time),
        ("duration", pat.is_duration),
        ("interval", pat.is_interval),
        ("struct", pat.is_struct),
        ("map", pat.is_map),
    ):
        if test(t):
            return kind
    return str(t)


def _is_approx(t: pa.DataType) -> bool:
    if pat.is_dictionary(t):
        return _is_approx(t.value_type)
    return bool(pat.is_floating(t) or pat.is_decimal(t))


def _rows(table: pa.Table, approx: Sequence[bool]) -> list[Row]:
    columns: list[list[Any]] = []
    for column, is_approx in zip(table.columns, approx, strict=True):
        values = column.to_pylist()
        if is_approx:
            values = [None if v is None else float(v) for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True)) if columns else [() for _ in range(table.num_rows)]


def _values_equal(x: Any, y: Any, rel_tol: float, abs_tol: float) -> bool:
    if x is None or y is None:
        return x is None and y is None
    if _is_number(x) and _is_number(y):
        if isinstance(x, int) and isinstance(y, int):
            return x == y
        fx, fy = float(x), float(y)
        if math.isnan(fx) or math.isnan(fy):
            return math.isnan(fx) and math.isnan(fy)
        return math.isclose(fx, fy, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(
            _values_equal(a, b, rel_tol, abs_tol) for a, b in zip(x, y, strict=True)
        )
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_values_equal(x[k], y[k], rel_tol, abs_tol) for k in x)
    return bool(x == y)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | Decimal) and not isinstance(v, bool)


def _first_row_diff(
    left: Sequence[Row],
    right: Sequence[Row],
    names: Sequence[str],
    equal: Callable[[Any, Any], bool],
    *,
    prefix: str,
) -> str | None:
    for i, (lrow, rrow) in enumerate(zip(left, right, strict=True)):
        for name, x, y in zip(names, lrow, rrow, strict=True):
            if not equal(x, y):
                return f"{prefix}row {i}, column {name}: actual {_show(x)}, expected {_show(y)}"
    return None


def _compare_unordered(
    left: Sequence[Row],
    right: Sequence[Row],
    approx: Sequence[bool],
    names: Sequence[str],
    equal: Callable[[Any, Any], bool],
    rel_tol: float,
) -> str | None:
    """Sort both sides canonically and compare; if that fails, try a tolerant multiset match."""
    digits = max(1, round(-math.log10(rel_tol)) - 1) if 0 < rel_tol < 1 else 1
    order = sorted(range(len(approx)), key=lambda c: approx[c])  # exact columns first, floats last

    def key(row: Row) -> tuple[Any, ...]:
        return tuple(_approx_key(row[c], digits) if approx[c] else _exact_key(row[c]) for c in order)

    left_sorted = sorted(left, key=key)
    right_sorted = sorted(right, key=key)
    diff = _first_row_diff(left_sorted, right_sorted, names, equal, prefix="after sorting, ")
    if diff is None or _multiset_match(left, right, approx, equal):
        return None
    return diff


def _exact_key(v: Any) -> tuple[Any, ...]:
    if v is None:
        return (0, "", "")
    if isinstance(v, bool):
        return (1, "bool", int(v))
    if isinstance(v, int):
        return (1, "int", v)
    if isinstance(v, dt.datetime):
        return (1, "datetime", v.isoformat())
    if isinstance(v, str | bytes | dt.date | dt.time | dt.timedelta):
        return (1, type(v).__name__, v)
    return (1, "repr", repr(v))


def _approx_key(v: Any, digits: int) -> tuple[Any, ...]:
    if v is None:
        return (0, 0.0)
    f = float(v)
    if math.isnan(f):
        return (2, 0.0)
    if abs(f) < ABS_TOL:
        return (1, 0.0)
    return (1, float(f"{f:.{digits}g}"))


def _multiset_match(
    left: Sequence[Row], right: Sequence[Row], approx: Sequence[bool], equal: Callable[[Any, Any], bool]
) -> bool:
    """Whether every row of ``left`` pairs with a distinct, tolerantly equal row of ``right``.

    Rows are bucketed by their exact (non-float) columns; within a bucket pairing is greedy.
    """
    exact = [c for c, is_approx in enumerate(approx) if not is_approx]
    buckets: dict[tuple[Any, ...], list[Row]] = {}
    for row in right:
        buckets.setdefault(tuple(_exact_key(row[c]) for c in exact), []).append(row)
    for row in left:
        candidates = buckets.get(tuple(_exact_key(row[c]) for c in exact))
        if not candidates:
            return False
        for j, other in enumerate(candidates):
            if all(equal(x, y) for x, y in zip(row, other, strict=True)):
                del candidates[j]
                break
        else:
            return False
    return True


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_WORD_OR_PAREN = re.compile(r"[()]|[A-Za-z_][A-Za-z_0-9]*")


def query_is_ordered(sql: str) -> bool:
    """Whether the outermost statement of ``sql`` has an ORDER BY (outside every parenthesis).

    A heuristic: comments and quoted text are removed, then ``ORDER BY`` is looked for at parenthesis
    depth 0. ORDER BY inside subqueries, CTE bodies and window clauses does not count.
    """
    text = _QUOTED.sub(" ", _COMMENTS.sub(" ", sql))
    depth = 0
    previous = ""
    for token in _WORD_OR_PAREN.findall(text):
        if token == "(":
            depth += 1
        elif token == ")":
            depth = max(0, depth - 1)
        else:
            word = token.upper()
            if depth == 0 and previous == "ORDER" and word == "BY":
                return True
            previous = word if depth == 0 else ""
            continue
        previous = ""
    return False
