"""Random valid queries over a world's tables: joins, filters, aggregates, windows, set operations,
subqueries in every position, ORDER BY / LIMIT.

``QueryGen(world, seed).query()`` returns a ``Query``: the query tree and the facts the comparison
needs. Table aliases are unique in a query (``r1``, ``r2``, ..), select items are named ``x0``, ``x1``..
A LIMIT comes with an ORDER BY over every output column (rows tied on all of them are equal, so the
answer is determined), except now and then a LIMIT without ORDER BY, whose answers are compared by
row count only (tag ``limit-count``).
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, replace

from tests.fuzz.exprs import COMPARABLE, ORDERABLE, Col, Ctx, ExprGen, Scope
from tests.fuzz.sqltree import Node, Ordinals, Seq, clause, node, render, tags_of
from tests.fuzz.tables import World

__all__ = ["AVOIDABLE", "Query", "QueryGen"]

#: Families of known differences the generator can steer clear of (``--avoid``), and how.
AVOIDABLE: dict[str, str] = {
    "ignore-nulls": "no IGNORE NULLS in window functions",
    "empty-grouping-set": "no GROUPING SETS made only of the empty set ()",
    "scalar-subquery-expr": "no uncorrelated scalar subquery inside an aggregate's or window's argument, "
    "a GROUP BY key or an ORDER BY expression",
    "window-partition-order": "one window function per SELECT, none in a SELECT over a derived table "
    "a WHERE filters; its keys are table columns (no literals, no derived-table columns) that no WHERE "
    "or ON of that SELECT names, ORDER BY keys apart from PARTITION BY keys",
    "window-ordered-partition-assert": "as window-partition-order (the same rule avoids both)",
    "grouping-set-order": "no ORDER BY on a query with ROLLUP, CUBE or GROUPING SETS",
    "having-scalar-subquery": "no uncorrelated scalar subquery in HAVING",
    "aggregate-dynamic-filter": "no FILTER (WHERE ..) on min / max aggregates",
    "nested-topk-order": "no LIMIT after an ORDER BY that sorts on a list or struct column",
    "join-dynamic-filter": "no equi-join key of a floating-point type",
    "scalar-subquery-filter": "no uncorrelated scalar subquery in a WHERE or an ON",
}
#: Families one generator rule avoids together.
_SAME_RULE = {"window-partition-order", "window-ordered-partition-assert"}
#: A column reference in generated SQL (tables are aliased rN, derived tables dN).
COLUMN = re.compile(r"\b[rd]\d+\.\w+")
#: Upper bound of the rows a FROM clause may produce (joins of skewed keys multiply quickly).
MAX_ROWS = 20_000
ITEM_KINDS = (*ORDERABLE, "int", "int", "bool", "list", "struct")


@dataclass
class Query:
    """A generated query: its tree, and the TLP base query when it is a ternary-logic partition."""

    tree: Node
    base: Node | None = None  # TLP: the query whose rows the three partitions must add up to

    @property
    def sql(self) -> str:
        """The SQL text."""
        return render(self.tree)

    @property
    def tags(self) -> set[str]:
        """The features the query uses."""
        return tags_of(self.tree)


@dataclass
class Select:
    """A generated SELECT and what an enclosing query needs to know about its output."""

    tree: Node
    items: Seq
    kinds: list[str]
    names: list[str]
    ids: list[int]  # output positions that together identify a row ([] = unknown)
    windows: bool = False


class QueryGen(ExprGen):
    """A seeded generator of queries over ``world``."""

    def __init__(self, world: World, seed: int, avoid: frozenset[str] = frozenset()) -> None:
        if avoid & _SAME_RULE:
            avoid = avoid | _SAME_RULE
        super().__init__(random.Random(seed), avoid)
        self.world = world
        self.aliases = 0
        self.items = 0

    # ------------------------------------------------------------------------ top level
    def query(self) -> Query:
        """One random query."""
        r = self.rng.random()
        if r < 0.12:
            return Query(self.set_operation())
        if r < 0.2:
            tlp = self.tlp()
            if tlp is not None:
                return tlp
        sel = self.select(depth=2, outer=[], top=True)
        return Query(sel.tree)

    def set_operation(self) -> Node:
        """``a UNION [ALL] | INTERSECT [ALL] | EXCEPT [ALL] b`` [ORDER BY every column LIMIT n]."""
        left = self.select(depth=1, outer=[])
        right = self.select(depth=1, outer=[], want=left.kinds)
        op = self.rng.choice(["UNION", "UNION ALL", "INTERSECT", "INTERSECT ALL", "EXCEPT", "EXCEPT ALL"])
        parts: list[str | Node | Seq | Ordinals] = [left.tree, f" {op} ", right.tree]
        if self.chance(0.4):
            parts.append(self.order_limit(left.items))
        return Node("rel", parts, frozenset({"set-op", op.split()[0].lower()}))

    def tlp(self) -> Query | None:
        """Ternary logic partitioning (SQLancer): rows = rows WHERE p + WHERE NOT p + WHERE p IS NULL."""
        from_node, scope = self.from_clause(1, [])
        ctx = Ctx(scope, depth=2, position="where")
        items = Seq([node("item", self.expr(k, ctx), self.item_alias()) for k in self.item_kinds(ctx)])
        where = self.expr("bool", ctx) if self.chance(0.5) else None
        pred = self.expr("bool", ctx)

        def part(cond: Node | str) -> Node:
            full: list[str | Node | Seq | Ordinals] = [cond]
            if where is not None:
                full = ["(", copy.deepcopy(where), ") AND (", cond, ")"]
            return node(
                "rel", "SELECT ", copy.deepcopy(items), " FROM ", copy.deepcopy(from_node), " WHERE ", *full
            )

        base_parts: list[str | Node | Seq | Ordinals] = ["SELECT ", items, " FROM ", from_node]
        if where is not None:
            base_parts += [" WHERE ", where]
        base = Node("rel", base_parts)
        p = copy.deepcopy(pred)
        tree = node(
            "rel",
            part(node("bool", "(", pred, ")")),
            " UNION ALL ",
            part(node("bool", "(NOT (", copy.deepcopy(p), "))")),
            " UNION ALL ",
            part(node("bool", "((", p, ") IS NULL)")),
            tags={"tlp", "set-op"},
        )
        return Query(tree, base)

    def item_kinds(self, ctx: Ctx) -> list[str]:
        """Kinds for a select list."""
        return [self.pick(ctx, ITEM_KINDS) for _ in range(self.rng.randint(1, 4))]

    def item_alias(self) -> str:
        """`` AS xN``: select items are named apart in the whole query (DataFusion finds an ORDER BY
        name ambiguous when a derived table's column and an item share it)."""
        self.items += 1
        return f" AS x{self.items}"

    # ------------------------------------------------------------------------ SELECT
    def select(
        self,
        depth: int,
        outer: list[Scope],
        *,
        want: list[str] | None = None,
        top: bool = False,
        derived: bool = False,
    ) -> Select:
        """A SELECT; ``want``: the kinds of its items (a set operation's second branch)."""
        saved, self.windows_here = self.windows_here, 0
        try:
            return self._select(depth, outer, want, top, derived)
        finally:
            self.windows_here = saved

    def _select(
        self, depth: int, outer: list[Scope], want: list[str] | None, top: bool, derived: bool
    ) -> Select:
        from_node, scope = self.from_clause(depth, outer)
        windowed_from = "derived-window" in tags_of(from_node)
        sub = 1 if depth > 0 else 0
        mode = self.rng.choices(["plain", "agg", "window"], [0.4, 0.35, 0.25])[0]
        kinds = want or self.item_kinds(Ctx(scope))
        where = None
        if self.chance(0.6) and not (windowed_from and "window-partition-order" in self.avoid):
            where = clause(" WHERE ", self.expr("bool", Ctx(scope, outer, 2, "where", subqueries=sub)))
        parts: list[str | Node | Seq | Ordinals] = ["SELECT "]
        if self.chance(0.08 if top else 0.04):
            parts.append(clause("DISTINCT ", tags={"distinct"}))
        having: Node | None = None
        group: Node | None = None
        ids: list[int] = []
        if mode == "agg":
            keys = self.group_keys(scope, outer, sub)
            group, plain_group = self.group_by(keys)
            gctx = Ctx(scope, outer, 2, "select", groups=[(k, kk) for k, kk in keys], subqueries=sub)
            items_list: list[Node] = []
            for k, _ in keys:
                if want is None and self.chance(0.8):
                    if plain_group:
                        ids.append(len(items_list))
                    items_list.append(node("item", copy.deepcopy(k), self.item_alias()))
            if len(ids) != len(keys):
                ids = []
            for kind in kinds if want is not None else kinds[: max(1, len(kinds) - len(items_list))]:
                items_list.append(node("item", self.expr(kind, gctx), self.item_alias()))
            if self.chance(0.3):
                having = clause(" HAVING ", self.expr("bool", replace(gctx, position="having", having=True)))
            items = Seq(list(items_list))
            ctx_order = replace(gctx, position="order")
        else:
            mentioned = render(from_node) + (render(where) if where is not None else "")
            # a derived table's columns can be constant or equal to each other in ways hard to see here
            fixed = frozenset(COLUMN.findall(mentioned)) | {
                c.sql for c in scope.cols if c.constant or c.sql.startswith("d")
            }
            ctx = Ctx(
                scope, outer, 2, "select", windows=mode == "window", subqueries=sub, fixed_columns=fixed
            )
            items_list = [
                node(
                    "item",
                    self.window(k, ctx)
                    if mode == "window" and k in ORDERABLE and self.chance(0.5)
                    else self.expr(k, ctx),
                    self.item_alias(),
                )
                for k in kinds
            ]
            if derived and want is None and scope.ids:
                for c in scope.ids:
                    ids.append(len(items_list))
                    items_list.append(node("item", node(c.kind, c.sql), self.item_alias()))
            items = Seq(list(items_list))
            ctx_order = replace(ctx, position="order", windows=False)
        parts += [items, " FROM ", from_node]
        if where is not None:
            parts.append(where)
        if group is not None:
            parts.append(group)
        if having is not None:
            parts.append(having)
        grouping_sets = group is not None and bool({"grouping-sets", "rollup", "cube"} & group.tags)
        if grouping_sets and "grouping-set-order" in self.avoid:
            pass
        elif self.chance(0.45 if top else 0.2 if derived else 0):
            if self.chance(0.75) or derived or "distinct" in tags_of(Node("rel", parts)):
                parts.append(self.order_limit(items, derived=derived))
            else:  # ORDER BY expressions (maybe subqueries): the order is compared leniently
                order = [
                    self.expr(self.pick(ctx_order, ORDERABLE), replace(ctx_order, depth=1)) for _ in range(2)
                ]
                order = [k for k in order if not render(k).lstrip("-").isdigit()]  # ORDER BY 5: column 5
                if order:
                    parts.append(clause(" ORDER BY ", Seq(list(order)), tags={"order-expr"}))
        tree = Node("rel", parts)
        out_kinds = [self.item_kind(i) for i in items.items]
        names = [render(i).rsplit(" AS ", 1)[1] for i in items.items]
        has_windows = "window" in tags_of(items)
        return Select(tree, items, out_kinds, names, ids, has_windows)

    @staticmethod
    def item_kind(item: str | Node | Seq | Ordinals) -> str:
        """The kind of a select item."""
        if isinstance(item, Node) and item.parts and isinstance(item.parts[0], Node):
            return item.parts[0].kind
        return "int"

    def order_limit(self, items: Seq, derived: bool = False) -> Node:
        """ORDER BY every output column [LIMIT n [OFFSET m]] (or, rarely, LIMIT without ORDER BY)."""
        if not derived and self.chance(0.08):
            return clause(f" LIMIT {self.rng.choice([1, 3, 10])}", tags={"limit-count"})
        dirs = [self.rng.choice(["", "DESC", "ASC NULLS FIRST", "DESC NULLS LAST"]) for _ in range(3)]
        parts: list[str | Node | Seq | Ordinals] = [" ORDER BY ", Ordinals(items, dirs)]
        tags = {"order-total"}
        if any(self.item_kind(i) in ("list", "struct") for i in items.items):
            tags.add("order-nested")
            if "nested-topk-order" in self.avoid:
                return Node("clause", parts, frozenset(tags), optional=True)
        if derived or self.chance(0.6):
            parts.append(f" LIMIT {self.rng.choice([0, 1, 2, 5, 17])}")
            tags.add("limit")
            if self.chance(0.35):
                parts.append(f" OFFSET {self.rng.choice([1, 3])}")
        return Node("clause", parts, frozenset(tags), optional=True)

    def group_keys(self, scope: Scope, outer: list[Scope], sub: int) -> list[tuple[Node, str]]:
        """0-3 grouping keys: mostly columns, sometimes expressions."""
        keys: list[tuple[Node, str]] = []
        ctx = Ctx(scope, outer, 1, "group", subqueries=0)  # GROUP BY CUBE((SELECT ..)) does not parse
        seen: set[str] = set()
        for _ in range(self.rng.choice([0, 1, 1, 2, 2, 3])):
            kind = self.pick(ctx, [*COMPARABLE, "int", "int", "list", "struct"])
            cols = scope.of_kind(kind)
            if cols and self.chance(0.8):
                key = node(kind, self.rng.choice(cols).sql)
            elif kind in COMPARABLE:
                key = self.expr(kind, ctx)
            else:
                continue
            if render(key) not in seen and not render(key).lstrip("-").isdigit():
                seen.add(render(key))
                keys.append((key, kind))
        return keys

    def group_by(self, keys: list[tuple[Node, str]]) -> tuple[Node | None, bool]:
        """The GROUP BY clause: plain, GROUPING SETS, ROLLUP or CUBE; and whether it is plain."""
        if not keys:
            if self.chance(0.1) and "empty-grouping-set" not in self.avoid:
                return clause(
                    " GROUP BY GROUPING SETS (())", tags={"grouping-sets", "empty-grouping-set"}
                ), False
            return None, False
        exprs = [copy.deepcopy(k) for k, _ in keys]
        form = self.rng.choices(["plain", "sets", "rollup", "cube"], [0.55, 0.2, 0.15, 0.1])[0]
        if form == "plain":
            return Node("clause", [" GROUP BY ", Seq(list(exprs))], optional=False), True
        if form in ("rollup", "cube"):
            return Node(
                "clause", [f" GROUP BY {form.upper()}(", Seq(list(exprs)), ")"], frozenset({form})
            ), False
        sets: list[str | Node | Seq | Ordinals] = []
        covered: set[int] = set()
        for _ in range(self.rng.randint(1, 3)):
            chosen = [i for i in range(len(exprs)) if self.chance(0.6)]
            covered.update(chosen)
            sets.append(node("text", "(", Seq([copy.deepcopy(exprs[i]) for i in chosen], min_items=0), ")"))
        if len(covered) < len(exprs):  # every key in some set, or SELECT may not name it
            sets.append(node("text", "(", Seq([copy.deepcopy(e) for e in exprs]), ")"))
        tags = {"grouping-sets"}
        if any(not (isinstance(s, Node) and isinstance(s.parts[1], Seq) and s.parts[1].items) for s in sets):
            tags.add("empty-set")
            if all(
                not (isinstance(s, Node) and isinstance(s.parts[1], Seq) and s.parts[1].items) for s in sets
            ):
                if "empty-grouping-set" in self.avoid:
                    sets.append(node("text", "(", Seq([copy.deepcopy(exprs[0])]), ")"))
                else:
                    tags.add("empty-grouping-set")
        return Node("clause", [" GROUP BY GROUPING SETS (", Seq(sets), ")"], frozenset(tags)), False

    # ------------------------------------------------------------------------ FROM
    def alias(self, prefix: str = "r") -> str:
        """A fresh table alias."""
        self.aliases += 1
        return f"{prefix}{self.aliases}"

    def source(self, depth: int, outer: list[Scope]) -> tuple[Node, Scope]:
        """A table or a derived table (a subquery in FROM)."""
        if depth > 0 and self.chance(0.15):
            sel = self.select(depth - 1, outer=[], derived=True)
            a = self.alias("d")
            constant = [not COLUMN.search(render(i)) for i in sel.items.items]
            cols = [
                Col(f"{a}.{n}", k, constant=c) for n, k, c in zip(sel.names, sel.kinds, constant, strict=True)
            ]
            ids = [cols[i] for i in sel.ids] if sel.ids else []
            tags = {"derived"} | ({"derived-window"} if sel.windows else set())
            return node("from", "(", sel.tree, f") AS {a}", tags=tags), Scope(cols, ids, 2_000)
        t = self.rng.choice(self.world.tables)
        a = self.alias()
        cols = [Col(f"{a}.{c.name}", c.kind, c.unique, c.multiplicity) for c in t.columns]
        return node("from", f"{t.name} AS {a}"), Scope(cols, [c for c in cols if c.unique], t.rows)

    def from_clause(self, depth: int, outer: list[Scope], max_tables: int = 4) -> tuple[Node, Scope]:
        """``a JOIN b ON .. LEFT JOIN c ON ..``: 1-4 sources, every join type, equi and non-equi keys."""
        count = self.rng.choices([1, 2, 3, 4], [0.4, 0.35, 0.15, 0.1])[0] if depth > 0 else 1
        count = min(count, max_tables)
        first, scope = self.source(depth, outer)
        parts: list[str | Node | Seq | Ordinals] = [first]
        for _ in range(count - 1):
            right, rscope = self.source(depth, outer)
            joined = self.join(scope, rscope, outer)
            if joined is None:
                break
            kind, on, scope = joined
            parts.append(
                Node(
                    "clause",
                    [f" {kind} ", right, *on],
                    frozenset({"join-" + kind.split()[0].lower()}),
                    optional=True,
                )
            )
        return node("from", *parts), scope

    def join(
        self, left: Scope, right: Scope, outer: list[Scope]
    ) -> tuple[str, list[str | Node], Scope] | None:
        """The join type, its ON condition and the scope after it (None: it would make too many rows)."""
        kind = self.rng.choices(
            [
                "JOIN",
                "LEFT JOIN",
                "RIGHT JOIN",
                "FULL JOIN",
                "LEFT SEMI JOIN",
                "LEFT ANTI JOIN",
                "RIGHT SEMI JOIN",
                "RIGHT ANTI JOIN",
                "CROSS JOIN",
            ],
            [0.3, 0.2, 0.1, 0.1, 0.07, 0.07, 0.04, 0.04, 0.08],
        )[0]
        floats = "join-dynamic-filter" in self.avoid
        pairs = [
            (a, b)
            for a in left.cols
            for b in right.cols
            if a.kind == b.kind and a.kind in COMPARABLE and not (floats and a.kind == "float")
        ]
        equi = [p for p in pairs if max(1, left.rows) * max(1, p[1].multiplicity) <= MAX_ROWS]
        both = Scope(left.cols + right.cols, left.ids + right.ids, 0)
        on: list[str | Node] = []
        if kind == "CROSS JOIN" or not equi or self.chance(0.1):
            rows = max(1, left.rows) * max(1, right.rows)
            if rows > MAX_ROWS // 4:
                return None
            if kind != "CROSS JOIN":
                on = [" ON ", self.expr("bool", Ctx(both, outer, 1, "on", subqueries=0))]
        else:
            keys = self.rng.sample(equi, k=min(len(equi), self.rng.choice([1, 1, 2])))
            conds: list[Node] = [node("bool", a.sql, " = ", b.sql) for a, b in keys]
            if self.chance(0.25):
                conds.append(
                    self.expr("bool", Ctx(both, outer, 1, "on", subqueries=1 if self.chance(0.3) else 0))
                )
            on = [" ON ", node("bool", Seq(list(conds), sep=" AND "))]
            mult = min(b.multiplicity for _, b in keys)
            rows = max(1, left.rows) * max(1, mult) + right.rows
        if on and not COLUMN.search(render(on[1])):  # ON TRUE / FALSE: the outer side may be all NULL
            both.cols = [replace(c, constant=True) for c in both.cols]
        if kind.endswith(("SEMI JOIN", "ANTI JOIN")):
            return (kind, on, left) if kind.startswith("LEFT") else (kind, on, right)
        if kind != "JOIN":
            rows += left.rows + right.rows
        return kind, on, Scope(both.cols, both.ids, rows)

    # ------------------------------------------------------------------------ subqueries
    def _subquery_from(self, ctx: Ctx) -> tuple[Node, Scope, list[Scope]]:
        from_node, scope = self.from_clause(0 if self.chance(0.7) else 1, [], max_tables=2)
        return from_node, scope, [ctx.scope, *ctx.outer] if ctx.groups is None else self._group_scope(ctx)

    @staticmethod
    def _group_scope(ctx: Ctx) -> list[Scope]:
        """In an aggregate query a subquery may correlate with the grouping columns only."""
        cols = [Col(render(k), kk) for k, kk in ctx.groups or [] if "(" not in render(k)]
        return [Scope(cols), *ctx.outer]

    def _correlation(self, scope: Scope, outer: list[Scope]) -> Node | None:
        """``inner.c = outer.c`` for a random pair of equal kinds, if there is one."""
        if not outer:
            return None
        pairs = [
            (a, b) for a in scope.cols for b in outer[0].cols if a.kind == b.kind and a.kind in COMPARABLE
        ]
        if not pairs:
            return None
        a, b = self.rng.choice(pairs)
        return node("bool", a.sql, " = ", b.sql, tags={"correlated"})

    def _sub_where(self, scope: Scope, outer: list[Scope], ctx: Ctx, correlate: bool) -> Node | None:
        conds: list[Node] = []
        if correlate:
            c = self._correlation(scope, outer)
            if c is not None:
                conds.append(c)
        if self.chance(0.5):
            conds.append(self.expr("bool", Ctx(scope, outer, 1, "where", subqueries=ctx.subqueries - 1)))
        if not conds:
            return None
        return clause(" WHERE ", node("bool", Seq(list(conds), sep=" AND ")))

    def scalar_subquery(self, kind: str, ctx: Ctx) -> Node:
        """``(SELECT agg(..) FROM .. [WHERE ..])``: one row, correlated or not."""
        from_node, scope, outer = self._subquery_from(ctx)
        correlate = self.chance(0.5)
        inner = Ctx(scope, outer, 1, "select", groups=[], subqueries=ctx.subqueries - 1)
        value = self.aggregate(kind, inner) or self.literal(kind)
        where = self._sub_where(scope, outer, ctx, correlate)
        parts: list[str | Node | Seq | Ordinals] = ["(SELECT ", value, " FROM ", from_node]
        if where is not None:
            parts.append(where)
        parts.append(")")
        corr = where is not None and "correlated" in tags_of(where)
        if (
            not corr
            and "scalar-subquery-expr" in self.avoid
            and ctx.position in ("agg", "window", "group", "order")
        ):
            return self.literal(kind)
        if not corr and ctx.having and "having-scalar-subquery" in self.avoid:
            return self.literal(kind)
        if not corr and ctx.position in ("where", "on") and "scalar-subquery-filter" in self.avoid:
            return self.literal(kind)
        pos = ctx.position
        return Node(
            kind,
            parts,
            frozenset(
                {"subquery", "scalar-subquery", f"scalar@{pos}", "correlated" if corr else "uncorrelated"}
            ),
        )

    def in_subquery(self, ctx: Ctx) -> Node:
        """``x [NOT] IN (SELECT col FROM ..)``."""
        from_node, scope, outer = self._subquery_from(ctx)
        kinds = [c.kind for c in scope.cols if c.kind in COMPARABLE]
        if not kinds:
            return self.literal("bool")
        k = self.rng.choice(kinds)
        col = self.rng.choice(scope.of_kind(k))
        where = self._sub_where(scope, outer, ctx, self.chance(0.4))
        inner: list[str | Node | Seq | Ordinals] = ["SELECT ", col.sql, " FROM ", from_node]
        if where is not None:
            inner.append(where)
        neg = self.rng.choice([" IN (", " NOT IN ("])
        tags = {"subquery", f"in@{ctx.position}"}
        return Node(
            "bool",
            ["(", self.expr(k, ctx.deeper(subqueries=0)), neg, Node("rel", inner), "))"],
            frozenset(tags),
        )

    def exists(self, ctx: Ctx) -> Node:
        """``[NOT] EXISTS (SELECT .. FROM .. WHERE ..)``."""
        from_node, scope, outer = self._subquery_from(ctx)
        where = self._sub_where(scope, outer, ctx, self.chance(0.8))
        inner: list[str | Node | Seq | Ordinals] = ["SELECT 1 FROM ", from_node]
        if where is not None:
            inner.append(where)
        neg = self.rng.choice(["EXISTS (", "NOT EXISTS ("])
        return Node(
            "bool", ["(", neg, Node("rel", inner), "))"], frozenset({"subquery", f"exists@{ctx.position}"})
        )
