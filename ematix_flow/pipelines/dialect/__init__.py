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

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError

from ematix_flow.errors import ConfigError, QueryError, first_line
from ematix_flow.pipelines.dialect.generator import DataFusionGenerator
from ematix_flow.pipelines.dialect.rewrites import rewrite

SOURCES = ("datafusion", "spark", "duckdb")
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
    rewrite(tree, source)
    generator = DataFusionGenerator(
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
