"""Families of differences: what kind of bug a difference between the mesh and DataFusion looks like.

A mesh error is named by its message (digits, names and quoted text taken out) unless it matches a
known family; wrong rows are named by the features of the (minimised) query that still shows them.
"""

from __future__ import annotations

import re

__all__ = ["KNOWN", "RACY", "UNREPLAYABLE", "classify", "error_key", "signature"]

#: Families seen and reported before: name -> (how to recognise it, what it is).
KNOWN: dict[str, str] = {
    # found and fixed in the mesh (their cases replay against DataFusion's default answers)
    "ignore-nulls": "window functions with IGNORE NULLS gave the RESPECT NULLS values on the mesh "
    "(DataFusion 55's plan codec drops the flag); fixed: such plans run in-process (codec.CODEC_GAPS)",
    "empty-grouping-set": "GROUP BY GROUPING SETS (()) gave no row on the mesh (one in DataFusion); "
    "fixed: the codec round trip check finds the lost empty set and the plan runs in-process",
    "scalar-subquery-expr": "an uncorrelated scalar subquery inside an expression failed to plan on the mesh "
    "(Physical plan does not support logical expression ScalarSubquery); fixed: planned with its exec",
    "window-partition-order": "a window whose PARTITION BY keys are constant or equal to ORDER BY keys "
    "failed on the mesh (Expects PARTITION BY expression to be ordered); fixed: re-planned uncut",
    "window-ordered-partition-assert": "several windows sharing sorts failed on the mesh with an internal "
    "assertion; fixed: after MAX_REPLANS re-plans the query runs in-process",
    "union-limited-distinct": "a DISTINCT / UNION with LIMIT over a union split across tasks failed "
    "(Ordering direction required for DISTINCT with limit); fixed: the exchange above is kept",
    "window-reversed-shift": "lag / lead / nth_value over a window DataFusion reversed to share another "
    "window's sort gave the unreversed values on the mesh (the codec writes the function's name only); "
    "fixed: codec.CODEC_GAPS finds the reversed frame and the plan runs in-process",
    "empty-stage-schema-order": "a stage that wrote no rows got its schema from an EXPLAIN that listed "
    "the casts a projection adds for join keys in another order, and its consumer failed to decode; "
    "fixed: stage_schemas.schemas_at rebuilds the schema in the order of the plan that ran",
    # bugs of DataFusion itself (the case replays against DataFusion with the setting that avoids it)
    "grouping-set-order": "ORDER BY over a ROLLUP / CUBE / GROUPING SETS result: DataFusion drops or keeps "
    "the sort depending on its settings, so one of the two answers comes out unsorted",
    "aggregate-dynamic-filter": "a DataFusion 55 bug: the dynamic filter that min/max aggregates push into "
    "the scan prunes rows another aggregate's FILTER (WHERE ..) needs; whether it does depends on timing "
    "(DataFusion agrees with the mesh with enable_aggregate_dynamic_filter_pushdown=false)",
    "join-dynamic-filter": "a DataFusion 55 bug: a hash join's dynamic filter drops probe rows of -0.0 "
    "that equal a build key 0.0 (DataFusion agrees with the mesh, and DuckDB, without it)",
    "having-scalar-subquery": "HAVING with an uncorrelated scalar subquery: single-process DataFusion pushes "
    "it below the aggregate (a global aggregate then returns a row it must not); the mesh, which plans "
    "such subqueries as joins, answers right",
    "scalar-subquery-filter": "a filter reading an uncorrelated scalar subquery: DataFusion's physical "
    "form evaluates it where it must not (below a grouping set, on an outer join's preserved side) and "
    "returns rows SQL (and DuckDB) does not; the join form the mesh plans answers right",
    "nested-topk-order": "ORDER BY .. LIMIT on a list or struct column: DataFusion's top-k threshold "
    "filter orders a NULL inside a list unlike its sort does and drops rows depending on batch order "
    "(no setting avoids it: no saved case; the generator avoids it)",
}
#: A difference where single-process DataFusion, asked again, answers otherwise than it first did.
RACY = "datafusion-racy"
KNOWN[RACY] = (
    "DataFusion's own answer changes from run to run (a race of its own, e.g. its TopK over a FULL JOIN "
    "or a window over a LEFT JOIN's literal column): not compared with the mesh"
)
#: DataFusion bugs no setting avoids: no case can replay them, the fixed-seed run does not generate them.
UNREPLAYABLE = frozenset({"nested-topk-order"})
_ERROR_FAMILIES = {
    "does not support logical expression ScalarSubquery": "scalar-subquery-expr",
    "Expects PARTITION BY expression to be ordered": "window-partition-order",
    "ordered_partition_by_indices": "window-ordered-partition-assert",
    "Ordering direction required for DISTINCT with limit": "union-limited-distinct",
    "EXPLAIN planned the query unlike the plan that ran": "empty-stage-schema-order",
    "does not have all columns on": "empty-stage-schema-order",
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
    agrees = agrees or []
    for family in ("ignore-nulls", "empty-grouping-set"):
        if family in tags:
            return family
    if {"grouping-sets", "rollup", "cube"} & tags and {"order-total", "order-expr"} & tags:
        return "grouping-set-order"  # before the settings: any of several may flip its row order
    for setting, family in (
        ("enable_aggregate_dynamic_filter_pushdown", "aggregate-dynamic-filter"),
        ("enable_join_dynamic_filter_pushdown", "join-dynamic-filter"),
    ):
        if f"{setting}=false" in agrees:
            return family
    if {"order-nested", "limit"} <= tags:
        return "nested-topk-order"
    if "scalar@having" in tags and "uncorrelated" in tags:
        return "having-scalar-subquery"
    if "enable_physical_uncorrelated_scalar_subquery=false" in agrees and "scalar-subquery" in tags:
        return "scalar-subquery-filter"
    if any(t.startswith("join-") for t in tags):
        tags = tags | {"join"}
    features = [f for f in _FEATURES if f in tags][:3]
    return "wrong-rows" + (f" [{', '.join(features)}]" if features else "")
