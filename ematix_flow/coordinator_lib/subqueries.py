"""Uncorrelated scalar subqueries that only DataFusion's physical ``ScalarSubqueryExec`` can plan.

Our planning context turns uncorrelated scalar subqueries into joins
(``enable_physical_uncorrelated_scalar_subquery=false``, see engine/settings.py): a
``ScalarSubqueryExpr`` reads its value from the ``ScalarSubqueryExec`` above it, and DataFusion cannot
decode the expression in a plan slice that lacks that node. Where the logical optimizer cannot make
a join (a subquery inside an aggregate's or a window's arguments, in ORDER BY or GROUP BY, in an outer
join's ON), physical planning fails, while DataFusion (whose default is the physical form) answers.

Such a query is planned again with DataFusion's default in a context of its own (the same settings,
tables and functions; the shared planning context is never changed, other threads plan in it), and
every exchange between a ``ScalarSubqueryExec`` and an expression that reads its value stays inside
one stage. Which exchanges those are is asked of DataFusion itself: the subtree a cut there would
ship to a peer is decoded here, and an exchange whose subtree cannot be decoded alone is not cut.
Every other exchange is cut as usual, so the stages that hold no such expression are distributed
(the subqueries' own inputs included; each task running a ``ScalarSubqueryExec`` reads them whole).

The join form has one more difference: it yields a row per subquery row, where the physical form
(and SQL) fails on a second row. A query with a subquery whose row count its plan does not prove
(:func:`unchecked_scalar_subquery`) keeps its join form, and :func:`check_rows` runs those subqueries
(planned physically, :func:`row_check`) on the submitter before the query starts, stopping at a
second row: the same error as DataFusion, while the join form keeps the mesh's answers right where
DataFusion's physical form is wrong (a HAVING subquery pushed below a grouping set's aggregate).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from datafusion import DataFrame, SessionContext, SQLOptions
from datafusion.plan import ExecutionPlan

from ematix_flow.engine import stores
from ematix_flow.engine.lake import registry as lake_registry
from ematix_flow.engine.run import stream_partitions
from ematix_flow.errors import QueryError, first_line
from ematix_flow.planner.nodes import GATHERS, NodeInfo, PlanNode, attach_infos, parse_tree
from ematix_flow.planner.stages import is_hash_repartition

log = logging.getLogger(__name__)

#: DataFusion's setting for planning uncorrelated scalar subqueries physically (its default: true).
PHYSICAL_SUBQUERIES = "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery"

#: Why an exchange stays inside its consumer stage (``explain`` shows it as the stage's reason).
KEPT_REASON = "the plan below reads a scalar subquery's value: it decodes only with its ScalarSubqueryExec"


#: ``ctx.sql`` has already run the statement's eager parts (DDL, SET): planning again must not repeat them.
_NO_SIDE_EFFECTS = SQLOptions().with_allow_ddl(False).with_allow_statements(False)


@dataclass
class SubqueryPlan:
    """A query planned with physical scalar subqueries: the context and frame it was planned in."""

    ctx: SessionContext
    df: DataFrame
    plan: ExecutionPlan


def subquery_context(ctx: SessionContext) -> SessionContext:
    """A new context like ``ctx`` (settings, catalogs, functions) that plans scalar subqueries physically.

    The catalogs are shared, not copied: tables registered in ``ctx`` later are seen here too.
    """
    other = SessionContext(ctx.copied_config().set(PHYSICAL_SUBQUERIES, "true"))
    stores.inherit(other, ctx)  # its object stores too (they live in the runtime, not the catalogs)
    lake_registry.inherit(other, ctx)  # and its lake tables' snapshots
    for name in ctx.catalog_names():
        other.register_catalog_provider(name, ctx.catalog(name))
    # every function, built-in ones too (a UDF may replace one): ~3 ms, only for such queries
    for name in ctx.udfs():
        other.register_udf(ctx.udf(name))
    for name in ctx.udafs():
        other.register_udaf(ctx.udaf(name))
    for name in ctx.udwfs():
        other.register_udwf(ctx.udwf(name))
    return other


def plan_with_subqueries(ctx: SessionContext, sql: str) -> SubqueryPlan | None:
    """Plan ``sql`` again with physical scalar subqueries.

    Used when planning in ``ctx`` failed, or when its join form would not check a subquery's row
    count (``unchecked_scalar_subquery``). None when that fails too (``ctx`` may plan them
    physically already): the first error stands.
    """
    other = subquery_context(ctx)
    try:
        df = other.sql_with_options(sql, _NO_SIDE_EFFECTS)
        return SubqueryPlan(other, df, df.execution_plan())
    except Exception:
        return None


#: A scalar subquery in DataFusion's display of a logical plan (IN and EXISTS show ``IN (<subquery>)``).
_SUBQUERY = "(<subquery>)"
_OCCURRENCE = re.compile(r"(\bIN |\bEXISTS )?\(<subquery>\)")
#: Nodes that never yield more rows than their input.
_PASS_ROWS = {"Projection", "SubqueryAlias", "Filter", "Sort", "Window", "Limit", "Distinct"}
_FETCH = re.compile(r"\bfetch=(\d+)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _input_of(lines: list[str], i: int) -> int | None:
    """The line of node ``i``'s first input (its ``Subquery:`` blocks skipped), None for a leaf."""
    depth = _indent(lines[i])
    j = i + 1
    while j < len(lines) and _indent(lines[j]) > depth:
        if _indent(lines[j]) == depth + 2 and lines[j].strip() != "Subquery:":
            return j
        j += 1
    return None


def _at_most_one_row(lines: list[str], i: int) -> bool:
    """Whether the plan at line ``i`` provably yields at most one row (global aggregate, LIMIT 1, ...)."""
    node = lines[i].strip()
    name = node.split(":", 1)[0]
    fetch = _FETCH.search(node) if name in ("Limit", "Sort") else None
    if node.startswith("Aggregate: groupBy=[[]]") or name == "EmptyRelation":
        return True
    if fetch is not None and int(fetch.group(1)) <= 1:
        return True
    child = _input_of(lines, i) if name in _PASS_ROWS else None
    return child is not None and _at_most_one_row(lines, child)


@dataclass
class RowCheck:
    """Uncorrelated scalar subqueries to run before the query: each must yield at most one row."""

    ctx: SessionContext
    plans: list[ExecutionPlan]


#: DataFusion's error (and ours) for a scalar subquery with a second row, and the fix.
MORE_THAN_ONE_ROW = (
    "Scalar subquery returned more than one row: a subquery used as a value must return at most one "
    "(add an aggregate, a filter or LIMIT 1)"
)
#: Physical nodes that never yield more rows than their input, and roots that yield one row.
_PASS_NODES = ("ProjectionExec", "FilterExec", "CoalescePartitionsExec", "CoalesceBatchesExec", "SortExec")
_ONE_ROW_ROOT = re.compile(
    r"AggregateExec: mode=(Final|Single|SinglePartitioned), gby=\[\]|PlaceholderRowExec"
)
_LIMIT_ONE = re.compile(r"(GlobalLimitExec|SortPreservingMergeExec|SortExec).*\bfetch=[01]\b")


def _one_row_plan(plan: ExecutionPlan) -> bool:
    """Whether a physical subquery plan provably yields at most one row (no need to run it)."""
    text = plan.display().strip()
    line = text.splitlines()[0] if text else ""
    if _ONE_ROW_ROOT.match(line) or _LIMIT_ONE.match(line):
        return True
    children = plan.children()
    return line.startswith(_PASS_NODES) and len(children) == 1 and _one_row_plan(children[0])


def row_check(sub: SubqueryPlan) -> RowCheck:
    """The subquery plans of ``sub``'s ``ScalarSubqueryExec`` nodes not provably one row.

    A subquery nested in another one is checked by running the outer one (its own exec checks it).
    """
    plans: list[ExecutionPlan] = []

    def walk(node: ExecutionPlan) -> None:
        children = node.children()
        if node.display().startswith("ScalarSubqueryExec"):
            plans.extend(p for p in children[1:] if not _one_row_plan(p))
            children = children[:1]
        for child in children:
            walk(child)

    walk(sub.plan)
    return RowCheck(sub.ctx, plans)


def check_rows(check: RowCheck | None) -> None:
    """Fail as DataFusion does if a subquery of ``check`` yields a second row (runs here, stops there)."""
    if check is None:
        return
    for plan in check.plans:
        rows = 0
        batches = stream_partitions(check.ctx, plan)
        try:
            for batch in batches:
                rows += batch.num_rows
                if rows > 1:
                    raise QueryError(MORE_THAN_ONE_ROW)
        finally:
            batches.close()


def unchecked_scalar_subquery(df: DataFrame) -> bool:
    """Whether an uncorrelated scalar subquery of ``df`` could return more than one row.

    As a join (our planning setting) such a subquery yields a row per subquery row, where DataFusion's
    physical form (and SQL) fails with "Scalar subquery returned more than one row". Read from the
    logical plan's display (a node's ``Subquery:`` blocks follow its expressions' order), and
    conservatively: a subquery not provably one row (a global aggregate, LIMIT 1) counts. Correlated
    subqueries plan the same way in both forms.
    """
    text = df.logical_plan().display_indent()
    if _SUBQUERY not in text:
        return False
    lines = text.splitlines()
    for owner, line in enumerate(lines):
        kinds = [m.group(1) is None for m in _OCCURRENCE.finditer(line)]  # True: a scalar subquery
        if not any(kinds):
            continue
        blocks = _subquery_blocks(lines, owner)
        if len(blocks) != len(kinds):
            kinds = [True] * len(blocks)  # cannot tell which is which: check every one
        for body, scalar in zip(blocks, kinds, strict=True):
            if scalar and not _correlated(lines, body) and not _at_most_one_row(lines, body):
                return True
    return False


def _subquery_blocks(lines: list[str], owner: int) -> list[int]:
    """The first plan line of each ``Subquery:`` block of node ``owner``, in order."""
    depth = _indent(lines[owner])
    out: list[int] = []
    for k in range(owner + 1, len(lines)):
        if _indent(lines[k]) <= depth:
            break
        if _indent(lines[k]) == depth + 2 and lines[k].strip() == "Subquery:":
            out.append(k + 1)
    return out


def _correlated(lines: list[str], i: int) -> bool:
    """Whether the subquery plan at line ``i`` reads the outer query (nested subqueries not counted)."""
    depth = _indent(lines[i])
    nested: int | None = None
    for line in lines[i:]:
        if _indent(line) < depth or (line is not lines[i] and _indent(line) == depth):
            break
        if nested is not None and _indent(line) > nested:
            continue
        nested = _indent(line) if line.strip() == "Subquery:" else None
        if "outer_ref(" in line:
            return True
    return False


#: ``ScalarSubqueryExecNode.input`` (its ``subqueries`` are field 2: they never read its values).
_EXEC_INPUT = 1


def _cut_body(node: PlanNode) -> PlanNode | None:
    """What a cut at ``node`` ships to the producer stage (as ``stages.build_graph`` cuts), else None."""
    if is_hash_repartition(node):
        return node
    if node.kind in GATHERS:
        return node.children[0]
    return None


def _below_subquery_exec(root: PlanNode) -> list[PlanNode]:
    """Nodes under the input side of some ``ScalarSubqueryExec`` (only there can a value be missing)."""
    out: list[PlanNode] = []

    def walk(node: PlanNode, inside: bool) -> None:
        if inside:
            out.append(node)
        for slot, child in zip(node.child_slots, node.children, strict=True):
            input_side = node.kind == "scalar_subquery" and node.fields[slot].number == _EXEC_INPUT
            walk(child, inside or input_side)

    walk(root, False)
    return out


def exchanges_to_keep(ctx: SessionContext, plan_bytes: bytes, infos: list[NodeInfo]) -> dict[int, str]:
    """Exchanges (pre-order index) whose producer side cannot be decoded without a ``ScalarSubqueryExec``.

    Empty for a plan without one. Decoding is all it costs: nothing runs.
    """
    root = attach_infos(parse_tree(plan_bytes), infos)
    if not any(n.kind == "scalar_subquery" for n in root.walk()):
        return {}
    keep: dict[int, str] = {}
    for node in _below_subquery_exec(root):
        body = _cut_body(node)
        index = node.meta.get("index")
        if body is None or not isinstance(index, int):
            continue
        try:
            ExecutionPlan.from_bytes(ctx, body.to_bytes())
        except Exception as exc:
            log.debug("exchange %d is not cut: %s", index, first_line(exc, 200))
            keep[index] = KEPT_REASON
    return keep
