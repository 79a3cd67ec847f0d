"""The fuzzer's query tree: SQL text with its structure kept, so a query can be rendered and shrunk.

A ``Node`` is an expression, a clause or a whole query: a list of parts (literal text, child nodes,
comma-separated ``Seq`` lists, ``Ordinals``). It carries the kind of its value (``int``, ``bool``,
``rel`` for a query, ``clause`` for a removable clause, ``text`` for glue) and the features it uses
(``tags``, e.g. ``window``, ``ignore-nulls``), which name the families of the differences found.
The minimiser edits a copy of the tree and renders it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Node", "Ordinals", "Part", "Seq", "clause", "node", "render", "tags_of", "walk"]

#: The kinds of values an expression can have (see tables.TYPES).
VALUE_KINDS = ("int", "float", "dec", "bool", "str", "date", "ts", "tstz", "list", "lstr", "struct")


@dataclass(eq=False)
class Node:
    """An expression, clause or query: text and children, rendered by concatenation."""

    kind: str
    parts: list[Part]
    tags: frozenset[str] = frozenset()
    fixed: bool = False  # the minimiser keeps it and all inside it (tie-breakers of a window's ORDER BY)
    optional: bool = False  # the minimiser may drop it (a clause)
    keep: bool = False  # the minimiser may edit inside it but not drop it (a window's total ORDER BY)
    sealed: bool = False  # the minimiser may replace it but not edit inside (array_agg(x ORDER BY x))


@dataclass(eq=False)
class Seq:
    """A list of parts joined with ``sep``; the minimiser may drop items down to ``min_items``."""

    items: list[Part]
    sep: str = ", "
    min_items: int = 1


@dataclass(eq=False)
class Ordinals:
    """``1, 2, .., n`` for the n items of a select list: an ORDER BY over every output column.

    Rendered from the list's current length, so it stays a total order when items are dropped.
    """

    of: Seq
    directions: list[str] = field(default_factory=list)  # e.g. "DESC NULLS FIRST", cycled


Part = str | Node | Seq | Ordinals


def node(
    kind: str,
    *parts: Part,
    tags: frozenset[str] | set[str] = frozenset(),
    fixed: bool = False,
    keep: bool = False,
    sealed: bool = False,
) -> Node:
    """A node of ``kind`` from its parts."""
    return Node(kind, list(parts), frozenset(tags), fixed=fixed, keep=keep, sealed=sealed)


def clause(*parts: Part, tags: frozenset[str] | set[str] = frozenset()) -> Node:
    """A clause the minimiser may drop (WHERE, HAVING, ORDER BY .. LIMIT, a DISTINCT)."""
    return Node("clause", list(parts), frozenset(tags), optional=True)


def render(part: Part) -> str:
    """The SQL text of a part."""
    if isinstance(part, str):
        return part
    if isinstance(part, Node):
        return "".join(render(p) for p in part.parts)
    if isinstance(part, Seq):
        return part.sep.join(render(p) for p in part.items)
    n = len(part.of.items)
    dirs = part.directions or [""]
    return ", ".join(f"{i + 1}{(' ' + dirs[i % len(dirs)]) if dirs[i % len(dirs)] else ''}" for i in range(n))


def walk(part: Part) -> Iterator[Node | Seq]:
    """Every node and list under ``part`` (itself included), outermost first."""
    if isinstance(part, Node):
        yield part
        for p in part.parts:
            yield from walk(p)
    elif isinstance(part, Seq):
        yield part
        for p in part.items:
            yield from walk(p)


def tags_of(part: Part) -> set[str]:
    """Every feature tag used under ``part``."""
    out: set[str] = set()
    for n in walk(part):
        if isinstance(n, Node):
            out |= n.tags
    return out
