"""The package layout keeps its layers apart: what importing a module loads, and the public API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ematix_flow

pytestmark = pytest.mark.integration  # each check runs a fresh interpreter

# What a pure module must not pull in: the submitter, the worker, the network.
HEAVY = ("ematix_flow.coordinator_lib", "ematix_flow.worker", "pyarrow.flight")


def _loaded_after(*modules: str) -> list[str]:
    """The names in ``sys.modules`` after a fresh interpreter imports ``modules``."""
    code = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    "module",
    [
        "ematix_flow",
        "ematix_flow.errors",
        "ematix_flow.protobuf",
        "ematix_flow.planner.stages",
        "ematix_flow.planner.slicing",
        "ematix_flow.planner.paths",
    ],
)
def test_pure_modules_load_no_submitter_worker_or_flight(module: str) -> None:
    loaded = _loaded_after(module)
    assert module in loaded
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], f"importing {module} loaded {heavy}"


def test_protobuf_is_a_leaf() -> None:
    project = [m for m in _loaded_after("ematix_flow.protobuf") if m.startswith("ematix_flow")]
    assert sorted(project) == ["ematix_flow", "ematix_flow.errors", "ematix_flow.protobuf"]


def test_public_names_resolve() -> None:
    from ematix_flow import Mesh, TLSConfig, pipeline
    from ematix_flow.coordinator_lib.mesh import Mesh as MeshClass
    from ematix_flow.pipelines.api import pipeline as pipeline_function
    from ematix_flow.transport.tls import TLSConfig as TLSConfigClass

    assert (Mesh, TLSConfig, pipeline) == (MeshClass, TLSConfigClass, pipeline_function)
    for name in ematix_flow.__all__:
        assert getattr(ematix_flow, name) is not None, name
    assert set(ematix_flow.__all__) <= set(dir(ematix_flow))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = ematix_flow.nothing_here


def test_public_names_resolve_in_a_fresh_interpreter() -> None:
    """``from ematix_flow import *`` and each name of ``__all__`` work before anything else is imported."""
    code = (
        "import ematix_flow\n"
        "from ematix_flow import *\n"
        "missing = [n for n in ematix_flow.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "from ematix_flow import Mesh\n"
        "assert Mesh.__module__.startswith('ematix_flow.coordinator_lib'), Mesh.__module__\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
