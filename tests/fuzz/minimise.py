"""Shrink a difference: fewer clauses and simpler expressions, then fewer tables, columns and rows.

Greedy delta debugging: an edit (drop a list item or an optional clause, replace an expression with one
of its own sub-expressions of the same kind, or with a literal) is kept when the difference persists
with the same signature (the same error family, or wrong rows while DataFusion answers). Then the
tables: unused ones and unused columns go, rows go in halving chunks, and every table becomes one file
if that still shows it. Everything is bounded by a time budget.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.fuzz.exprs import LITERALS
from tests.fuzz.sqltree import VALUE_KINDS, Node, Part, Seq, render, walk
from tests.fuzz.tables import Column, Table, World

__all__ = ["Edit", "Reducer", "edits", "referenced_tables"]

#: Reproduce(query, world or None for "as registered") -> the difference, or None when it is gone.
Probe = Callable[[Node, World | None], str | None]
#: Sub-expressions tried in place of an expression (the outermost ones of its kind).
HOISTS = 6


@dataclass(frozen=True)
class Edit:
    """One candidate edit: the index of a node or list in ``walk`` order, what to do, an argument."""

    at: int
    action: str  # "drop-item", "drop", "hoist", "literal"
    arg: int = 0


def _slots(root: Node) -> list[tuple[Node | Seq | None, int, Node | Seq, bool]]:
    """(container, index in it, object, editable) for every node and list, in ``walk`` order.

    Nothing inside a fixed or sealed node is editable, nor is a fixed node itself.
    """
    out: list[tuple[Node | Seq | None, int, Node | Seq, bool]] = []

    def visit(container: Node | Seq | None, slot: int, obj: Part, frozen: bool) -> None:
        if isinstance(obj, Node):
            out.append((container, slot, obj, not (frozen or obj.fixed)))
            for i, p in enumerate(obj.parts):
                visit(obj, i, p, frozen or obj.fixed or obj.sealed)
        elif isinstance(obj, Seq):
            out.append((container, slot, obj, not frozen))
            for i, p in enumerate(obj.items):
                visit(obj, i, p, frozen)

    visit(None, 0, root, False)
    return out


def edits(root: Node) -> Iterator[Edit]:
    """Every candidate edit of ``root``, outermost first."""
    for at, (_, _, obj, editable) in enumerate(_slots(root)):
        if not editable:
            continue
        if isinstance(obj, Seq):
            for i in reversed(range(len(obj.items))):
                item = obj.items[i]
                if len(obj.items) > obj.min_items and not (
                    isinstance(item, Node) and (item.fixed or item.keep)
                ):
                    yield Edit(at, "drop-item", i)
            continue
        if obj.optional:
            yield Edit(at, "drop")
        if obj.kind not in VALUE_KINDS and obj.kind != "rel":
            continue
        inner = [] if obj.sealed else [n for n in walk(obj) if isinstance(n, Node) and n is not obj]
        same = [j for j, n in enumerate(inner) if n.kind == obj.kind and not n.fixed]
        for j in same[:HOISTS]:
            yield Edit(at, "hoist", j)
        if obj.kind in LITERALS and render(obj) != LITERALS[obj.kind]:
            yield Edit(at, "literal")


def apply(root: Node, edit: Edit) -> Node:
    """A copy of ``root`` with ``edit`` made."""
    new = copy.deepcopy(root)
    container, slot, obj, _ = _slots(new)[edit.at]
    replacement: Part
    if edit.action == "drop-item":
        assert isinstance(obj, Seq)
        del obj.items[edit.arg]
        return new
    assert isinstance(obj, Node)
    if edit.action == "drop":
        replacement = ""
    elif edit.action == "hoist":
        inner = [n for n in walk(obj) if isinstance(n, Node) and n is not obj]
        replacement = inner[edit.arg]
    else:
        replacement = Node(obj.kind, [LITERALS[obj.kind]])
    if container is None:
        assert isinstance(replacement, Node)
        return replacement
    if isinstance(container, Seq):
        container.items[slot] = replacement
    else:
        container.parts[slot] = replacement
    return new


def referenced_tables(sql: str, world: World) -> list[str]:
    """The tables of ``world`` that ``sql`` names."""
    return [t.name for t in world.tables if re.search(rf"\b{t.name}\b", sql)]


class Reducer:
    """Minimises one difference within ``seconds``; ``probe`` re-runs a candidate on both engines."""

    def __init__(self, probe: Probe, signature: Callable[[str], str], wanted: str, seconds: float) -> None:
        self.probe = probe
        self.signature = signature
        self.wanted = wanted
        self.deadline = time.monotonic() + seconds
        self.tries = 0
        self.last_diff = ""

    def out_of_time(self) -> bool:
        """Whether the budget is spent."""
        return time.monotonic() > self.deadline

    def holds(self, tree: Node, world: World | None = None) -> bool:
        """Whether the query ``tree`` (over ``world``) still shows the difference."""
        self.tries += 1
        diff = self.probe(tree, world)
        if diff is not None and self.signature(diff) == self.wanted:
            self.last_diff = diff
            return True
        return False

    def query(self, tree: Node) -> Node:
        """The smallest query tree found that still shows the difference."""
        changed = True
        while changed and not self.out_of_time():
            changed = False
            start = 0
            while not self.out_of_time():
                found = None
                for e in edits(tree):
                    if e.at < start:
                        continue
                    candidate = apply(tree, e)
                    if self.holds(candidate):
                        found = (e, candidate)
                        break
                    if self.out_of_time():
                        break
                if found is None:
                    break
                start, tree, changed = found[0].at, found[1], True
        return tree

    def tables(self, tree: Node, world: World) -> World:
        """Fewer tables, columns, rows and files that still show the difference for ``tree``."""
        sql = render(tree)
        names = referenced_tables(sql, world)
        current = World(world.seed, [copy.deepcopy(world.table(n)) for n in names])
        if not self.holds(tree, current):
            return world  # cannot reproduce over these tables alone: keep them all
        used = [t.name for t in current.tables]
        slim = World(current.seed, [_without_unused_columns(t, sql) for t in current.tables])
        if slim.tables != current.tables and self.holds(tree, slim):
            current = slim
        for name in sorted(used, key=lambda n: -current.table(n).rows):
            current = self._rows(tree, current, name)
        for name in used:
            if current.table(name).files > 1 and not self.out_of_time():
                one = copy.deepcopy(current)
                one.table(name).files = 1
                if self.holds(tree, one):
                    current = one
        return current

    def _rows(self, tree: Node, world: World, name: str) -> World:
        rows = world.table(name).rows
        chunk = rows // 2
        while chunk >= 1 and not self.out_of_time():
            i = 0
            while i < world.table(name).rows and not self.out_of_time():
                candidate = copy.deepcopy(world)
                t = candidate.table(name)
                for c in t.columns:
                    del c.values[i : i + chunk]
                if self.holds(tree, candidate):
                    world = candidate
                else:
                    i += chunk
            chunk //= 2
        return world


def _without_unused_columns(table: Table, sql: str) -> Table:
    keep = [c for c in table.columns if re.search(rf"\.{c.name}\b", sql)] or table.columns[:1]
    return Table(table.name, [Column(c.name, c.type, c.values, c.unique) for c in keep], table.files)
