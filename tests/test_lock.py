"""The lock is whole and in force: every requirement of pyproject.toml (all extras) and of
requirements-tools.in is locked at a version its range allows, and every distribution installed in this
environment is the locked version, so a test run here is a run of exactly the versions we ship.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
FIX = "run `make lock` (then `make test`) and commit requirements-lock.txt"


def locked() -> dict[str, list[Requirement]]:
    """Lock entries by canonical name (one name may have a pin per environment marker)."""
    entries: dict[str, list[Requirement]] = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith((" ", "#", "-")):
            requirement = Requirement(line)
            operators = [spec.operator for spec in requirement.specifier]
            assert operators == ["=="], f"{LOCK.name}: not one exact pin: {line}"
            entries.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return entries


def applicable(requirements: list[Requirement]) -> list[Requirement]:
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    tools = (ROOT / "requirements-tools.in").read_text().splitlines()
    lines += [line for line in tools if line.strip() and not line.startswith("#")]
    return [Requirement(line.split("#")[0]) for line in lines]


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_every_declared_requirement_is_locked_within_its_range(requirement: Requirement) -> None:
    pins = applicable(locked().get(canonicalize_name(requirement.name), []))
    assert pins, f"{requirement.name} is declared but not in {LOCK.name}: {FIX}"
    for pin in pins:
        version = next(iter(pin.specifier)).version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} has {pin.name}=={version}, outside pyproject's {requirement}: {FIX}"
        )


def test_every_installed_distribution_is_the_locked_version() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("not in a virtual environment: `make install` creates .venv from the lock")
    pins = locked()
    wrong = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name == "ematix-flow":
            continue
        versions = {next(iter(pin.specifier)).version for pin in applicable(pins.get(name, []))}
        if dist.version not in versions:
            wrong.append(f"{name} {dist.version} (locked: {', '.join(sorted(versions)) or 'not locked'})")
    assert not wrong, f"installed versions differ from {LOCK.name}: {'; '.join(sorted(wrong))}"
