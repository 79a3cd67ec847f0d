"""Typed random expressions: columns, literals, functions, CASE, casts, aggregates, window functions.

Expressions are generated for a wanted kind (``int``, ``bool``, ...), so the queries are type-correct by
construction (a query DataFusion still rejects is discarded by the runner). What must stay
deterministic is kept so: a window function whose value depends on the order of tied rows gets the
row identity (the ``id`` columns in scope) appended to its ORDER BY; aggregates whose result depends on
row order are not generated.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tests.fuzz.sqltree import Node, Seq, node, render

__all__ = ["LITERALS", "Col", "Ctx", "ExprGen", "Scope"]

Callable0 = Callable[[], Node]

#: One simple literal of each kind: what the minimiser puts in place of an expression.
LITERALS: dict[str, str] = {
    "int": "1",
    "float": "0.5",
    "dec": "CAST(1.25 AS DECIMAL(9,2))",
    "bool": "TRUE",
    "str": "'a'",
    "date": "DATE '2024-01-02'",
    "ts": "TIMESTAMP '2024-01-02 03:00:00'",
    "tstz": "arrow_cast('2024-01-02T03:00:00Z', 'Timestamp(Microsecond, Some(\"UTC\"))')",
    "list": "make_array(1, 2)",
    "lstr": "make_array('a')",
    "struct": "named_struct('a', 1, 'b', 'a')",
}
MORE_LITERALS: dict[str, list[str]] = {
    "int": ["0", "1", "2", "3", "5", "-1", "7", "CAST(NULL AS BIGINT)"],
    "float": ["0.5", "-1.25", "2.0", "0.0", "CAST('NaN' AS DOUBLE)", "CAST(NULL AS DOUBLE)"],
    "dec": ["CAST(1.25 AS DECIMAL(9,2))", "CAST(-0.5 AS DECIMAL(9,2))", "CAST(0 AS DECIMAL(20,4))"],
    "bool": ["TRUE", "FALSE", "CAST(NULL AS BOOLEAN)"],
    "str": ["'a'", "'ab'", "''", "'zz'", "'A'", "CAST(NULL AS VARCHAR)"],
    "date": ["DATE '2024-01-02'", "DATE '2024-01-05'", "DATE '2023-12-31'"],
    "ts": ["TIMESTAMP '2024-01-02 03:00:00'", "TIMESTAMP '2024-01-01 00:00:00'"],
}
ORDERABLE = ("int", "float", "dec", "str", "date", "ts", "tstz")
#: Kinds an equality join or comparison may use (lists and structs compare too, but rarely on purpose).
COMPARABLE = (*ORDERABLE, "bool")
DIRECTIONS = ["", "ASC", "DESC", "ASC NULLS FIRST", "DESC NULLS LAST"]


@dataclass
class Col:
    """A column visible in a scope: how to name it, its kind, and facts about its values."""

    sql: str
    kind: str
    unique: bool = False
    multiplicity: int = 1
    constant: bool = False  # may be one value throughout (a literal item, a join ON no column decides)


@dataclass
class Scope:
    """The rows an expression ranges over: their columns, a row identity, an upper bound of rows."""

    cols: list[Col]
    ids: list[Col] = field(default_factory=list)  # together unique per row ([] = unknown)
    rows: int = 0

    def of_kind(self, kind: str) -> list[Col]:
        """The columns of ``kind``."""
        return [c for c in self.cols if c.kind == kind]


@dataclass
class Ctx:
    """Where an expression is generated.

    ``position`` names the clause (select, where, having, order, on, agg, window, group); ``groups``
    is set inside an aggregate query's SELECT / HAVING / ORDER BY: the grouping keys it may use.
    """

    scope: Scope
    outer: list[Scope] = field(default_factory=list)
    depth: int = 2
    position: str = "select"
    groups: list[tuple[Node, str]] | None = None
    windows: bool = False
    window_ids: list[Node] | None = None  # row identity usable in a window ORDER BY ([]: none)
    fixed_columns: frozenset[str] = frozenset()  # columns a WHERE / ON equates (window-partition-order)
    subqueries: int = 1  # how deep subqueries may still nest
    having: bool = False  # inside a HAVING clause

    def deeper(self, **changes: object) -> Ctx:
        """The context of a child expression."""
        return replace(self, depth=self.depth - 1, **changes)  # type: ignore[arg-type]


class ExprGen:
    """Expression generation; ``QueryGen`` adds the FROM clauses that subqueries need."""

    def __init__(self, rng: random.Random, avoid: frozenset[str]) -> None:
        self.rng = rng
        self.avoid = avoid
        self.windows_here = 0  # window functions in the SELECT being generated

    # ------------------------------------------------------------------------ helpers
    def chance(self, p: float) -> bool:
        """True with probability ``p``."""
        return self.rng.random() < p

    def literal(self, kind: str) -> Node:
        """A literal of ``kind``."""
        return node(kind, self.rng.choice(MORE_LITERALS.get(kind, [LITERALS[kind]])))

    def column(self, kind: str, ctx: Ctx, exclude: frozenset[str] = frozenset()) -> Node | None:
        """A column of ``kind`` from the scope (now and then from an enclosing query's: correlation)."""
        outer = [c for s in ctx.outer for c in s.of_kind(kind) if c.sql not in exclude]
        if outer and self.chance(0.2):
            return node(kind, self.rng.choice(outer).sql, tags={"correlated"})
        cols = [c for c in ctx.scope.of_kind(kind) if c.sql not in exclude]
        return node(kind, self.rng.choice(cols).sql) if cols else None

    def has(self, kind: str, ctx: Ctx) -> bool:
        """Whether ``ctx`` has a column (or grouping key) of ``kind`` to build on."""
        if ctx.groups is not None and any(k == kind for _, k in ctx.groups):
            return True
        return bool(ctx.scope.of_kind(kind))

    def pick(self, ctx: Ctx, kinds: tuple[str, ...] | list[str]) -> str:
        """One of ``kinds``, mostly one that ``ctx`` has columns of."""
        present = [k for k in kinds if self.has(k, ctx)]
        return self.rng.choice(present if present and self.chance(0.9) else list(kinds))

    def order_key(
        self, ctx: Ctx, kinds: tuple[str, ...] | list[str], exclude: frozenset[str] = frozenset()
    ) -> Node | None:
        """A column or grouping key to order by (never a literal: ``ORDER BY 5`` means column 5)."""
        for _ in range(4):
            kind = self.pick(ctx, kinds)
            if ctx.groups is not None:
                keys = [k for k, kk in ctx.groups if kk == kind]
                if keys:
                    return _copy(self.rng.choice(keys))
            else:
                col = self.column(kind, ctx, exclude)
                if col is not None:
                    return col
        return None

    # ------------------------------------------------------------------------ expressions
    def expr(self, kind: str, ctx: Ctx) -> Node:
        """A random expression of ``kind`` valid in ``ctx``."""
        if ctx.depth <= 0 or self.chance(0.35):
            return self.leaf(kind, ctx)
        builders = [b for needs, b in self.builders(kind, ctx) if all(self.has(k, ctx) for k in needs)]
        if not builders or self.chance(0.1):
            builders = [b for _, b in self.builders(kind, ctx)]
        return self.rng.choice(builders)()

    def leaf(self, kind: str, ctx: Ctx) -> Node:
        """A column, grouping key, aggregate or literal of ``kind``."""
        if ctx.groups is not None:
            keys = [k for k, kk in ctx.groups if kk == kind]
            if keys and self.chance(0.5):
                return _copy(self.rng.choice(keys))
            agg = self.aggregate(kind, ctx) if self.chance(0.85) else None
            return agg if agg is not None else self.literal(kind)
        col = self.column(kind, ctx) if self.chance(0.9) else None
        if col is None and kind == "bool" and self.chance(0.9):
            return self.comparison(ctx)
        return col if col is not None else self.literal(kind)

    def comparison(self, ctx: Ctx) -> Node:
        """``column op literal`` or ``column IS NULL``: a simple predicate over a column in scope."""
        kind = self.pick(ctx, ORDERABLE)
        col = self.column(kind, ctx)
        if col is None:
            return self.literal("bool")
        if self.chance(0.2):
            return node("bool", "(", col, self.rng.choice([" IS NULL)", " IS NOT NULL)"]))
        op = self.rng.choice(["=", "<>", "<", "<=", ">", ">="])
        return node("bool", "(", col, f" {op} ", self.literal(kind), ")")

    def builders(self, kind: str, ctx: Ctx) -> list[tuple[tuple[str, ...], Callable0]]:
        """The ways to build an expression of ``kind`` here: (the kinds each builds on, a thunk)."""
        e, d = self.expr, ctx.deeper()
        k = kind
        out: list[tuple[tuple[str, ...], Callable0]] = [
            ((), lambda: self.leaf(k, ctx)),
            ((), lambda: self.case(k, d)),
            ((k,), lambda: node(k, "coalesce(", e(k, d), ", ", e(k, d), ")")),
        ]
        if kind == "int":
            op = self.rng.choice(["+", "-", "*"])
            out += [
                (("int",), lambda: node(k, "(", e("int", d), f" {op} ", e("int", d), ")")),
                (("int",), lambda: node(k, "abs(", e("int", d), ")")),
                (("int",), lambda: node(k, "(", e("int", d), f" % {self.rng.choice([2, 3, -4])})")),
                (("str",), lambda: node(k, "character_length(", e("str", d), ")")),
                (("list",), lambda: node(k, "cardinality(", e("list", d), ")")),
                (("list",), lambda: node(k, e("list", d), "[1]")),
                (("struct",), lambda: node(k, e("struct", d), "['a']")),
                (("dec",), lambda: node(k, "CAST(", e("dec", d), " AS BIGINT)")),
                (("bool",), lambda: node(k, "CAST(", e("bool", d), " AS INT)")),
                (("date",), lambda: node(k, "date_part('day', ", e("date", d), ")")),
                (("int",), lambda: node(k, "nullif(", e("int", d), ", ", e("int", d), ")")),
            ]
        elif kind == "float":
            op = self.rng.choice([" + ", " * ", " - "])
            out += [
                (("float",), lambda: node(k, "(", e("float", d), op, e("float", d), ")")),
                (("float",), lambda: node(k, "(", e("float", d), " / 2.0)")),
                (("int",), lambda: node(k, "CAST(", e("int", d), " AS DOUBLE)")),
                (("dec",), lambda: node(k, "CAST(", e("dec", d), " AS DOUBLE)")),
                (("int",), lambda: node(k, "CAST(", e("int", d), " AS FLOAT)")),
            ]
        elif kind == "dec":
            op = self.rng.choice([" + ", " - "])
            out += [
                (("dec",), lambda: node(k, "(", e("dec", d), op, e("dec", d), ")")),
                (("int",), lambda: node(k, "CAST(", e("int", d), " AS DECIMAL(12,2))")),
                (("dec",), lambda: node(k, "abs(", e("dec", d), ")")),
            ]
        elif kind == "bool":
            out += self.predicates(ctx)
        elif kind == "str":
            out += [
                (("str",), lambda: node(k, "concat(", e("str", d), ", ", e("str", d), ")")),
                (("str",), lambda: node(k, "(", e("str", d), " || ", e("str", d), ")")),
                (("str",), lambda: node(k, self.rng.choice(["upper(", "lower(", "trim("]), e("str", d), ")")),
                (("str",), lambda: node(k, "substr(", e("str", d), ", 1, 2)")),
                (("int",), lambda: node(k, "CAST(", e("int", d), " AS VARCHAR)")),
                (("struct",), lambda: node(k, e("struct", d), "['b']")),
            ]
        elif kind == "date":
            days = self.rng.choice([1, 3])
            out += [
                (("date",), lambda: node(k, "(", e("date", d), f" + INTERVAL '{days} days')")),
                (("ts",), lambda: node(k, "CAST(", e("ts", d), " AS DATE)")),
            ]
        elif kind == "ts":
            unit = self.rng.choice(["hour", "day"])
            out += [
                (("ts",), lambda: node(k, f"date_trunc('{unit}', ", e("ts", d), ")")),
                (("ts",), lambda: node(k, "(", e("ts", d), " + INTERVAL '90 minutes')")),
                (("date",), lambda: node(k, "CAST(", e("date", d), " AS TIMESTAMP)")),
            ]
        elif kind == "tstz":
            out.append((("tstz",), lambda: node(k, "date_trunc('day', ", e("tstz", d), ")")))
        elif kind == "list":
            out.append((("int",), lambda: node(k, "make_array(", e("int", d), ", ", e("int", d), ")")))
        if ctx.subqueries > 0 and kind in (*ORDERABLE, "bool") and self.chance(0.5):
            out.append(((), lambda: self.scalar_subquery(k, ctx)))
        if ctx.windows and ctx.groups is None and kind in ORDERABLE:
            out += [((), lambda: self.window(k, ctx))] * 3
        if ctx.groups is not None:
            out += [((), lambda: self.aggregate(k, ctx) or self.literal(k))] * 2
        return out

    def case(self, kind: str, ctx: Ctx) -> Node:
        """CASE WHEN .. THEN .. [ELSE ..] END (its conditions may hold subqueries: position case)."""
        cond = replace(ctx, position="case")
        whens = [node("text", " WHEN ", self.expr("bool", cond), " THEN ", self.expr(kind, ctx))]
        if self.chance(0.3):
            whens.append(node("text", " WHEN ", self.expr("bool", cond), " THEN ", self.expr(kind, ctx)))
        tail = node("text", " ELSE ", self.expr(kind, ctx)) if self.chance(0.7) else node("text", "")
        return node(kind, "CASE", Seq(list(whens), sep="", min_items=1), tail, " END", tags={"case"})

    def predicates(self, ctx: Ctx) -> list[tuple[tuple[str, ...], Callable0]]:
        """Builders of boolean expressions."""
        e, d = self.expr, ctx.deeper()
        k = self.pick(ctx, COMPARABLE)
        k2 = self.pick(ctx, COMPARABLE)
        op = self.rng.choice(["=", "<>", "<", "<=", ">", ">="])
        test = self.rng.choice([" IS NULL)", " IS NOT NULL)"])
        andor = self.rng.choice([" AND ", " OR "])
        like = self.rng.choice(["a%", "%b%", "_", ""])
        out: list[tuple[tuple[str, ...], Callable0]] = [
            ((k,), lambda: node("bool", "(", e(k, d), f" {op} ", e(k, d), ")")),
            ((k,), lambda: node("bool", "(", e(k, d), f" {op} ", e(k, d), ")")),
            ((k2,), lambda: node("bool", "(", e(k2, d), test)),
            ((), lambda: node("bool", "(", e("bool", d), andor, e("bool", d), ")")),
            ((), lambda: node("bool", "(NOT ", e("bool", d), ")")),
            ((k,), lambda: node("bool", "(", e(k, d), " IS DISTINCT FROM ", e(k, d), ")")),
            (("str",), lambda: node("bool", "(", e("str", d), f" LIKE '{like}')")),
            ((), lambda: self.in_list(d)),
            ((), lambda: self.between(d)),
        ]
        if ctx.subqueries > 0 and self.chance(0.6):
            out += [((), lambda: self.in_subquery(ctx)), ((), lambda: self.exists(ctx))]
        return out

    def in_list(self, ctx: Ctx) -> Node:
        """x [NOT] IN (literals)."""
        k = self.pick(ctx, ("int", "str", "date", "dec"))
        items = Seq([self.literal(k) for _ in range(self.rng.randint(1, 4))])
        return node("bool", "(", self.expr(k, ctx), self.rng.choice([" IN (", " NOT IN ("]), items, "))")

    def between(self, ctx: Ctx) -> Node:
        """x [NOT] BETWEEN a AND b."""
        k = self.pick(ctx, ("int", "float", "dec", "date", "str"))
        neg = self.rng.choice([" BETWEEN ", " NOT BETWEEN "])
        return node("bool", "(", self.expr(k, ctx), neg, self.expr(k, ctx), " AND ", self.expr(k, ctx), ")")

    # ------------------------------------------------------------------------ aggregates
    def aggregate(self, kind: str, ctx: Ctx) -> Node | None:
        """An aggregate call of result ``kind`` over the rows of ``ctx`` (None: no such aggregate)."""
        row = Ctx(ctx.scope, ctx.outer, min(ctx.depth, 1), "agg", subqueries=ctx.subqueries)
        e = self.expr
        choices: list[tuple[str, str]] = []  # (function, argument kind)
        if kind == "int":
            choices = [("count", "*"), ("count", self.pick(row, COMPARABLE)), ("sum", "int"), ("min", "int")]
            choices += [("max", "int"), ("count_distinct", self.pick(row, COMPARABLE))]
        elif kind == "float":
            choices = [("avg", "int"), ("avg", "float"), ("sum", "float"), ("max", "float"), ("min", "float")]
        elif kind == "dec":
            choices = [("sum", "dec"), ("avg", "dec"), ("min", "dec"), ("max", "dec")]
        elif kind == "bool":
            choices = [("bool_and", "bool"), ("bool_or", "bool")]
        elif kind in ("str", "date", "ts", "tstz"):
            choices = [("min", kind), ("max", kind)]
        elif kind == "list":
            choices = [("array_agg", "int")]
        if not choices:
            return None
        fn, arg_kind = self.rng.choice(choices)
        if fn == "count" and arg_kind == "*":
            call = node(kind, "count(*)")
        elif fn == "count_distinct":
            call = node(kind, "count(DISTINCT ", e(arg_kind, row), ")", tags={"distinct-agg"})
        elif fn == "array_agg":
            arg = self.column("int", row)
            if arg is None:
                return None
            call = node(kind, "array_agg(", arg, " ORDER BY ", _copy(arg), ")", sealed=True)
        elif fn in ("sum", "avg") and self.chance(0.2):
            call = node(kind, f"{fn}(DISTINCT ", e(arg_kind, row), ")", tags={"distinct-agg"})
        else:
            call = node(kind, f"{fn}(", e(arg_kind, row), ")")
        dynamic = fn in ("min", "max") and "aggregate-dynamic-filter" in self.avoid
        if self.chance(0.25) and not dynamic:
            pred = self.expr("bool", replace(row, depth=1))
            call = node(kind, call, " FILTER (WHERE ", pred, ")", tags={"agg-filter"})
        return call

    # ------------------------------------------------------------------------ windows
    def window(self, kind: str, ctx: Ctx) -> Node:
        """A window function of result ``kind``; deterministic (see the module docstring)."""
        if "window-partition-order" in self.avoid and self.windows_here:
            return self.leaf(kind, replace(ctx, windows=False))  # two windows share sorts: see _over
        self.windows_here += 1
        row = Ctx(
            ctx.scope, ctx.outer, 1, "window", subqueries=ctx.subqueries, fixed_columns=ctx.fixed_columns
        )
        ids = ctx.window_ids if ctx.window_ids is not None else [node(c.kind, c.sql) for c in ctx.scope.ids]
        ranking = {"int": ["rank()", "dense_rank()"], "float": ["percent_rank()", "cume_dist()"]}.get(
            kind, []
        )
        ordered = {"int": ["row_number()", f"ntile({self.rng.choice([2, 3, 5])})"]}.get(kind, [])
        value = ["lag", "lead", "first_value", "last_value", "nth_value"]
        aggs = {"int": ["sum", "count", "min", "max"], "float": ["avg", "sum", "min", "max"]}.get(
            kind, ["min", "max"]
        )
        if kind == "dec":
            aggs = ["sum", "avg", "min", "max"]
        family = self.rng.choice(["ranking", "ordered", "value", "value", "agg", "agg"])
        if family == "ranking" and ranking:
            return self._over(kind, node(kind, self.rng.choice(ranking)), row, ids, total=False, frame=False)
        if family == "ordered" and ordered and ids:
            return self._over(kind, node(kind, self.rng.choice(ordered)), row, ids, total=True, frame=False)
        if family == "value" and ids:
            fn = self.rng.choice(value)
            arg = self.expr(kind, row)
            if fn in ("lag", "lead"):
                extra = self.rng.choice(["", ", 2", f", 1, {LITERALS[kind]}"]) if kind in LITERALS else ""
                call = node(kind, f"{fn}(", arg, f"{extra})")
                frame = False
            elif fn == "nth_value":
                call = node(kind, "nth_value(", arg, f", {self.rng.choice([1, 2, 3])})")
                frame = True
            else:
                call = node(kind, f"{fn}(", arg, ")")
                frame = True
            nulls = self.rng.choice(["", " RESPECT NULLS", " IGNORE NULLS"])
            tags: set[str] = set()
            if nulls == " IGNORE NULLS":
                if "ignore-nulls" in self.avoid:
                    nulls = ""
                else:
                    tags.add("ignore-nulls")
            call = node(kind, call, nulls, tags=tags)
            return self._over(kind, call, row, ids, total=True, frame=frame)
        fn = self.rng.choice(aggs)
        arg_kind = (
            "int" if fn == "count" or (fn in ("sum", "avg") and kind != "dec" and self.chance(0.5)) else kind
        )
        if kind == "float" and fn == "sum":
            arg_kind = "float"
        arg = self.expr(arg_kind, row) if not (fn == "count" and self.chance(0.3)) else node("text", "*")
        return self._over(kind, node(kind, f"{fn}(", arg, ")"), row, ids, total=False, frame=True)

    def _over(self, kind: str, call: Node, row: Ctx, ids: list[Node], *, total: bool, frame: bool) -> Node:
        """``call OVER (PARTITION BY .. ORDER BY .. frame)``; ``total``: the ORDER BY must order every row.

        A ROWS frame needs a total order too; a RANGE frame with an offset has one numeric ORDER BY key
        (and no tie-breakers: its frames hold whole peer groups, so only order-free functions use it).
        """
        parts: list[Node] = []
        # window-partition-order: keys that are constant or equal to other keys (a WHERE or ON equates
        # them, a literal, an ORDER BY key repeating a PARTITION BY key, another window's keys) fail
        # on the mesh; avoiding it, a SELECT has one window, over keys nothing equates
        careful = "window-partition-order" in self.avoid
        exclude = row.fixed_columns if careful else frozenset()
        if self.chance(0.6):
            keys: list[Node] = []
            for _ in range(self.rng.randint(1, 2)):
                key = (
                    self.order_key(row, COMPARABLE, exclude)
                    if careful
                    else self.leaf(self.pick(row, COMPARABLE), row)
                )
                if key is not None:
                    keys.append(key)
                    exclude = exclude | ({render(key)} if careful else set())
            if keys:
                parts.append(node("text", "PARTITION BY ", Seq(list(keys))))
        unit, bounds = "", ""
        if frame and self.chance(0.6):
            unit = self.rng.choice(["ROWS", "RANGE", "GROUPS"])
            start = self.rng.choice(["UNBOUNDED PRECEDING", "1 PRECEDING", "2 PRECEDING", "CURRENT ROW"])
            end = self.rng.choice(["CURRENT ROW", "1 FOLLOWING", "UNBOUNDED FOLLOWING"])
            bounds = f"{start} AND {end}"
        offset = any(b[0].isdigit() for b in bounds.split(" AND ")) if bounds else False
        if unit == "RANGE" and offset and total:
            unit = "ROWS"
        total = total or unit == "ROWS"
        order: list[Node] = []
        numeric = (
            self.order_key(row, ("int", "float", "dec"), exclude) if unit == "RANGE" and offset else None
        )
        if numeric is not None:
            order.append(node("text", numeric, _direction(self.rng)))
        elif total or unit or self.chance(0.7):
            if unit == "RANGE" and offset:
                unit, total = "ROWS", True
            for _ in range(self.rng.randint(1, 2)):
                key = self.order_key(row, ORDERABLE, exclude)
                if key is not None:
                    order.append(node("text", key, _direction(self.rng)))
            if total:
                if not ids:
                    return self.literal(kind)
                order += [node("text", _copy(i), " ASC NULLS FIRST", fixed=True) for i in ids]
        if order:  # a total order's ORDER BY stays (without it the function is not deterministic)
            parts.append(node("text", "ORDER BY ", Seq(list(order)), keep=total))
        spec = Seq(list(parts), sep=" ", min_items=0)
        frame_sql = f" {unit} BETWEEN {bounds}" if unit else ""
        return node(kind, call, " OVER (", spec, frame_sql, ")", tags={"window"})

    # ------------------------------------------------------------------------ subqueries
    def scalar_subquery(self, kind: str, ctx: Ctx) -> Node:
        """``(SELECT agg(..) FROM .. [WHERE ..])``: one row, correlated or not."""
        raise NotImplementedError

    def in_subquery(self, ctx: Ctx) -> Node:
        """``x [NOT] IN (SELECT col FROM ..)``."""
        raise NotImplementedError

    def exists(self, ctx: Ctx) -> Node:
        """``[NOT] EXISTS (SELECT .. FROM .. WHERE ..)``."""
        raise NotImplementedError


def _direction(rng: random.Random) -> str:
    d = rng.choice(DIRECTIONS)
    return f" {d}" if d else ""


def _copy(n: Node) -> Node:
    """A deep copy of an expression tree (a grouping key repeated in SELECT is edited apart from it)."""
    return copy.deepcopy(n)
