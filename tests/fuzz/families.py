"""Families of differences: what kind of bug a difference between the mesh and DataFusion looks like.

A mesh error is named by its message (digits, names and quoted text taken out) unless it matches a
known family; wrong rows are named by the features of the (minimised) query that still shows them.
"""

from __future__ import annotations

import re

__all__ = ["KNOWN", "classify", "error_key", "signature"]

#: Families seen and reported before: name -> (how to recognise it, what it is).
KNOWN: dict[str, str] = {
    "ignore-nulls": "window functions with IGNORE NULLS give the RESPECT NULLS values on the mesh "
    "(DataFusion 55's plan codec drops the flag)",
    "empty-grouping-set": "GROUP BY GROUPING SETS (()) gives no row on the mesh (one in DataFusion)",
    "scalar-subquery-expr": "an uncorrelated scalar subquery inside an expression fails to plan on the mesh "
    "(Physical plan does not support logical expression ScalarSubquery)",
    "window-partition-order": "a window whose PARTITION BY keys are constant or equal to ORDER BY keys "
    "(a filter, a join, another window) fails on the mesh (Expects PARTITION BY expression to be ordered)",
    "window-ordered-partition-assert": "several windows sharing sorts fail on the mesh with an internal "
    "assertion (window_expr[0].partition_by().len() == ordered_partition_by_indices.len())",
    "grouping-set-order": "ORDER BY over a ROLLUP / CUBE / GROUPING SETS result: DataFusion drops or keeps "
    "the sort depending on its settings, so one of the two answers comes out unsorted",
    "aggregate-dynamic-filter": "a DataFusion 55 bug: the dynamic filter that min/max aggregates push into "
    "the scan prunes rows another aggregate's FILTER (WHERE ..) needs; whether it does depends on timing "
    "(DataFusion agrees with the mesh with enable_aggregate_dynamic_filter_pushdown=false)",
    "having-scalar-subquery": "HAVING with an uncorrelated scalar subquery: single-process DataFusion pushes "
    "it below the aggregate (a global aggregate then returns a row it must not); the mesh, which plans "
    "such subqueries as joins, answers right",
}
_ERROR_FAMILIES = {
    "does not support logical expression ScalarSubquery": "scalar-subquery-expr",
    "Expects PARTITION BY expression to be ordered": "window-partition-order",
    "ordered_partition_by_indices": "window-ordered-partition-assert",
}
#: Features that describe a wrong answer, most telling first (tags of the query tree).
_FEATURES = [
    "ignore-nulls",
    "empty-grouping-set",
    "window",
    "grouping-sets",
    "rollup",
    "cube",
    "empty-set",
    "distinct-agg",
    "agg-filter",
    "scalar-subquery",
    "subquery",
    "set-op",
    "derived",
    "join",
    "distinct",
    "limit",
]
_NOISE = re.compile(r"'[^']*'|\"[^\"]*\"|\b[rdx]\d+\b|\b\d+\b|0x[0-9a-f]+|[0-9a-f]{16,}")


def error_key(message: str) -> str:
    """A mesh error's message without the parts that vary between queries (names, numbers, text)."""
    text = message.split("mesh failed: ", 1)[-1]
    for marker in ("DataFusion error: ", "execution failed: ", "invalid query: "):
        if marker in text:  # the engine's own words, without where the task ran
            text = text.rsplit(marker, 1)[-1]
            break
    text = _NOISE.sub("_", text)
    return re.sub(r"\s+", " ", text)[:90]


def signature(diff: str) -> str:
    """What must stay the same while a difference is minimised: the error's family, or wrong rows."""
    if diff.startswith("mesh failed: "):
        for needle, family in _ERROR_FAMILIES.items():
            if needle in diff:
                return family
        return "mesh-error: " + error_key(diff)
    return "wrong-rows"


def classify(diff: str, tags: set[str], agrees: list[str] | None = None, sql: str = "") -> str:
    """The family of a difference ``diff`` shown by a query ``sql`` with feature ``tags``.

    ``agrees``: the settings with which DataFusion gives the mesh's answer (engines.agrees_when).
    """
    sig = signature(diff)
    if sig != "wrong-rows":
        return sig
    if re.search(r"GROUPING SETS \(\(\)\)", sql):  # also what minimising GROUPING SETS ((k), ()) leaves
        tags = tags | {"empty-grouping-set"}
    if any("dynamic_filter" in a for a in agrees or []):
        return "aggregate-dynamic-filter"
    for family in ("ignore-nulls", "empty-grouping-set"):
        if family in tags:
            return family
    if "scalar@having" in tags and "uncorrelated" in tags:
        return "having-scalar-subquery"
    if {"grouping-sets", "rollup", "cube"} & tags and {"order-total", "order-expr"} & tags:
        return "grouping-set-order"
    if any(t.startswith("join-") for t in tags):
        tags = tags | {"join"}
    features = [f for f in _FEATURES if f in tags][:3]
    return "wrong-rows" + (f" [{', '.join(features)}]" if features else "")
