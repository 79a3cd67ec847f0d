"""Every docstring example in the package runs, so none can rot (examples that need a live mesh say
``# doctest: +SKIP``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ematix_flow

SUBMODULES = pkgutil.walk_packages(ematix_flow.__path__, "ematix_flow.")
MODULES = ["ematix_flow", *sorted(m.name for m in SUBMODULES)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags)  # prints each failure (shown by pytest)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_the_examples_are_found() -> None:
    """Guard against a walk that finds nothing (the test above would then pass vacuously)."""
    attempted = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        attempted += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert attempted >= 20, attempted
