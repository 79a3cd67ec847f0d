"""Shared fixtures: one TPC-H SF 0.1 data set, TLS material and one 3-peer mesh per session.

Everything expensive is session-scoped and removes its own files when the session ends, so a run
leaves neither processes nor temporary directories behind.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from datafusion import SessionConfig, SessionContext
from support import HOSTS, local_mesh

from ematix_flow import Mesh
from ematix_flow.engine.settings import planning_context
from ematix_flow.transport.certs import init_certs
from ematix_flow.workloads import tpcds, tpch

#: postgres_dsn / postgres_db: one private PostgreSQL; s3_server: one private S3 server (moto)
pytest_plugins = ["pgserver", "s3server"]


@pytest.fixture(scope="session")
def tpch_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TPC-H SF 0.1, one Parquet file per table, generated once per session."""
    base = tmp_path_factory.mktemp("tpch")
    yield tpch.generate(0.1, base / "sf0.1")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def tpcds_small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TPC-DS SF 0.01 (Parquet, one file per table), generated once per session: for plans, not timing."""
    base = tmp_path_factory.mktemp("tpcds-small")
    yield tpcds.generate(0.01, base / "sf0.01")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh mesh CA with a ``peer`` certificate for 127.0.0.1 (made by our own ``flow certs`` code)."""
    base = tmp_path_factory.mktemp("certs")
    init_certs(base / "certs", HOSTS)
    yield base / "certs"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def foreign_certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A second, unrelated CA: its certificates must be refused by the mesh of ``certs_dir``."""
    base = tmp_path_factory.mktemp("foreign-certs")
    init_certs(base / "certs", HOSTS)
    yield base / "certs"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def reference_ctx(tpch_data: Path) -> SessionContext:
    """Single-process DataFusion with the TPC-H tables: the reference answers."""
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    tpch.register_all(ctx, tpch_data)
    return ctx


@pytest.fixture(scope="session")
def reference(reference_ctx: SessionContext) -> Callable[[str], pa.Table]:
    """``reference(sql)``: the single-process DataFusion answer, computed once per query text."""
    cache: dict[str, pa.Table] = {}

    def answer(sql: str) -> pa.Table:
        if sql not in cache:
            cache[sql] = reference_ctx.sql(sql).to_arrow_table()
        return cache[sql]

    return answer


@pytest.fixture(scope="session")
def planning_ctx(tpch_data: Path) -> SessionContext:
    """The planner's own context (4 partitions) with the TPC-H tables registered."""
    ctx = planning_context(4)
    tpch.register_all(ctx, tpch_data)
    return ctx


@pytest.fixture(scope="session")
def tpch_mesh(tpch_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three local flow-workers over fresh mTLS certs; every multi-partition stage spreads over all."""
    base = tmp_path_factory.mktemp("tpch-mesh")
    with local_mesh(workers=3, min_task_bytes=1, work_dir=base) as mesh:
        tpch.register_all(mesh, tpch_data)
        yield mesh
    shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------- test tiers
#: Fixtures that generate benchmark data (with tpchgen / DuckDB): their tests are in the `data` tier.
DATA_FIXTURES = frozenset({"tpch_data", "tiny", "tiny_tpch", "tpcds_data", "tpcds_small"})
#: Session fixtures that start a server: their tests are `integration` wherever they are.
PROCESS_FIXTURES = frozenset({"postgres_dsn", "postgres_db", "s3_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use generated data `data`, and those that use a server `integration`.

    `make test-unit` runs neither; the autouse guard below catches a test that starts a process itself.
    """
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if DATA_FIXTURES & fixtures:
            item.add_marker(pytest.mark.data)
        if PROCESS_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked `integration` that starts a process fails, naming the marker it needs."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{request.node.nodeid} starts a process: mark it pytest.mark.integration")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
