"""Reading DataFusion's display of physical plan nodes: bracketed lists and their items."""

from __future__ import annotations

_OPEN = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}


def bracketed(line: str, prefix: str) -> str | None:
    """What follows ``prefix`` (which ends with an opening bracket) up to its closing one, or None."""
    start = line.find(prefix)
    if start < 0:
        return None
    opening = start + len(prefix) - 1
    depth = 0
    for end in range(opening, len(line)):
        depth += _OPEN.get(line[end], 0)
        if depth == 0:
            return line[opening + 1 : end]
    return None


def split_list(body: str) -> list[str] | None:
    """The ``, ``-separated items of a display list, split outside brackets (None: unbalanced)."""
    items: list[str] = []
    depth, start = 0, 0
    for k, ch in enumerate(body):
        depth += _OPEN.get(ch, 0)
        if depth < 0:
            return None
        if depth == 0 and body.startswith(", ", k):
            items.append(body[start:k])
            start = k + 2
    items.append(body[start:])
    return items if depth == 0 else None
