"""The SQL generator: sqlglot's PostgreSQL generator, with what DataFusion spells differently.

Time formats become chrono's (``to_char``, ``to_timestamp``), ``TRY_CAST``, ``array_has``,
``date_part``, ``regexp_match``...; what would change meaning is refused through
``self.unsupported``, which :func:`ematix_flow.pipelines.dialect.translate` raises as a QueryError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from sqlglot import exp
from sqlglot.dialects.dialect import count_if_to_sum
from sqlglot.generators.postgres import PostgresGenerator
from sqlglot.time import format_time

from ematix_flow.pipelines.dialect.rewrites import date_part, literal_int

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

Generate = Callable[["DataFusionGenerator", Any], str]


def _chrono(self: DataFusionGenerator, node: exp.Expr) -> str:
    """A node's time format as DataFusion (chrono) reads it, quoted."""
    fmt = node.args.get("format")
    text = fmt.name if isinstance(fmt, exp.Literal) else _DEFAULT_FORMAT
    return self.sql(exp.Literal.string(format_time(text, _CHRONO_FORMAT) or text))


def _time_function(name: str) -> Generate:
    return lambda self, e: self.func(name, e.this, _chrono(self, e))


def _str_to_unix(self: DataFusionGenerator, e: exp.StrToUnix) -> str:
    """Seconds since 1970; DataFusion takes a format only for strings, and reads the default itself."""
    fmt = _chrono(self, e)
    if fmt == self.sql(exp.Literal.string(_DEFAULT_FORMAT)):
        return self.func("to_unixtime", e.this)
    return self.func("to_unixtime", e.this, fmt)


def _part(part: str) -> Generate:
    return lambda self, e: self.sql(date_part(part, e.this))


def _try_cast(self: DataFusionGenerator, e: exp.TryCast) -> str:
    return f"TRY_CAST({self.sql(e, 'this')} AS {self.sql(e, 'to')})"


def _count_if(self: DataFusionGenerator, e: exp.CountIf) -> str:
    """Spark counts (0 over no rows); DuckDB sums (NULL over no rows)."""
    if self.source == "duckdb":
        return count_if_to_sum(self, e)
    return self.func("count", exp.Case(ifs=[exp.If(this=e.this, true=exp.Literal.number(1))]))


def _int_div(self: DataFusionGenerator, e: exp.IntDiv) -> str:
    """Spark's ``a DIV b``: the integral part of the quotient."""
    return f"CAST({self.sql(e, 'this')} / {self.sql(e, 'expression')} AS BIGINT)"


def _trunc(self: DataFusionGenerator, e: exp.DateTrunc | exp.TimestampTrunc) -> str:
    unit = e.text("unit").upper()
    if unit not in _TRUNC_UNITS:
        self.unsupported(f"date_trunc unit {unit!r}")
    call = self.func("date_trunc", exp.Literal.string(_TRUNC_UNITS.get(unit, unit.lower())), e.this)
    return f"CAST({call} AS DATE)" if isinstance(e, exp.DateTrunc) else call


def _date_diff(self: DataFusionGenerator, e: exp.DateDiff) -> str:
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
        years = date_part("year", end) - date_part("year", start)
        if unit == "YEAR":
            return f"CAST({self.sql(years)} AS BIGINT)"
        part, per_year = ("quarter", 4) if unit == "QUARTER" else ("month", 12)
        parts = date_part(part, end) - date_part(part, start)
        return f"CAST({self.sql(exp.paren(years) * per_year + parts)} AS BIGINT)"
    if unit in _DIFF_SECONDS:
        epochs = [
            date_part(
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

    def sql(self: DataFusionGenerator, e: exp.DateAdd | exp.DateSub | exp.TsOrDsAdd) -> str:
        amount, unit = e.expression, e.text("unit").upper() or "DAY"
        constant = isinstance(amount, exp.Literal | exp.Interval) or literal_int(amount) is not None
        if unit != "DAY" or constant:
            return postgres(self, e)
        days = exp.cast(e.this, exp.DType.DATE)
        return self.sql(exp.paren(days + amount if sign > 0 else days - amount))

    return sql


def _add_months(self: DataFusionGenerator, e: exp.AddMonths) -> str:
    months = literal_int(e.expression)
    if months is None:
        self.unsupported("add_months by a number of months that is not a constant")
        return ""
    return f"CAST({self.sql(e, 'this')} + INTERVAL '{months} MONTH' AS DATE)"


def _regexp_extract(self: DataFusionGenerator, e: exp.RegexpExtract) -> str:
    """The group's text, ``''`` when nothing matches, NULL for NULL (Spark's and DuckDB's)."""
    group = literal_int(e.args.get("group") or exp.Literal.number(0))
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


def _split(self: DataFusionGenerator, e: exp.Split | exp.RegexpSplit) -> str:
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

    def sql(self: DataFusionGenerator, e: exp.ArgMax | exp.ArgMin) -> str:
        value, key = self.sql(e, "this"), self.sql(e, "expression")
        order = f"{key} DESC" if desc else key
        skip = f"{key} IS NOT NULL" + (f" AND {value} IS NOT NULL" if self.source == "duckdb" else "")
        return f"first_value({value} ORDER BY {order}) FILTER (WHERE {skip})"

    return sql


def _collect_set(self: DataFusionGenerator, e: exp.ArrayUniqueAgg) -> str:
    value = self.sql(e, "this")
    return f"array_agg(DISTINCT {value}) FILTER (WHERE {value} IS NOT NULL)"


def _call(name: str, *args: str) -> Generate:
    """``name(...)`` of the node's ``args``, in that order."""
    return lambda self, e: self.func(name, *(e.args.get(arg) for arg in args))


def _to_char(fixed: str) -> Generate:
    return lambda self, e: self.func("to_char", e.this, exp.Literal.string(fixed))


def _unix_to_str(self: DataFusionGenerator, e: exp.UnixToStr) -> str:
    return self.func("to_char", exp.func("to_timestamp_seconds", e.this), _chrono(self, e))


def _unix_to_time(self: DataFusionGenerator, e: exp.UnixToTime) -> str:
    scale = literal_int(e.args.get("scale") or exp.Literal.number(0))
    names = {0: "seconds", 3: "millis", 6: "micros", 9: "nanos"}
    if scale not in names:
        self.unsupported(f"a unix time with scale {scale}")
    return self.func(f"to_timestamp_{names.get(scale or 0, 'seconds')}", e.this)


class DataFusionGenerator(PostgresGenerator):
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
