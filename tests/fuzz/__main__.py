"""``python -m tests.fuzz``: fuzz the mesh against single-process DataFusion and print a summary.

Examples:
    python -m tests.fuzz --seconds 60 --seed 1
    python -m tests.fuzz --queries 200 --partitions 2,4 --avoid ignore-nulls,empty-grouping-set
    python -m tests.fuzz --seed 1 --only 3:17 --no-minimise   # replay world 3, query 17 of seed 1

New differences are minimised and saved under --out (default tests/fuzz/cases/), one case per family
that has none there yet; the exit status is 1 when a difference of a family without a case was found.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tests.fuzz.cases import CASES_DIR, datafusion_bug_families, load_cases
from tests.fuzz.families import RACY, UNREPLAYABLE
from tests.fuzz.queries import AVOIDABLE
from tests.fuzz.session import Options, run


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _only(text: str) -> tuple[int, int]:
    world, query = text.split(":")
    return int(world), int(query)


def _avoid(text: str) -> frozenset[str]:
    names = frozenset(x.strip() for x in text.split(",") if x.strip())
    unknown = names - set(AVOIDABLE)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown families {sorted(unknown)}: choose from {sorted(AVOIDABLE)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, print the summary; 1 if a new family of difference turned up."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, help="stop after this long (default 60 unless --queries)")
    parser.add_argument("--queries", type=int, help="stop after this many queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--partitions", type=_ints, default=[1, 2, 4], help="e.g. 1,2,4")
    parser.add_argument("--out", type=Path, default=CASES_DIR, help="where new cases are saved")
    parser.add_argument("--no-save", action="store_true", help="save no cases")
    parser.add_argument(
        "--avoid",
        type=_avoid,
        default=frozenset(),
        help="known families not to generate: " + ", ".join(AVOIDABLE),
    )
    parser.add_argument("--per-world", type=int, default=40, help="queries per world of tables")
    parser.add_argument("--no-minimise", action="store_true")
    parser.add_argument("--minimise-seconds", type=float, default=60.0)
    parser.add_argument("--only", type=_only, help="WORLD:QUERY, run just that query")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the mesh's warnings too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL, format="%(message)s")
    # a difference of a family already fixed is a regression: only DataFusion's own bugs are known
    known = datafusion_bug_families(load_cases(args.out)) if args.out.exists() else frozenset()
    known |= UNREPLAYABLE | {RACY}
    opts = Options(
        seed=args.seed,
        seconds=args.seconds if args.seconds is not None or args.queries is not None else 60.0,
        queries=args.queries,
        workers=args.workers,
        partitions=args.partitions,
        out=None if args.no_save else args.out,
        avoid=args.avoid,
        known=known,
        per_world=args.per_world,
        minimise=not args.no_minimise,
        minimise_seconds=args.minimise_seconds,
        only=args.only,
        log=lambda line: print(line, flush=True),
    )
    summary = run(opts)
    print(summary.text(opts.partitions))
    new = {f.family for f in summary.findings} - known
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
