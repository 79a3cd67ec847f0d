"""The rewrites of a parsed query, in place, where DataFusion would otherwise read it differently.

Which rewrites exist, and why, is listed in :mod:`ematix_flow.pipelines.dialect`; what DataFusion
merely spells differently is the generator's (:mod:`ematix_flow.pipelines.dialect.generator`).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types

from ematix_flow.errors import QueryError

_INTEGER_TYPES = (
    exp.DType.TINYINT, exp.DType.SMALLINT, exp.DType.INT, exp.DType.BIGINT, exp.DType.UTINYINT,
    exp.DType.USMALLINT, exp.DType.UINT, exp.DType.UBIGINT, exp.DType.INT128,
)  # fmt: skip


def rewrite(tree: exp.Expr, source: str) -> None:
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
        dow = date_part("dow", node.this)
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
    value = literal_int(start)
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


def literal_int(node: exp.Expr) -> int | None:
    """The value of an integer literal (or its negation), else None."""
    if isinstance(node, exp.Neg):
        inner = literal_int(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Literal) and node.is_int:
        return int(node.name)
    return None


def date_part(part: str, value: exp.Expr) -> exp.Expr:
    """``date_part('part', value)``, a call DataFusion reads as it is written."""
    return exp.Anonymous(this="date_part", expressions=[exp.Literal.string(part), value.copy()])
