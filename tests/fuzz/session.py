"""One fuzzing run: worlds of tables, queries over them on both engines, differences minimised and saved.

``run(Options(...))`` is what ``python -m tests.fuzz`` and ``tests/test_query_fuzz.py`` call. Seeds
name everything: world ``w`` of seed ``s`` and query ``i`` in it are the same on every machine, so a
finding is replayed with ``--seed s --only w:i``.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ematix_flow.workloads.compare import compare_tables
from tests.fuzz.cases import Case, answer_json, case_name
from tests.fuzz.engines import Engines, Outcome, agrees_when, compare, planner_alone
from tests.fuzz.families import KNOWN, RACY, classify, error_key, signature
from tests.fuzz.minimise import Reducer, referenced_tables
from tests.fuzz.queries import Query, QueryGen
from tests.fuzz.sqltree import Node, render, tags_of
from tests.fuzz.tables import World, make_world

#: Times DataFusion is asked again before a difference is blamed on the mesh.
RACE_CHECKS = 2

__all__ = ["Finding", "Options", "Summary", "check_of", "run", "tags_of_check", "top_tags"]


@dataclass
class Options:
    """What a run does (see ``python -m tests.fuzz --help``)."""

    seed: int = 0
    seconds: float | None = None
    queries: int | None = None
    workers: int = 3
    partitions: list[int] = field(default_factory=lambda: [1, 2, 4])
    out: Path | None = None  # where new cases are saved (None: not saved)
    avoid: frozenset[str] = frozenset()
    known: frozenset[str] = frozenset()  # families that already have a saved case
    per_world: int = 40
    minimise: bool = True
    minimise_seconds: float = 60.0
    max_minimised: int = 10
    only: tuple[int, int] | None = None  # (world, query): replay one query
    log: Callable[[str], None] = print


@dataclass
class Finding:
    """A difference between the mesh and DataFusion."""

    family: str
    difference: str
    sql: str
    partitions: int
    world: int
    query: int
    minimised: str | None = None
    case: Path | None = None
    planner_alone: str = ""  # what DataFusion with the mesh's planning settings does (engines.planner_alone)
    agrees: list[str] = field(default_factory=list)  # settings with which DataFusion answers as the mesh


@dataclass
class Summary:
    """The figures of a run."""

    generated: int = 0
    compared: int = 0
    runs: int = 0
    spread: int = 0
    discarded: int = 0
    discard_reasons: Counter[str] = field(default_factory=Counter)
    shapes: set[str] = field(default_factory=set)
    tlp_checks: int = 0
    tlp_failures: list[Finding] = field(default_factory=list)  # DataFusion inconsistent with itself
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    def families(self) -> Counter[str]:
        """Differences by family."""
        return Counter(f.family for f in self.findings)

    def text(self, partitions: list[int]) -> str:
        """The summary printed at the end of a run."""
        spread = f"{100 * self.spread / self.runs:.0f}%" if self.runs else "-"
        lines = [
            f"queries generated {self.generated}, compared on every partition count {self.compared}, "
            f"discarded {self.discarded} (DataFusion rejected them)",
            f"mesh runs {self.runs} (partitions {','.join(map(str, partitions))}; {spread} ran tasks on more "
            f"than one peer), distinct plan shapes {len(self.shapes)}, TLP checks {self.tlp_checks}",
            f"differences {len(self.findings)} in {len(self.families())} families, {self.seconds:.1f} s",
        ]
        for family, count in self.families().most_common():
            of_family = [f for f in self.findings if f.family == family]
            first = next((f for f in of_family if f.minimised), of_family[0])
            known = " (known)" if family in KNOWN else ""
            where = f"world {first.world} query {first.query}, p={first.partitions}"
            lines.append(f"  {family}{known}: {count}  e.g. {where}")
            lines.append(f"    {first.difference[:200]}")
            lines.append(f"    minimised: {first.minimised or '(not minimised)'}")
            if first.planner_alone:
                lines.append(
                    f"    DataFusion with the mesh's planning settings, in-process: {first.planner_alone}"
                )
            if first.agrees:
                lines.append(f"    DataFusion answers as the mesh with: {', '.join(first.agrees)}")
            if first.case is not None:
                lines.append(f"    saved: {first.case}")
        for f in self.tlp_failures:
            where = f"world {f.world} query {f.query}"
            lines.append(f"  TLP (DataFusion against itself, not the mesh): {where}: {f.difference}")
            lines.append(f"    partitions: {f.sql}")
            lines.append(f"    base query: {f.minimised}")
        if self.discard_reasons:
            top = ", ".join(f"{n}x {r}" for r, n in self.discard_reasons.most_common(3))
            lines.append(f"most common rejections: {top}")
        return "\n".join(lines)


def world_seed(seed: int, world: int) -> int:
    """The seed of world ``world`` of a run seeded ``seed``."""
    return seed * 10_007 + world


def query_seed(seed: int, world: int, query: int) -> int:
    """The seed of query ``query`` in world ``world``."""
    return world_seed(seed, world) * 100_003 + query


def top_tags(tree: Node) -> set[str]:
    """Tags of the outermost query's own clauses (its ORDER BY / LIMIT), not of its subqueries."""
    return {t for p in tree.parts if isinstance(p, Node) and p.kind == "clause" for t in p.tags}


def check_of(tags: set[str]) -> str:
    """How a case's answers compare: "count" (a LIMIT without ORDER BY), "ordered" (a total ORDER BY)
    or "rows" (as multisets)."""
    return "count" if "limit-count" in tags else "ordered" if "order-total" in tags else "rows"


def tags_of_check(check: str) -> set[str]:
    """The ``top_tags`` that ``compare`` needs for a case's ``check``."""
    return {"count": {"limit-count"}, "ordered": {"order-total"}}.get(check, set())


class _Run:
    def __init__(self, opts: Options, engines: Engines, scratch: Path) -> None:
        self.opts = opts
        self.engines = engines
        self.scratch = scratch
        self.summary = Summary()
        self.t0 = time.monotonic()
        self.minimised: set[str] = set()
        self.saved: set[str] = set(opts.known)
        self.writes = 0

    def done(self) -> bool:
        o = self.opts
        if o.queries is not None and self.summary.generated >= o.queries:
            return True
        return o.seconds is not None and time.monotonic() - self.t0 > o.seconds

    def worlds(self) -> None:
        w = 0
        while not self.done():
            if self.opts.only is not None and w != self.opts.only[0]:
                w += 1
                continue
            world = make_world(world_seed(self.opts.seed, w))
            paths = world.write(self.scratch / f"w{w}")
            self.engines.register(paths)
            for i in range(self.opts.per_world):
                if self.done():
                    break
                if self.opts.only is not None and i != self.opts.only[1]:
                    continue
                q = QueryGen(world, query_seed(self.opts.seed, w, i), self.opts.avoid).query()
                self.summary.generated += 1
                self.one(q, world, paths, w, i)
            if self.opts.only is not None:
                break
            w += 1

    def one(self, q: Query, world: World, paths: dict[str, Path], w: int, i: int) -> None:
        sql, tags = q.sql, top_tags(q.tree)
        for n, p in enumerate(self.opts.partitions):
            want = self.engines.run_reference(sql, p)
            if want.error is not None:
                self.summary.discarded += 1
                self.summary.discard_reasons[error_key(want.error)[:70]] += 1
                return
            if n == 0 and q.base is not None:
                self.tlp(q, want, p, w, i)
            shape = self.engines.shape(sql, p)
            if shape is not None:
                self.summary.shapes.add(shape)
            got = self.engines.run_mesh(sql, p)
            self.summary.runs += 1
            self.summary.spread += got.peers > 1
            diff = compare(sql, tags, got, want)
            if diff is not None:
                racy = got.table is not None and self.racy_reference(sql, tags, p, want)
                self.found(q, diff, p, world, paths, (w, i), got, racy)
                return
        self.summary.compared += 1

    def tlp(self, q: Query, want: Outcome, p: int, w: int, i: int) -> None:
        """DataFusion against itself: the three partitions of a TLP query add up to its base query."""
        assert q.base is not None and want.table is not None
        self.summary.tlp_checks += 1
        base = self.engines.run_reference(render(q.base), p)
        if base.table is None:
            return
        diff = compare_tables(want.table, base.table, ordered=False)
        if diff is not None:  # DataFusion disagrees with itself: its bug, not the mesh's
            f = Finding("tlp", diff, q.sql, p, w, i, minimised=render(q.base))
            self.summary.tlp_failures.append(f)
            self.opts.log(
                f"[world {w} query {i}] TLP: DataFusion's partitions differ from its base query: {diff}"
            )

    def racy_reference(self, sql: str, tags: set[str], p: int, want: Outcome) -> bool:
        """Whether DataFusion answers ``sql`` otherwise when asked again (its own race, not the mesh's)."""
        for _ in range(RACE_CHECKS):
            again = self.engines.run_reference(sql, p)
            if again.table is None or compare(sql, tags, again, want) is not None:
                return True
        return False

    def found(
        self,
        q: Query,
        diff: str,
        p: int,
        world: World,
        paths: dict[str, Path],
        at: tuple[int, int],
        got: Outcome,
        racy: bool = False,
    ) -> None:
        w, i = at
        agrees = agrees_when(self.engines, q.sql, top_tags(q.tree), p, got)
        family = RACY if racy else classify(diff, q.tags, agrees, q.sql)
        finding = Finding(family, diff, q.sql, p, w, i, agrees=agrees)
        self.summary.findings.append(finding)
        self.opts.log(f"[world {w} query {i} p={p}] {family}: {diff[:160]}")
        if racy:  # DataFusion's own answer changes from run to run: nothing of the mesh's to minimise
            return
        o = self.opts
        if not o.minimise or family in self.minimised or len(self.minimised) >= o.max_minimised:
            if o.minimise:
                why = "its family was minimised before" if family in self.minimised else "enough minimised"
                self.opts.log(f"  not minimised: {why}")
            finding.planner_alone = planner_alone(self.engines, q.sql, top_tags(q.tree), p)
            return
        self.minimised.add(family)
        try:
            self.shrink(q, finding, world, p)
        finally:
            self.engines.register(paths)
        if finding.family != family:
            self.minimised.add(finding.family)

    def probe(self, p: int) -> Callable[[Node, World | None], str | None]:
        def run(tree: Node, world: World | None) -> str | None:
            if world is not None:
                self.writes += 1
                self.engines.register(world.write(self.scratch / f"min{self.writes}"))
            sql = render(tree)
            want = self.engines.run_reference(sql, p)
            if want.error is not None:
                return None
            return compare(sql, top_tags(tree), self.engines.run_mesh(sql, p), want)

        return run

    def shrink(self, q: Query, finding: Finding, world: World, p: int) -> None:
        """Minimise ``finding`` and save it as a case when its family has none yet."""
        reducer = Reducer(self.probe(p), signature, signature(finding.difference), self.opts.minimise_seconds)
        tree = reducer.query(q.tree)
        sql = render(tree)
        small = reducer.tables(tree, world)
        repeat = [self.probe(p)(tree, small) for _ in range(2)]
        diff = repeat[-1] or reducer.last_diff or finding.difference
        finding.minimised = sql
        got = self.engines.run_mesh(sql, p)
        finding.agrees = agrees_when(self.engines, sql, top_tags(tree), p, got)
        finding.family = classify(diff, tags_of(tree), finding.agrees, sql)
        finding.planner_alone = planner_alone(self.engines, sql, top_tags(tree), p)
        flaky = any(r is None or signature(r) != signature(finding.difference) for r in repeat)
        self.opts.log(f"  minimised in {reducer.tries} runs{' (FLAKY)' if flaky else ''}: {sql}")
        if self.opts.out is None or finding.family in self.saved:
            return
        want = self.engines.run_reference(sql, p)
        case = Case(
            case_name(finding.family, self.opts.out),
            finding.family,
            sql,
            p,
            [small.table(n) for n in referenced_tables(sql, small)],
            answer_json(want.table) if want.table is not None else {"error": want.error},
            {"error": got.error}
            if got.error
            else {**answer_json(got.table), "difference": diff}
            if got.table is not None
            else {},
            {
                "seed": self.opts.seed,
                "world": finding.world,
                "query": finding.query,
                "flaky": flaky,
                "datafusion_with_mesh_settings": finding.planner_alone,
                "datafusion_agrees_with_mesh_when": finding.agrees,
                "original_sql": finding.sql,
                "original_difference": finding.difference,
            },
            check_of(top_tags(tree)),
        )
        finding.case = case.save(self.opts.out)
        self.saved.add(finding.family)


def run(opts: Options, engines: Engines | None = None) -> Summary:
    """Fuzz until ``opts.queries`` queries or ``opts.seconds`` seconds; the run's figures.

    ``engines``: a mesh and reference to use (with ``opts.partitions`` among their partition
    counts); by default the run starts its own.
    """
    with tempfile.TemporaryDirectory(prefix="flow-fuzz-") as tmp:
        scratch = Path(tmp)
        if engines is not None:
            return _run(opts, engines, scratch)
        with Engines(opts.partitions, opts.workers, work_dir=scratch) as own:
            return _run(opts, own, scratch)


def _run(opts: Options, engines: Engines, scratch: Path) -> Summary:
    r = _Run(opts, engines, scratch)
    r.worlds()
    r.summary.seconds = time.monotonic() - r.t0
    return r.summary
