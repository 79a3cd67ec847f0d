from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from ematix_flow.workloads import compare, tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = pytest.mark.timeout(30)


def test_equal_tables() -> None:
    t = pa.table({"a": [1, 2, None], "b": ["x", None, "z"], "c": [1.5, None, float("nan")]})
    assert compare_tables(t, t, ordered=True) is None
    assert compare_tables(t, t, ordered=False) is None


def test_row_count_differs() -> None:
    diff = compare_tables(pa.table({"a": [1, 2]}), pa.table({"a": [1]}), ordered=False)
    assert diff == "row count differs: actual 2, expected 1"


def test_column_count_and_names() -> None:
    diff = compare_tables(pa.table({"a": [1]}), pa.table({"a": [1], "b": [2]}), ordered=False)
    assert diff is not None and diff.startswith("column count differs")
    diff = compare_tables(pa.table({"a": [1]}), pa.table({"b": [1]}), ordered=False)
    assert diff == "column 0 name differs: actual 'a', expected 'b'"
    unnamed = compare_tables(pa.table({"a": [1]}), pa.table({"b": [1]}), ordered=False, check_names=False)
    assert unnamed is None
    assert compare_tables(pa.table({"A": [1]}), pa.table({"a": [1]}), ordered=True) is None


def test_type_kind_mismatch() -> None:
    diff = compare_tables(pa.table({"a": ["1"]}), pa.table({"a": [1]}), ordered=True)
    assert diff == "column a type differs: actual string, expected int64"


def test_harmless_type_differences() -> None:
    actual = pa.table(
        {
            "s": pa.array(["x", "y"], pa.string_view()),
            "i": pa.array([1, 2], pa.int32()),
            "d": pa.array([Decimal("1.50"), Decimal("2.25")], pa.decimal128(25, 2)),
            "day": pa.array([dt.date(2020, 1, 1), None], pa.date32()),
        }
    )
    expected = pa.table(
        {
            "s": pa.array(["x", "y"], pa.large_string()),
            "i": pa.array([1, 2], pa.int64()),
            "d": pa.array([1.5, 2.25], pa.float64()),
            "day": pa.array([dt.date(2020, 1, 1), None], pa.date32()),
        }
    )
    assert compare_tables(actual, expected, ordered=True) is None
    dictionary = pa.table({"s": pa.array(["x", "y"]).dictionary_encode()})
    assert compare_tables(dictionary, pa.table({"s": ["x", "y"]}), ordered=True) is None


def test_float_tolerance() -> None:
    base = pa.table({"v": [1000.0, 0.0, -3.5]})
    close = pa.table({"v": [1000.0000001, 1e-12, -3.5000000001]})
    far = pa.table({"v": [1000.1, 0.0, -3.5]})
    assert compare_tables(close, base, ordered=True) is None
    assert compare_tables(far, base, ordered=True) == "row 0, column v: actual 1000.1, expected 1000.0"
    assert compare_tables(far, base, ordered=True, rel_tol=1e-3) is None


def test_integers_are_exact() -> None:
    diff = compare_tables(pa.table({"n": [10**15 + 1]}), pa.table({"n": [10**15]}), ordered=True)
    assert diff is not None and "column n" in diff


def test_nulls() -> None:
    assert compare_tables(pa.table({"a": [None, 1]}), pa.table({"a": [None, 1]}), ordered=True) is None
    diff = compare_tables(pa.table({"a": [None, 1]}), pa.table({"a": [0, 1]}), ordered=True)
    assert diff == "row 0, column a: actual None, expected 0"
    null_column = pa.table({"a": pa.nulls(2)})
    typed_nulls = pa.table({"a": pa.array([None, None], pa.int64())})
    assert compare_tables(null_column, typed_nulls, ordered=True) is None


def test_unordered_sorts_mixed_nulls() -> None:
    actual = pa.table({"k": ["b", None, "a", "a"], "v": [2.0, None, 1.0, None]})
    expected = pa.table({"k": ["a", "a", None, "b"], "v": [None, 1.0, None, 2.0]})
    assert compare_tables(actual, expected, ordered=False) is None
    diff = compare_tables(actual, expected, ordered=True, lenient_ties=False)
    assert diff is not None and diff.startswith("row 0, column k")


def test_unordered_float_only_rows_near_rounding_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.23454999999999 and 1.23455000000001 are equal within tolerance but round (5 significant digits)
    # to different sort keys, so the sorted alignment pairs rows wrongly; the tolerant multiset match
    # must still find the pairing.
    actual = pa.table({"x": [1.23454999999999, 1.23452]})
    expected = pa.table({"x": [1.23452, 1.23455000000001]})
    assert compare_tables(actual, expected, ordered=False) is None
    monkeypatch.setattr(compare, "_multiset_match", lambda *args: False)
    diff = compare_tables(actual, expected, ordered=False)
    assert diff is not None and diff.startswith("after sorting")


def test_unordered_difference_reported_after_sorting() -> None:
    actual = pa.table({"k": [2, 1], "v": ["b", "a"]})
    expected = pa.table({"k": [1, 2], "v": ["a", "c"]})
    diff = compare_tables(actual, expected, ordered=False)
    assert diff == "after sorting, row 1, column v: actual 'b', expected 'c'"


def test_ordered_ties_lenient_by_default() -> None:
    actual = pa.table({"k": [1, 1, 2], "v": ["y", "x", "z"]})
    expected = pa.table({"k": [1, 1, 2], "v": ["x", "y", "z"]})
    assert compare_tables(actual, expected, ordered=True) is None
    diff = compare_tables(actual, expected, ordered=True, lenient_ties=False)
    assert diff == "row 0, column v: actual 'y', expected 'x'"


def test_ordered_real_difference_still_reported() -> None:
    diff = compare_tables(pa.table({"v": [1, 3]}), pa.table({"v": [1, 2]}), ordered=True)
    assert diff == "row 1, column v: actual 3, expected 2"


def test_long_values_are_shortened() -> None:
    diff = compare_tables(pa.table({"s": ["x" * 500]}), pa.table({"s": ["y" * 500]}), ordered=True)
    assert diff is not None and len(diff) < 250 and "\n" not in diff


def test_nested_and_timestamp_values() -> None:
    ts = dt.datetime(2024, 5, 1, 12, 0)
    actual = pa.table({"l": [[1.0, 2.0], None], "t": [ts, None]})
    expected = pa.table({"l": [None, [1.0, 2.0000000001]], "t": [None, ts]})
    assert compare_tables(actual, expected, ordered=False) is None


def test_empty_tables() -> None:
    empty = pa.table({"a": pa.array([], pa.int64())})
    assert compare_tables(empty, empty, ordered=True) is None
    assert compare_tables(pa.table({}), pa.table({}), ordered=False) is None


@pytest.mark.parametrize(
    ("sql", "ordered"),
    [
        ("SELECT a FROM t ORDER BY a", True),
        ("select a from t order\n  by a desc limit 3", True),
        ("SELECT a FROM (SELECT a FROM t ORDER BY a) AS s", False),
        ("SELECT row_number() OVER (ORDER BY a) FROM t", False),
        ("SELECT 'ORDER BY' AS x FROM t", False),
        ("SELECT a FROM t -- ORDER BY a", False),
        ("SELECT a FROM t /* ORDER BY a */", False),
        ("WITH s AS (SELECT a FROM t ORDER BY a) SELECT * FROM s", False),
        ("WITH s AS (SELECT a FROM t) SELECT * FROM s ORDER BY 1", True),
        ('SELECT a AS "order" FROM t', False),
        ("SELECT border, byline FROM t", False),
    ],
)
def test_query_is_ordered(sql: str, ordered: bool) -> None:
    assert query_is_ordered(sql) is ordered


def test_tpch_queries_ordered() -> None:
    unordered = {name for name, sql in tpch.queries().items() if not query_is_ordered(sql)}
    assert unordered == {"q06", "q14", "q17", "q19"}
