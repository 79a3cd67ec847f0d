"""Spark and DuckDB SQL translated to DataFusion SQL, with sqlglot.

sqlglot has no DataFusion dialect. DataFusion's SQL is closest to PostgreSQL's (its parser, NULL
ordering, 1-based arrays), so a query is parsed in its own dialect, rewritten where its meaning
would otherwise change, and written by sqlglot's PostgreSQL generator with overrides for what
DataFusion spells differently (``to_char`` with strftime formats, ``TRY_CAST``, ``array_has``,
``date_part``, ``regexp_match`` ...). Function names are written in lower case: DataFusion looks
table functions (``generate_series``, ``range``) up case-sensitively.

Rewritten to keep their meaning: Spark ``dayofweek`` (1 = Sunday), ``DIV``, ``count_if`` (0 over
no rows), ``substr`` from 0, ``GROUP BY ... WITH ROLLUP|CUBE`` (DataFusion would ignore it),
``date_add`` by a column; DuckDB casts of non-integers to integers (DuckDB rounds, DataFusion
truncates: ``round`` is added where sqlglot can tell the operand is not an integer), ``//``,
``date_diff`` (boundaries crossed), ``count_if`` (NULL over no rows), ``arg_max`` (skips NULL
values), ``SEMI``/``ANTI JOIN``; both: ``substr`` from a negative constant, ``regexp_extract``
(``''`` when nothing matches), ``GROUP BY ALL``, ``ORDER BY ALL``, strftime-style formats,
``dayname``, ``monthname``. Spark's ``CAST`` gives NULL for a value it cannot convert (its
non-ANSI default), so it becomes ``TRY_CAST``; Spark's ``TIMESTAMP`` (session time zone) is
read as a timestamp without time zone. Query hints are dropped.

Refused with a QueryError naming the construct: what sqlglot cannot write for PostgreSQL (PIVOT,
``initcap`` from Spark ...), ``TRANSFORM ... USING``, ``TABLESAMPLE``/``USING SAMPLE``
(DataFusion would read every row), ``LATERAL VIEW``, lambdas, time zone conversions (``AT TIME
ZONE``, ``from_utc_timestamp``), ``months_between``, ``timestampdiff``, ``add_months`` by a
non-constant, ``split`` on a regular expression, DuckDB ``epoch_ms`` of a non-number. A
function DataFusion lacks (``pmod``, ``printf`` ...) is named by DataFusion when it plans.

Not detected, as sqlglot cannot see column types: ``len`` of a DuckDB list (use
``array_length``), a DuckDB cast of a float or decimal *column* (or of text like ``'1.5'``) to
an integer (add ``round``), ``substr`` from a negative start that is not a constant, the text of
a timestamp cast to a string (DataFusion writes ``2026-01-02T10:00:00``), splitting ``''``
(DataFusion: an empty list, DuckDB and Spark: ``['']``).

Example:
    >>> translate("SELECT `id`, NVL(x, 0) AS x FROM t", "spark")
    'SELECT "id", coalesce(x, 0) AS x FROM t'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import count_if_to_sum
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError
from sqlglot.generators.postgres import PostgresGenerator
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.time import format_time

from ematix_flow.errors import ConfigError, QueryError, first_line

SOURCES = ("datafusion", "spark", "duckdb")
#: sqlglot's time format (Python strftime, with Spark's strict markers) -> chrono's (DataFusion).
_CHRONO_FORMAT = {
    "%mstrict": "%m", "%dstrict": "%d", "%Hstrict": "%H", "%Istrict": "%I", "%Mstrict": "%M",
    "%Sstrict": "%S", "%f": "%6f", "%g": "%3f", "%n": "%9f",  # micro-, milli-, nanoseconds
}  # fmt: skip
_DEFAULT_FORMAT = "%Y-%m-%d %H:%M:%S"
#: date_trunc / trunc units, as DataFusion names them.
_TRUNC_UNITS = {
    "YEAR": "year", "YYYY": "year", "YY": "year", "QUARTER": "quarter", "Q": "quarter",
    "MONTH": "month", "MON": "month", "MM": "month", "WEEK": "week", "DAY": "day", "DD": "day",
    "HOUR": "hour", "MINUTE": "minute", "SECOND": "second", "MILLISECOND": "millisecond",
    "MICROSECOND": "microsecond",
}  # fmt: skip
#: date_diff units counted as boundaries crossed: seconds per unit, from epoch seconds.
_DIFF_SECONDS = {"HOUR": 3600, "MINUTE": 60, "SECOND": 1, "MILLISECOND": 0.001, "MICROSECOND": 0.000001}
_INTEGER_TYPES = (
    exp.DType.TINYINT, exp.DType.SMALLINT, exp.DType.INT, exp.DType.BIGINT, exp.DType.UTINYINT,
    exp.DType.USMALLINT, exp.DType.UINT, exp.DType.UBIGINT, exp.DType.INT128,
)  # fmt: skip
_REFUSED: tuple[tuple[type[exp.Expr], str], ...] = (
    (exp.QueryTransform, "TRANSFORM ... USING (an external script)"),
    (exp.TableSample, "TABLESAMPLE / USING SAMPLE (DataFusion would read every row)"),
    (exp.Lambda, "lambda functions (x -> ...)"),
    (exp.AtTimeZone, "time zone conversion (AT TIME ZONE, from_utc_timestamp, to_utc_timestamp)"),
    (exp.MonthsBetween, "months_between"),
    (exp.TimestampDiff, "timestampdiff"),
)


def translate(sql: str, source: str, *, pretty: bool = False) -> str:
    """``sql`` in ``source``'s dialect ("datafusion": returned unchanged) as DataFusion SQL.

    Raises QueryError, naming the construct, for SQL that cannot be parsed or translated, and
    ConfigError for an unknown ``source``.
    """
    if source == "datafusion":
        return sql
    if source not in SOURCES:
        raise ConfigError(f"unknown SQL dialect {source!r}: use one of {', '.join(SOURCES)}")
    tree = _parse(sql, source)
    _refuse(tree, source)
    _rewrite(tree, source)
    generator = _DataFusionGenerator(
        source, pretty=pretty, unsupported_level=ErrorLevel.RAISE, normalize_functions="lower"
    )
    try:
        return generator.generate(tree, copy=False)
    except SqlglotError as exc:
        raise QueryError(f"cannot translate {source} SQL to DataFusion: {first_line(exc)}") from exc


# -------------------------------------------------------------------------------- parse, refuse
def _parse(sql: str, source: str) -> exp.Expr:
    """The one query of ``sql``."""
    try:
        trees = [tree for tree in sqlglot.parse(sql, read=source, error_level=ErrorLevel.RAISE) if tree]
    except ParseError as exc:
        error = exc.errors[0] if exc.errors else {}
        where = f" at line {error['line']}, column {error['col']}" if "line" in error else ""
        what = error.get("description") or first_line(exc)
        raise QueryError(f"cannot parse the {source} SQL{where}: {what}") from exc
    except SqlglotError as exc:
        raise QueryError(f"cannot parse the {source} SQL: {first_line(exc)}") from exc
    if len(trees) != 1:
        raise QueryError(f"give exactly one {source} query, not {len(trees)} statements")
    tree = trees[0]
    if not isinstance(tree, exp.Query):
        raise QueryError(f"only a query (SELECT ...) can be translated, not {tree.key.upper()}")
    return tree


def _refuse(tree: exp.Expr, source: str) -> None:
    """QueryError for constructs that would translate silently wrong or not at all."""
    for kind, what in _REFUSED:
        if tree.find(kind):
            raise QueryError(f"cannot translate {source} SQL to DataFusion: {what} is not supported")
    if any(lateral.args.get("view") for lateral in tree.find_all(exp.Lateral)):
        raise QueryError(
            f"cannot translate {source} SQL to DataFusion: LATERAL VIEW is not supported "
            "(write explode(...) in the SELECT list)"
        )


# -------------------------------------------------------------------------------- rewrites
def _rewrite(tree: exp.Expr, source: str) -> None:
    """Rewrite, in place, what would otherwise mean something else in DataFusion."""
    for hint in list(tree.find_all(exp.Hint)):
        hint.pop()
    for join in tree.find_all(exp.Join):  # DuckDB's SEMI JOIN: DataFusion says LEFT SEMI JOIN
        if join.kind in ("SEMI", "ANTI") and not join.side:
            join.set("side", "LEFT")
    for select in list(tree.find_all(exp.Select)):
        _group_by_all(select)
        _order_by_all(select)
        _rollup_and_cube(select)
    for node in list(tree.find_all(exp.DayOfWeek)):
        dow = _date_part("dow", node.this)
        node.replace(exp.paren(dow + 1) if source == "spark" else dow)
    for substring in list(tree.find_all(exp.Substring)):
        _substring_start(substring, source)
    if source == "spark":
        for data_type in list(tree.find_all(exp.DataType)):
            if data_type.this == exp.DType.TIMESTAMPTZ:
                data_type.set("this", exp.DType.TIMESTAMP)
    if source == "duckdb":
        _duckdb_types(tree)
        for div in list(tree.find_all(exp.IntDiv)):  # DuckDB's // is DataFusion's / (both truncate)
            div.replace(exp.Div(this=div.this, expression=div.expression, typed=True))


def _group_by_all(select: exp.Select) -> None:
    """``GROUP BY ALL``: by position, every selected expression without an aggregate."""
    group = select.args.get("group")
    if group is None or not group.args.get("all"):
        return
    positions = [exp.Literal.number(i) for i, e in enumerate(select.selects, 1) if not e.find(exp.AggFunc)]
    select.set("group", exp.Group(expressions=positions) if positions else None)


def _order_by_all(select: exp.Select) -> None:
    """``ORDER BY ALL [DESC]``: every selected expression, left to right, the same way."""
    order = select.args.get("order")
    if order is None or len(order.expressions) != 1:
        return
    ordered = order.expressions[0]
    if not (isinstance(ordered.this, exp.Var) and ordered.this.name.upper() == "ALL"):
        return
    keys = [
        exp.Ordered(
            this=exp.Literal.number(i),
            desc=ordered.args.get("desc"),
            nulls_first=ordered.args.get("nulls_first"),
        )
        for i in range(1, len(select.selects) + 1)
    ]
    order.set("expressions", keys)


def _rollup_and_cube(select: exp.Select) -> None:
    """``GROUP BY a WITH ROLLUP`` (which DataFusion ignores) as ``GROUP BY ROLLUP (a)``; CUBE alike."""
    group = select.args.get("group")
    if group is None:
        return
    for key, kind in (("rollup", exp.Rollup), ("cube", exp.Cube)):
        wrappers = group.args.get(key) or []
        if len(wrappers) == 1 and not wrappers[0].expressions and group.expressions:
            group.set(key, [kind(expressions=group.expressions)])
            group.set("expressions", [])


def _substring_start(substring: exp.Substring, source: str) -> None:
    """A constant start of 0 (Spark: the first character) or below (counted from the end)."""
    start = substring.args.get("start")
    if start is None:
        return
    value = _integer(start)
    if value is None or value > 0:
        return
    if value == 0:
        if source == "spark":
            substring.set("start", exp.Literal.number(1))
        return
    length = exp.Length(this=substring.this.copy())
    substring.set("start", exp.paren(length + exp.Literal.number(value + 1)))


def _duckdb_types(tree: exp.Expr) -> None:
    """Where DuckDB's meaning depends on a type sqlglot can infer.

    DuckDB rounds a float or decimal cast to an integer type where DataFusion truncates, so
    ``round()`` is added; sqlglot reads ``epoch_ms(x)`` as milliseconds to a timestamp, which is
    DuckDB's meaning only when ``x`` is a number.
    """
    annotate_types(tree, dialect="duckdb")
    for call in tree.find_all(exp.UnixToTime):
        operand = call.this.type
        if call.args.get("scale") is not None and not (
            operand and operand.is_type(*exp.DataType.NUMERIC_TYPES)
        ):
            raise QueryError(
                "cannot translate duckdb SQL to DataFusion: epoch_ms/epoch_us of a value that is not "
                "a number (of a timestamp it means the reverse): write epoch(x) * 1000"
            )
    for cast in list(tree.find_all(exp.Cast)):  # TryCast is a Cast
        operand = cast.this
        if cast.to.is_type(*_INTEGER_TYPES) and _fractional(operand):
            operand.replace(exp.Round(this=operand.copy()))


def _fractional(node: exp.Expr) -> bool:
    """Whether sqlglot can tell a DuckDB expression is a float or decimal (``/`` always is)."""
    inner = node.unnest()
    if isinstance(inner, exp.Div) and not inner.args.get("typed"):
        return True
    return inner.type is not None and inner.type.is_type(*exp.DataType.REAL_TYPES)


def _integer(node: exp.Expr) -> int | None:
    """The value of an integer literal (or its negation), else None."""
    if isinstance(node, exp.Neg):
        inner = _integer(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Literal) and node.is_int:
        return int(node.name)
    return None


def _date_part(part: str, value: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this="date_part", expressions=[exp.Literal.string(part), value.copy()])


# -------------------------------------------------------------------------------- generator
Generate = Callable[["_DataFusionGenerator", Any], str]


def _chrono(self: _DataFusionGenerator, node: exp.Expr) -> str:
    """A node's time format as DataFusion (chrono) reads it, quoted."""
    fmt = node.args.get("format")
    text = fmt.name if isinstance(fmt, exp.Literal) else _DEFAULT_FORMAT
    return self.sql(exp.Literal.string(format_time(text, _CHRONO_FORMAT) or text))


def _time_function(name: str) -> Generate:
    return lambda self, e: self.func(name, e.this, _chrono(self, e))


def _str_to_unix(self: _DataFusionGenerator, e: exp.StrToUnix) -> str:
    """Seconds since 1970; DataFusion takes a format only for strings, and reads the default itself."""
    fmt = _chrono(self, e)
    if fmt == self.sql(exp.Literal.string(_DEFAULT_FORMAT)):
        return self.func("to_unixtime", e.this)
    return self.func("to_unixtime", e.this, fmt)


def _part(part: str) -> Generate:
    return lambda self, e: self.sql(_date_part(part, e.this))


def _try_cast(self: _DataFusionGenerator, e: exp.TryCast) -> str:
    return f"TRY_CAST({self.sql(e, 'this')} AS {self.sql(e, 'to')})"


def _count_if(self: _DataFusionGenerator, e: exp.CountIf) -> str:
    """Spark counts (0 over no rows); DuckDB sums (NULL over no rows)."""
    if self.source == "duckdb":
        return count_if_to_sum(self, e)
    return self.func("count", exp.Case(ifs=[exp.If(this=e.this, true=exp.Literal.number(1))]))


def _int_div(self: _DataFusionGenerator, e: exp.IntDiv) -> str:
    """Spark's ``a DIV b``: the integral part of the quotient."""
    return f"CAST({self.sql(e, 'this')} / {self.sql(e, 'expression')} AS BIGINT)"


def _trunc(self: _DataFusionGenerator, e: exp.DateTrunc | exp.TimestampTrunc) -> str:
    unit = e.text("unit").upper()
    if unit not in _TRUNC_UNITS:
        self.unsupported(f"date_trunc unit {unit!r}")
    call = self.func("date_trunc", exp.Literal.string(_TRUNC_UNITS.get(unit, unit.lower())), e.this)
    return f"CAST({call} AS DATE)" if isinstance(e, exp.DateTrunc) else call


def _date_diff(self: _DataFusionGenerator, e: exp.DateDiff) -> str:
    """``end - start`` in ``unit``, counted as unit boundaries crossed (DuckDB; Spark's datediff)."""
    unit = e.text("unit").upper() or "DAY"
    end, start = e.this, e.expression
    if self.source == "spark" and unit != "DAY":
        self.unsupported(f"datediff in {unit} (Spark counts whole units elapsed)")
        return ""
    if unit == "DAY":
        return self.sql(exp.paren(exp.cast(end, exp.DType.DATE) - exp.cast(start, exp.DType.DATE)))
    if unit == "WEEK":  # DuckDB: whole weeks of days
        days = exp.cast(end, exp.DType.DATE) - exp.cast(start, exp.DType.DATE)
        return f"CAST(({self.sql(days)}) / 7 AS BIGINT)"
    if unit in ("YEAR", "QUARTER", "MONTH"):
        years = _date_part("year", end) - _date_part("year", start)
        if unit == "YEAR":
            return f"CAST({self.sql(years)} AS BIGINT)"
        part, per_year = ("quarter", 4) if unit == "QUARTER" else ("month", 12)
        parts = _date_part(part, end) - _date_part(part, start)
        return f"CAST({self.sql(exp.paren(years) * per_year + parts)} AS BIGINT)"
    if unit in _DIFF_SECONDS:
        epochs = [
            _date_part(
                "epoch",
                exp.Anonymous(this="date_trunc", expressions=[exp.Literal.string(unit.lower()), d.copy()]),
            )
            for d in (end, start)
        ]
        seconds = exp.paren(epochs[0] - epochs[1])
        return f"CAST(round({self.sql(seconds)} / {_DIFF_SECONDS[unit]!r}) AS BIGINT)"
    self.unsupported(f"date_diff unit {unit!r}")
    return ""


def _add_days(postgres: Generate, sign: int) -> Generate:
    """``date_add(d, n)``/``date_sub`` by a non-constant number of days: date arithmetic.

    DataFusion cannot multiply an interval by a column; other cases are PostgreSQL's.
    """

    def sql(self: _DataFusionGenerator, e: exp.DateAdd | exp.DateSub | exp.TsOrDsAdd) -> str:
        amount, unit = e.expression, e.text("unit").upper() or "DAY"
        constant = isinstance(amount, exp.Literal | exp.Interval) or _integer(amount) is not None
        if unit != "DAY" or constant:
            return postgres(self, e)
        days = exp.cast(e.this, exp.DType.DATE)
        return self.sql(exp.paren(days + amount if sign > 0 else days - amount))

    return sql


def _add_months(self: _DataFusionGenerator, e: exp.AddMonths) -> str:
    months = _integer(e.expression)
    if months is None:
        self.unsupported("add_months by a number of months that is not a constant")
        return ""
    return f"CAST({self.sql(e, 'this')} + INTERVAL '{months} MONTH' AS DATE)"


def _regexp_extract(self: _DataFusionGenerator, e: exp.RegexpExtract) -> str:
    """The group's text, ``''`` when nothing matches, NULL for NULL (Spark's and DuckDB's)."""
    group = _integer(e.args.get("group") or exp.Literal.number(0))
    pattern = e.expression
    if group is None:
        self.unsupported("regexp_extract with a group that is not a constant")
        return ""
    if group == 0:  # the whole match: make it group 1
        pattern = (
            exp.Literal.string(f"({pattern.name})")
            if pattern.is_string
            else exp.func("concat", "'('", pattern, "')'")
        )
        group = 1
    match = exp.Bracket(
        this=exp.Anonymous(this="regexp_match", expressions=[e.this, pattern]),
        expressions=[exp.Literal.number(group)],
        offset=1,  # DataFusion's arrays start at 1, as written
    )
    found = exp.func("coalesce", match, exp.Literal.string(""))
    return self.sql(
        exp.Case(
            ifs=[exp.If(this=exp.Is(this=e.this.copy(), expression=exp.Null()), true=exp.Null())],
            default=found,
        )
    )


def _split(self: _DataFusionGenerator, e: exp.Split | exp.RegexpSplit) -> str:
    """``string_to_array`` on a constant delimiter (Spark's ``split`` takes a regex: plain ones only)."""
    delimiter = e.expression
    if isinstance(e, exp.RegexpSplit):
        plain = _plain_pattern(delimiter.name) if delimiter.is_string else None
        if plain is None or e.args.get("limit") is not None:
            self.unsupported("split on a regular expression (only a plain delimiter translates)")
            return ""
        delimiter = exp.Literal.string(plain)
    return self.func("string_to_array", e.this, delimiter)


def _plain_pattern(pattern: str) -> str | None:
    """The text a regex matches when it is plain text (a backslash-escaped ``|`` -> ``|``), else None."""
    out, escaped = [], False
    for ch in pattern:
        if escaped:
            if ch.isalnum():
                return None  # \d, \s, ...
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ".^$*+?()[]{}|":
            return None
        else:
            out.append(ch)
    return None if escaped or not out else "".join(out)


def _arg_extreme(desc: bool) -> Generate:
    """``arg_max``/``max_by`` (``arg_min``): the value on the row of the highest (lowest) key.

    Rows with a NULL key are skipped; DuckDB also skips rows with a NULL value, Spark does not.
    """

    def sql(self: _DataFusionGenerator, e: exp.ArgMax | exp.ArgMin) -> str:
        value, key = self.sql(e, "this"), self.sql(e, "expression")
        order = f"{key} DESC" if desc else key
        skip = f"{key} IS NOT NULL" + (f" AND {value} IS NOT NULL" if self.source == "duckdb" else "")
        return f"first_value({value} ORDER BY {order}) FILTER (WHERE {skip})"

    return sql


def _collect_set(self: _DataFusionGenerator, e: exp.ArrayUniqueAgg) -> str:
    value = self.sql(e, "this")
    return f"array_agg(DISTINCT {value}) FILTER (WHERE {value} IS NOT NULL)"


def _call(name: str, *args: str) -> Generate:
    """``name(...)`` of the node's ``args``, in that order."""
    return lambda self, e: self.func(name, *(e.args.get(arg) for arg in args))


def _to_char(fixed: str) -> Generate:
    return lambda self, e: self.func("to_char", e.this, exp.Literal.string(fixed))


def _unix_to_str(self: _DataFusionGenerator, e: exp.UnixToStr) -> str:
    return self.func("to_char", exp.func("to_timestamp_seconds", e.this), _chrono(self, e))


def _unix_to_time(self: _DataFusionGenerator, e: exp.UnixToTime) -> str:
    scale = _integer(e.args.get("scale") or exp.Literal.number(0))
    names = {0: "seconds", 3: "millis", 6: "micros", 9: "nanos"}
    if scale not in names:
        self.unsupported(f"a unix time with scale {scale}")
    return self.func(f"to_timestamp_{names.get(scale or 0, 'seconds')}", e.this)


class _DataFusionGenerator(PostgresGenerator):
    """PostgreSQL's generator, with what DataFusion spells differently."""

    #: DataFusion reads ``* EXCLUDE (...)`` (PostgreSQL's generator refuses DuckDB's EXCLUDE).
    STAR_EXCEPT = "EXCLUDE"

    def __init__(self, source: str, **options: Any) -> None:
        super().__init__(dialect="postgres", **options)
        self.source = source

    def star_sql(self, expression: exp.Star) -> str:
        """``*`` with EXCLUDE / REPLACE; ILIKE (DataFusion keeps every column) and RENAME refused."""
        if expression.args.get("ilike"):
            self.unsupported("* ILIKE is not supported (DataFusion would keep every column)")
        if expression.args.get("rename"):
            self.unsupported("* RENAME is not supported")
        return super().star_sql(expression)

    TYPE_MAPPING: ClassVar = {
        **PostgresGenerator.TYPE_MAPPING,
        exp.DType.INT128: "DECIMAL(38, 0)",
        exp.DType.UTINYINT: "TINYINT UNSIGNED",
        exp.DType.USMALLINT: "SMALLINT UNSIGNED",
        exp.DType.UINT: "INT UNSIGNED",
        exp.DType.UBIGINT: "BIGINT UNSIGNED",
    }
    TRANSFORMS: ClassVar[dict[type[exp.Expr], Callable[..., str]]] = {
        # not PostgreSQL's Select rewrite: DataFusion has QUALIFY, SEMI and ANTI joins
        **{kind: sql for kind, sql in PostgresGenerator.TRANSFORMS.items() if kind is not exp.Select},
        exp.TryCast: _try_cast,
        exp.TimeToStr: _time_function("to_char"),
        exp.StrToTime: _time_function("to_timestamp"),
        exp.StrToDate: _time_function("to_date"),
        exp.StrToUnix: _str_to_unix,
        exp.UnixToStr: _unix_to_str,
        exp.UnixToTime: _unix_to_time,
        exp.Dayname: _to_char("%A"),
        exp.Monthname: _to_char("%B"),
        exp.DayOfMonth: _part("day"),
        exp.DayOfYear: _part("doy"),
        exp.WeekOfYear: _part("week"),
        exp.Quarter: _part("quarter"),
        exp.Hour: _part("hour"),
        exp.Minute: _part("minute"),
        exp.Second: _part("second"),
        exp.DateTrunc: _trunc,
        exp.TimestampTrunc: _trunc,
        exp.DateDiff: _date_diff,
        exp.AddMonths: _add_months,
        exp.DateAdd: _add_days(PostgresGenerator.TRANSFORMS[exp.DateAdd], +1),
        exp.DateSub: _add_days(PostgresGenerator.TRANSFORMS[exp.DateSub], -1),
        exp.TsOrDsAdd: _add_days(PostgresGenerator.TRANSFORMS[exp.TsOrDsAdd], +1),
        exp.DateFromParts: _call("make_date", "year", "month", "day"),
        exp.CountIf: _count_if,
        exp.IntDiv: _int_div,
        exp.ArrayContains: _call("array_has", "this", "expression"),
        exp.ArrayUniqueAgg: _collect_set,
        exp.ApproxQuantile: _call("approx_percentile_cont", "this", "quantile"),
        exp.ArgMax: _arg_extreme(desc=True),
        exp.ArgMin: _arg_extreme(desc=False),
        exp.First: _call("first_value", "this"),
        exp.Last: _call("last_value", "this"),
        exp.RegexpExtract: _regexp_extract,
        exp.Split: _split,
        exp.RegexpSplit: _split,
    }
