"""Differential query fuzzing (tests/fuzz/): every mesh answer must equal single-process DataFusion's.

Two parts, on one 3-peer mesh over mTLS planned with 1, 2 and 4 partitions:
- every regression case saved under tests/fuzz/cases/ (a minimised difference: tables, SQL, answers) is
  replayed and must answer as DataFusion does (for a bug in DataFusion itself, as DataFusion does with
  the setting that avoids it); cases of bugs still open are expected to fail (strict: a fix shows up as
  an unexpected pass, and its entry in OPEN goes);
- the fuzzer runs a fixed number of queries for a fixed set of seeds (so a red run is a regression, not a
  new random draw), without the DataFusion-bug families (AVOID), and fails on any difference
  whose family has no saved case. ``python -m tests.fuzz --seconds 300`` explores further.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.cases import Case, datafusion_bug_families, load_cases
from tests.fuzz.engines import Engines, compare
from tests.fuzz.families import KNOWN, RACY, UNREPLAYABLE
from tests.fuzz.queries import AVOIDABLE
from tests.fuzz.session import Options, run, tags_of_check

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PARTITIONS = [1, 2, 4]
#: Saved cases of differences still open, by case name: each replay must fail until it is fixed.
#: (Empty: every saved difference is fixed. Keep the mechanism for the next one found.)
OPEN: dict[str, str] = {}
#: The families of bugs in DataFusion itself (its default answer is wrong or racy; the saved case says
#: with which setting DataFusion answers right and the replay checks the mesh against that). The
#: fixed-seed run does not generate them (tests/fuzz/queries.AVOIDABLE says how): against default
#: DataFusion they are noise, not mesh regressions.
CASES = load_cases()
AVOID: dict[str, str] = {c.family: c.datafusion_bug for c in CASES if c.reference_settings}
AVOID.update({family: KNOWN[family] for family in UNREPLAYABLE})  # DataFusion bugs no setting avoids
#: The fixed run: seeds and queries per seed (about a minute on a shared 2-core machine).
SEEDS = [101, 102, 103]
QUERIES = 150


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    base = tmp_path_factory.mktemp("query-fuzz")
    with Engines(PARTITIONS, workers=3, work_dir=base) as e:
        yield e
    shutil.rmtree(base, ignore_errors=True)


def test_the_lists_name_what_exists() -> None:
    names = {c.name for c in CASES}
    assert set(OPEN) <= names, f"OPEN names cases that are not saved: {sorted(set(OPEN) - names)}"
    assert set(AVOID) <= set(AVOIDABLE), f"the generator cannot avoid {sorted(set(AVOID) - set(AVOIDABLE))}"


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=OPEN[c.name])) if c.name in OPEN else c
        for c in CASES
    ],
    ids=[c.name for c in CASES],
)
def test_saved_case(engines: Engines, case: Case, tmp_path: Path) -> None:
    engines.register(case.world.write(tmp_path))
    if case.reference_settings:  # a DataFusion bug: compare with DataFusion where it answers right
        want = engines.run_reference_with(case.sql, case.partitions, case.reference_settings)
    else:
        want = engines.run_reference(case.sql, case.partitions)
    assert want.table is not None, f"DataFusion no longer answers: {want.error}"
    got = engines.run_mesh(case.sql, case.partitions)
    diff = compare(case.sql, tags_of_check(case.check), got, want)
    assert diff is None, f"{case.family}: {diff}\n{case.sql}"


@pytest.mark.parametrize("seed", SEEDS)
def test_fixed_seed_fuzz_run(engines: Engines, seed: int) -> None:
    known = datafusion_bug_families(CASES) | UNREPLAYABLE | {RACY}  # DataFusion's races are not the mesh's
    lines: list[str] = []
    opts = Options(
        seed=seed,
        queries=QUERIES,
        partitions=PARTITIONS,
        avoid=frozenset(AVOID),
        known=known,
        minimise_seconds=30.0,
        max_minimised=3,
        log=lines.append,
    )
    summary = run(opts, engines)
    print(summary.text(PARTITIONS))
    new = [f for f in summary.findings if f.family not in known]
    assert not new, "differences of families without a saved case:\n" + summary.text(PARTITIONS)
    assert summary.compared > QUERIES // 2, summary.text(PARTITIONS)
