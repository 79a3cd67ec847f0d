"""The Parquet target: append and truncate, the history committed with the data, and crashes.

Crash tests run a load in a child process that dies (``os._exit``) at a chosen step, then check
that the folder, the history and the watermark are consistent and that the next load cleans up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import datafusion
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ematix_flow.errors import ConfigError
from ematix_flow.pipelines.targets.base import RunRecord
from ematix_flow.pipelines.targets.parquet import ParquetTarget

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)
_runs = iter(range(1, 1_000_000))


def record(mode: str = "append", watermark: str | None = None, pipeline: str = "p") -> RunRecord:
    n = next(_runs)
    return RunRecord(
        run_id=f"run{n:04d}",
        pipeline=pipeline,
        target_table="",
        mode=mode,  # type: ignore[arg-type]
        started=T0 + timedelta(minutes=n),
        watermark_column="day" if watermark else None,
        watermark=watermark,
        watermark_type="date32[day]" if watermark else None,
    )


def rows(ids: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "name": [f"n{i}" for i in ids]})


def datafusion_ids(folder: Path, **settings: str) -> list[int]:
    config = datafusion.SessionConfig()
    for key, value in settings.items():
        config = config.set(key, value)
    ctx = datafusion.SessionContext(config)
    ctx.register_parquet("t", str(folder))
    return sorted(ctx.sql("SELECT id FROM t").to_arrow_table()["id"].to_pylist())


def every_reader(folder: Path) -> dict[str, list[int]]:
    """The ids each reader sees in the folder: the side files must be invisible to all of them."""
    with duckdb.connect() as con:
        glob = str(folder / "*.parquet")
        by_duckdb = sorted(r[0] for r in con.execute(f"SELECT id FROM read_parquet('{glob}')").fetchall())
    return {
        "pyarrow": sorted(pq.read_table(folder)["id"].to_pylist()),
        "datafusion": datafusion_ids(folder),
        "datafusion_subdirs": datafusion_ids(
            folder, **{"datafusion.execution.listing_table_ignore_subdirectory": "false"}
        ),
        "duckdb": by_duckdb,
    }


def siblings(folder: Path) -> list[str]:
    """What lies beside the folder, the lock file aside."""
    return sorted(p.name for p in folder.parent.iterdir() if p != folder and not p.name.endswith(".lock"))


# ------------------------------------------------------------------------------------ modes
def test_append_adds_a_part_per_run_that_every_reader_sees_without_the_side_files(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "sales"
    target = ParquetTarget(folder)
    first = target.load(rows([1, 2]), "append", [], record(watermark="2026-01-01"))
    second = target.load(rows([3]), "append", [], record(watermark="2026-01-02"))

    assert (first.rows_written, first.extra, first.status) == (2, {"inserted": 2}, "success")
    assert second.target_table == str(folder) and second.ended is not None
    parts = sorted(p.name for p in folder.glob("*.parquet"))
    assert parts == [f"part-{first.run_id}.parquet", f"part-{second.run_id}.parquet"]
    assert sorted(os.listdir(folder / "_ematix_flow")) == ["run_history"]
    assert every_reader(folder) == {
        "pyarrow": [1, 2, 3],
        "datafusion": [1, 2, 3],
        "datafusion_subdirs": [1, 2, 3],
        "duckdb": [1, 2, 3],
    }
    assert [r["run_id"] for r in target.history()] == [first.run_id, second.run_id]
    assert target.history()[1]["watermark_type"] == "date32[day]"
    wm = target.last_watermark("p", "day")
    assert wm is not None and (wm.column, wm.value, wm.arrow_type) == ("day", "2026-01-02", "date32[day]")
    assert target.last_watermark("other", "day") is None and target.last_watermark("p", "ts") is None
    assert siblings(folder) == []


def test_truncate_replaces_the_contents_and_carries_the_history(tmp_path: Path) -> None:
    folder = tmp_path / "totals"
    target = ParquetTarget(folder)
    target.load(rows([1, 2, 3]), "append", [], record(watermark="2026-01-01"))
    done = target.load(rows([7, 8]), "truncate", [], record("truncate", watermark="2026-01-05"))

    assert done.extra == {"inserted": 2, "deleted": 3} and done.rows_written == 2
    assert [p.name for p in folder.glob("*.parquet")] == [f"part-{done.run_id}.parquet"]
    assert set(map(tuple, every_reader(folder).values())) == {(7, 8)}
    assert [r["mode"] for r in target.history()] == ["append", "truncate"]
    wm = target.last_watermark("p", "day")
    assert wm is not None and wm.value == "2026-01-05"
    assert siblings(folder) == []


def test_a_first_truncate_creates_the_folder_and_an_empty_result_leaves_an_empty_dataset(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "new" / "t"
    target = ParquetTarget(folder)
    target.load(rows([1]), "truncate", [], record("truncate"))
    assert pq.read_table(folder)["id"].to_pylist() == [1]
    target.load(rows([]), "truncate", [], record("truncate"))
    empty = pq.read_table(folder)
    assert empty.num_rows == 0 and empty.column_names == ["id", "name"]
    assert datafusion_ids(folder) == []


def test_an_append_of_no_rows_records_the_run_without_a_file(tmp_path: Path) -> None:
    target = ParquetTarget(tmp_path / "t")
    target.load(rows([1]), "append", [], record(watermark="2026-01-01"))
    done = target.load(rows([]), "append", [], record(watermark="2026-01-01"))
    assert done.rows_written == 0 and len(list((tmp_path / "t").glob("*.parquet"))) == 1
    assert [r["rows_written"] for r in target.history()] == [1, 0]


def test_merge_and_scd2_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = ParquetTarget(tmp_path / "t")
    for mode in ("merge", "scd2"):
        with pytest.raises(ConfigError, match=r"append and truncate, not .*use duckdb/sqlite/postgres"):
            target.check(mode, ["id"])  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            target.load(rows([1]), mode, ["id"], record(mode))  # type: ignore[arg-type]
    assert not (tmp_path / "t").exists()
    target.check("append", [])
    target.check("truncate", [])


def test_an_append_with_other_columns_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    target = ParquetTarget(tmp_path / "t")
    target.load(rows([1]), "append", [], record())
    other = pa.table({"id": pa.array([2], pa.int32()), "name": ["x"]})
    with pytest.raises(ConfigError, match=r"columns \(id int32, name string\) differ .*mode = truncate"):
        target.load(other, "append", [], record())
    with pytest.raises(ConfigError, match="columns named twice: id"):
        target.load(pa.table([[1], [2]], names=["id", "id"]), "append", [], record())
    assert len(list((tmp_path / "t").glob("*.parquet"))) == 1 and len(target.history()) == 1


def test_a_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "t"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file; a parquet target is a folder"):
        ParquetTarget(file).check("append", [])


def test_failed_runs_are_recorded_and_never_move_the_watermark(tmp_path: Path) -> None:
    target = ParquetTarget(tmp_path / "t")
    failed = record(watermark="2026-01-09")
    failed.error = "QueryError: boom"
    target.record_failure(failed)  # no folder yet: made for the history
    target.load(rows([1]), "append", [], record(watermark="2026-01-01"))
    target.record_failure(record(watermark="2026-01-10"))
    runs = target.history()
    assert [r["status"] for r in runs] == ["failed", "success", "failed"]
    assert runs[0]["error"] == "QueryError: boom" and runs[2]["error"] == "failed (no message recorded)"
    wm = target.last_watermark("p", "day")
    assert wm is not None and wm.value == "2026-01-01"
    ParquetTarget(tmp_path / "t" / "part-x.parquet" / "no").record_failure(record())  # logs, no raise


# ------------------------------------------------------------------------------------ the swap
def test_the_folder_always_holds_complete_contents_while_truncates_swap_it(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    target = ParquetTarget(folder)
    target.load(rows([0]), "truncate", [], record("truncate"))
    seen: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # raises if the folder is ever missing
            try:
                names = sorted(os.listdir(fd))
                # A listing that began just before a swap reads the retired folder while it is being
                # removed; only listings of the folder still at the path say what a reader sees there.
                if os.fstat(fd).st_ino == os.stat(folder).st_ino:
                    seen.append(names)
            finally:
                os.close(fd)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(30):
            target.load(rows([i]), "truncate", [], record("truncate"))
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert seen and all(len(names) == 2 and names[0] == "_ematix_flow" for names in seen), seen[:5]
    assert len(target.history()) == 31 and siblings(folder) == []


def test_the_two_rename_fallback_swaps_and_puts_the_old_contents_back_on_error(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    target = ParquetTarget(folder)
    target.load(rows([1]), "truncate", [], record("truncate"))
    new = tmp_path / ".t.new-x"
    new.mkdir()
    pq.write_table(rows([2]), new / "part-x.parquet")
    retired = target._publish(new, "x", exchange=False)
    assert retired == tmp_path / ".t.old-x" and pq.read_table(retired)["id"].to_pylist() == [1]
    assert pq.read_table(folder)["id"].to_pylist() == [2] and not new.exists()

    with pytest.raises(FileNotFoundError):
        target._publish(tmp_path / ".t.new-missing", "y", exchange=False)
    assert pq.read_table(folder)["id"].to_pylist() == [2] and not (tmp_path / ".t.old-y").exists()


# ------------------------------------------------------------------------------------ crashes
CHILD = textwrap.dedent(
    """
    import ctypes, os, shutil, sys
    from datetime import UTC, datetime
    from pathlib import Path
    import pyarrow as pa
    from ematix_flow.pipelines.targets.base import RunRecord
    from ematix_flow.pipelines.targets.parquet import ParquetTarget

    folder, mode, run_id = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    {patch}
    record = RunRecord(run_id=run_id, pipeline="p", target_table="", mode=mode,
                       started=datetime.now(UTC), watermark_column="day", watermark="2026-02-01",
                       watermark_type="date32[day]")
    ParquetTarget(folder).load(pa.table({{"id": pa.array([100, 101], pa.int64()),
                                          "name": ["a", "b"]}}), mode, [], record)
    print("not killed")
    """
)
# os.replace of the part file: after it (committed) or instead of it (not committed)
AFTER_PART = """
real = os.replace
def replace(src, dst):
    real(src, dst)
    if Path(dst).name.startswith("part-"):
        os._exit(9)
os.replace = replace
"""
BEFORE_PART = """
real = os.replace
def replace(src, dst):
    if Path(dst).name.startswith("part-"):
        os._exit(9)
    real(src, dst)
os.replace = replace
"""
# no renameat2 (another OS or file system), and death between the two renames
BETWEEN_RENAMES = """
def no_libc(*args, **kwargs):
    raise OSError("no libc here")
ctypes.CDLL = no_libc
real = os.rename
def rename(src, dst):
    real(src, dst)
    if Path(dst).name.startswith(".t.old-"):
        os._exit(9)
os.rename = rename
"""
# death right after the exchange, before the old contents are removed
AFTER_SWAP = """
shutil.rmtree = lambda *a, **k: os._exit(9)
"""
# death while the new contents are written, before the swap
BEFORE_SWAP = """
real = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".t.new-"):
        os._exit(9)
    real(fd)
os.fsync = fsync
"""


def crash(folder: Path, mode: str, patch: str, run_id: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = CHILD.format(patch=patch)
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), mode, run_id],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 9, (done.returncode, done.stdout, done.stderr)


def seeded(tmp_path: Path) -> tuple[Path, ParquetTarget]:
    folder = tmp_path / "t"
    target = ParquetTarget(folder)
    target.load(rows([1, 2]), "append", [], record(watermark="2026-01-01"))
    return folder, target


@pytest.mark.integration
def test_an_append_killed_after_its_commit_counts_once_with_its_watermark(tmp_path: Path) -> None:
    folder, target = seeded(tmp_path)
    crash(folder, "append", AFTER_PART, "killed")
    assert (folder / "_ematix_flow" / "pending-killed").exists()
    assert sorted(pq.read_table(folder)["id"].to_pylist()) == [1, 2, 100, 101]
    wm = target.last_watermark("p", "day")
    assert wm is not None and wm.value == "2026-02-01"  # with the data: no duplicates next run

    target.load(rows([3]), "append", [], record(watermark="2026-02-02"))
    assert not (folder / "_ematix_flow" / "pending-killed").exists()
    assert [r["run_id"] for r in target.history()].count("killed") == 1
    assert len(pq.read_table(folder / "_ematix_flow" / "run_history")) == 3


@pytest.mark.integration
def test_an_append_killed_before_its_commit_leaves_no_trace(tmp_path: Path) -> None:
    folder, target = seeded(tmp_path)
    crash(folder, "append", BEFORE_PART, "killed")
    assert sorted(pq.read_table(folder)["id"].to_pylist()) == [1, 2]
    wm = target.last_watermark("p", "day")
    assert wm is not None and wm.value == "2026-01-01"  # not ahead of the data: no gap next run
    assert "killed" not in [r["run_id"] for r in target.history()]

    target.record_failure(record())  # any write cleans up
    assert sorted(os.listdir(folder)) == ["_ematix_flow", *(p.name for p in folder.glob("part-*"))]
    assert sorted(os.listdir(folder / "_ematix_flow")) == ["run_history"]


@pytest.mark.integration
def test_a_fallback_truncate_killed_between_its_renames_is_rolled_back(tmp_path: Path) -> None:
    folder, target = seeded(tmp_path)
    crash(folder, "truncate", BETWEEN_RENAMES, "killed")
    assert not folder.exists() and sorted(siblings(folder)) == [".t.new-killed", ".t.old-killed"]
    wm = target.last_watermark("p", "day")  # read from the old contents, which are the committed ones
    assert wm is not None and wm.value == "2026-01-01"

    target.load(rows([5]), "append", [], record())
    assert sorted(pq.read_table(folder)["id"].to_pylist()) == [1, 2, 5]
    assert siblings(folder) == [] and "killed" not in [r["run_id"] for r in target.history()]


@pytest.mark.integration
def test_a_truncate_killed_after_its_swap_is_committed(tmp_path: Path) -> None:
    folder, target = seeded(tmp_path)
    crash(folder, "truncate", AFTER_SWAP, "killed")
    assert sorted(pq.read_table(folder)["id"].to_pylist()) == [100, 101]
    assert siblings(folder) == [".t.new-killed"]  # the old contents, not yet removed
    wm = target.last_watermark("p", "day")
    assert wm is not None and wm.value == "2026-02-01"
    target.record_failure(record())
    assert siblings(folder) == []


@pytest.mark.integration
def test_a_truncate_killed_before_its_swap_changes_nothing(tmp_path: Path) -> None:
    folder, target = seeded(tmp_path)
    crash(folder, "truncate", BEFORE_SWAP, "killed")
    assert sorted(pq.read_table(folder)["id"].to_pylist()) == [1, 2]
    assert siblings(folder) == [".t.new-killed"]
    wm = target.last_watermark("p", "day")
    assert wm is not None and wm.value == "2026-01-01"
    target.load(rows([9]), "truncate", [], record("truncate"))
    assert pq.read_table(folder)["id"].to_pylist() == [9] and siblings(folder) == []
