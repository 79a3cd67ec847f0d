"""The benchmark harness (bench/): structure of its outputs and its arithmetic, never its timings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of scripts beside the package, not installed
    sys.path.insert(0, str(ROOT))

from bench import engines, pinning  # noqa: E402
from bench.cli import main  # noqa: E402
from bench.memory import MemoryPeak, RssSampler  # noqa: E402
from bench.publish import paste  # noqa: E402
from bench.report import common_valid, geomean, results_table, scaling_table  # noqa: E402
from bench.runner import EngineResult, QueryResult  # noqa: E402
from ematix_flow.workloads import tpch  # noqa: E402


@pytest.fixture(scope="module")
def tiny_tpch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tpch.generate(0.01, tmp_path_factory.mktemp("bench-tpch") / "sf0.01")


def _run(data: Path, out: Path, engine_names: str, *extra: str) -> int:
    args = ["tpch", "--sf", "0.01", "--data", str(data), "--out", str(out), "--engines", engine_names]
    return main([*args, "--queries", "q01,q03", "--runs", "2", *extra])


@pytest.mark.integration
def test_datafusion_and_duckdb_write_json_md_png(tiny_tpch: Path, tmp_path: Path) -> None:
    has_matplotlib = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_matplotlib = False
    assert _run(tiny_tpch, tmp_path, "datafusion,duckdb") == 0
    document = json.loads((tmp_path / "tpch_sf0.01.json").read_text())
    assert document["benchmark"] == "tpch"
    assert document["sf"] == 0.01
    assert document["engines"] == ["datafusion", "duckdb"]
    assert set(document["engine_info"]) == {"datafusion", "duckdb"}
    assert document["engine_info"]["datafusion"]["target_partitions"] == os.cpu_count()
    assert document["machine"]["cores"] == os.cpu_count()
    assert document["machine"]["cpu_model"]
    assert len(document["load_before"]) == 3 and len(document["load_after"]) == 3
    assert "commit" in document["git"]
    assert [q["query"] for q in document["queries"]] == ["q01", "q03"]
    for query in document["queries"]:
        assert query["ordered"] is True
        for name in ("datafusion", "duckdb"):
            result = query["engines"][name]
            assert result["valid"] is True, result
            assert result["error"] is None
            assert len(result["runs"]) == 2
            assert result["warmup_s"] > 0
            assert result["median_s"] == pytest.approx(
                sorted(result["runs"])[0] / 2 + sorted(result["runs"])[1] / 2
            )
            assert result["memory"]["bench"]["samples"] >= 2
            assert result["distributed"] is None
    assert document["summary"]["common_valid_queries"] == ["q01", "q03"]
    md = (tmp_path / "tpch_sf0.01.md").read_text()
    assert md == document["markdown"]
    assert "| query | datafusion s | duckdb s | duckdb / datafusion | valid |" in md
    assert "| geomean, 2 queries valid on every engine |" in md
    assert "### Peak RSS per peer vs single-process DataFusion" in md
    png = tmp_path / "tpch_sf0.01.png"
    if has_matplotlib:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_engine_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tpch", "--engines", "datafusion,nope", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown engine 'nope'" in err
    assert "choose from datafusion, mesh, mesh-adaptive, duckdb, pyspark" in err
    with pytest.raises(engines.UnknownEngine):
        engines.create("nope", engines.EngineOptions())


def _query(name: str, **medians: float | None) -> QueryResult:
    results = {}
    for engine, median in medians.items():
        if median is None:
            results[engine] = EngineResult(error="boom")
        else:
            results[engine] = EngineResult(runs=[median], valid=True)
    return QueryResult(name, True, results)


def test_geomean_rows_from_hand_made_results() -> None:
    results = [
        _query("q01", datafusion=1.0, mesh=2.0, duckdb=0.5),
        _query("q02", datafusion=4.0, mesh=2.0, duckdb=1.0),
        _query("q03", datafusion=9.0, mesh=None, duckdb=3.0),  # mesh failed: not in the common set
    ]
    results[1].engines["duckdb"].valid = False  # differs: not in the common set either
    names = ["mesh", "datafusion", "duckdb"]
    assert [r.query for r in common_valid(results, names)] == ["q01"]
    table = results_table(results, names)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert rows["q03"].endswith("| mesh: error |")
    assert rows["q02"].endswith("| duckdb: differs |")
    assert rows["geomean, 1 queries valid on every engine"].startswith(
        "| geomean, 1 queries valid on every engine | 2.000 | 1.000 | 0.500 | 2.00 | 0.50 |"
    )
    # each engine's own valid queries: mesh q01, q02 -> sqrt(2*2) = 2; datafusion all three ->
    # (1*4*9)^(1/3); duckdb q01, q03 -> sqrt(0.5*3); ratios over queries valid on both
    own = rows["geomean, each engine's own valid queries (count)"]
    cells = [c.strip() for c in own.strip("|").split("|")]
    assert cells[1:4] == ["2.000 (2)", f"{36 ** (1 / 3):.3f} (3)", f"{math.sqrt(1.5):.3f} (2)"]
    assert cells[4:6] == [f"{math.sqrt(2.0 * 0.5):.2f} (2)", f"{math.sqrt(0.5 * (3 / 9)):.2f} (2)"]
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert geomean([]) is None


def test_scaling_table_sums_and_ratio() -> None:
    results = [
        _query("q01", **{"mesh-1core": 2.0, "mesh-2core": 1.0}),
        _query("q02", **{"mesh-1core": 6.0, "mesh-2core": 4.0}),
    ]
    table = scaling_table(results)
    assert "| mesh-1core | 8.000 |" in table
    assert "| mesh-2core | 5.000 |" in table
    assert "| speed-up mesh-1core / mesh-2core | 1.60 |" in table


def test_paste_replaces_only_the_marked_block() -> None:
    doc = "intro\n<!-- bench:tpch_sf1 -->\nold\n<!-- /bench:tpch_sf1 -->\noutro\n"
    assert paste(doc, "tpch_sf1", "new\ntable\n") == (
        "intro\n<!-- bench:tpch_sf1 -->\nnew\ntable\n<!-- /bench:tpch_sf1 -->\noutro\n"
    )
    with pytest.raises(ValueError, match="tpch_sf10"):
        paste(doc, "tpch_sf10", "x")


def test_memory_peak_merge_and_sampler() -> None:
    merged = MemoryPeak(100, 10, 2).merge(MemoryPeak(90, 30, 3))
    assert merged == MemoryPeak(100, 30, 5)
    with RssSampler(0.01) as sampler, sampler.window({"me": os.getpid(), "gone": 2**22 + 7}) as peaks:
        blob = bytearray(64 * 1024 * 1024)
    assert set(peaks) == {"me"}
    assert peaks["me"].samples >= 2
    assert peaks["me"].peak_bytes >= 64 * 1024 * 1024
    del blob


@pytest.mark.skipif(pinning.pinning_problem({0}) is not None, reason="CPU pinning unavailable")
@pytest.mark.integration
def test_pin_process_pins_every_thread() -> None:
    code = (
        "import threading, time; [threading.Thread(target=time.sleep, args=(30,)).start() for _ in range(3)]"
    )
    child = subprocess.Popen([sys.executable, "-c", code + "; time.sleep(30)"])
    try:
        assert pinning.pin_process(child.pid, {0}) >= 1
        tasks = os.listdir(f"/proc/{child.pid}/task")
        assert all(os.sched_getaffinity(int(t)) == {0} for t in tasks)
    finally:
        child.kill()
        child.wait(10)


@pytest.mark.integration
def test_mesh_engine_records_distribution_and_worker_memory(tiny_tpch: Path, tmp_path: Path) -> None:
    assert _run(tiny_tpch, tmp_path, "mesh,datafusion", "--workers", "2", "--no-chart") == 0
    document = json.loads((tmp_path / "tpch_sf0.01.json").read_text())
    for query in document["queries"]:
        mesh = query["engines"]["mesh"]
        assert mesh["valid"] is True
        assert isinstance(mesh["distributed"], bool)
        assert all("peers_used" in d for d in mesh["details"])
        assert {"bench", "worker0", "worker1"} <= set(mesh["memory"])
    assert "| mesh distributed |" in document["markdown"]


@pytest.mark.integration
def test_flight_sql_engine_answers_like_datafusion_through_adbc(tiny_tpch: Path, tmp_path: Path) -> None:
    assert _run(tiny_tpch, tmp_path, "mesh-flightsql,datafusion", "--workers", "2", "--no-chart") == 0
    document = json.loads((tmp_path / "tpch_sf0.01.json").read_text())
    assert document["queries"]
    for query in document["queries"]:
        engine = query["engines"]["mesh-flightsql"]
        assert engine["valid"] is True, query
        assert {"worker0", "worker1"} <= set(engine["memory"])
    assert "ADBC Flight SQL" in document["markdown"]
