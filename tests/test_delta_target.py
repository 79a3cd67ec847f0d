"""Delta Lake as a pipeline target (and source): the four strategies in-process and on a real mesh,
the run record in the same commit as the rows, idempotent re-runs, and a concurrent writer's conflict.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from s3server import S3Server
from support import environment, spawned_workers
from test_pipelines import VERSIONS, write_version

from ematix_flow.errors import LoadError
from ematix_flow.pipelines import runner
from ematix_flow.pipelines.config import Pipeline
from ematix_flow.pipelines.targets.base import RunRecord
from ematix_flow.pipelines.targets.delta import RUN_KEY, DeltaTarget

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh_peers(certs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three real flow-worker processes over mTLS, for engine = "distributed"."""
    with spawned_workers(3, certs_dir, tmp_path_factory.mktemp("delta-target-mesh")) as workers:
        yield [w.address for w in workers]


def declare(
    base: Path, mode: str, engine: dict[str, Any], *, target: str = "lake/people", watermark: bool = False
) -> Pipeline:
    target_table: dict[str, Any] = {"kind": "delta", "path": target, "mode": mode}
    if mode in ("merge", "scd2"):
        target_table["keys"] = ["id"]
    transform: dict[str, Any] = {"sql": "SELECT id, name, city, score, updated FROM src", **engine}
    if watermark:
        transform["watermark_column"] = "updated"
    data = {
        "pipeline_name": f"people_{mode}",
        "sources": {"src": {"kind": "parquet", "path": "src.parquet"}},
        "transform": transform,
        "target": target_table,
    }
    return Pipeline.from_dict(data, origin=str(base / "p.toml"), base_dir=base)


def engines(peers: list[str], certs: Path) -> dict[str, dict[str, Any]]:
    distributed = {
        "engine": "distributed",
        "peers": peers,
        "tls": {"dir": str(certs)},
        "local_below_bytes": 0,
    }
    return {"datafusion": {}, "distributed": distributed}


def read_delta(path: Path | str, **options: Any) -> list[dict[str, Any]]:
    """The table's rows by deltalake's own reader (``options``: its storage options, for a bucket)."""
    table = DeltaTable(str(path), **options)
    names = pa.schema(table.schema().to_arrow()).names
    order = "id, valid_from" if "valid_from" in names else "id"
    reader = QueryBuilder().register("t", table).execute(f"SELECT * FROM t ORDER BY {order}")
    return pa.RecordBatchReader.from_stream(reader).read_all().to_pylist()


def _runs(path: Path) -> list[dict[str, Any]]:
    """Each commit's run record (oldest first), read straight from the Delta log."""
    out = []
    for commit in reversed(DeltaTable(str(path)).history()):
        if RUN_KEY in commit:
            out.append({**json.loads(commit[RUN_KEY]), "version": commit["version"]})
    return out


@pytest.mark.parametrize("mode", ["append", "truncate", "merge", "scd2"])
def test_every_strategy_loads_delta_the_same_in_process_and_on_the_mesh(
    tmp_path: Path, mesh_peers: list[str], certs_dir: Path, mode: str
) -> None:
    contents = {}
    for name, engine in engines(mesh_peers, certs_dir).items():
        base = tmp_path / name
        base.mkdir()
        for version in (1, 2, 2):  # the third run repeats the second: merge and scd2 change nothing
            write_version(base, version)
            record = runner.run(declare(base, mode, engine))
            assert record.status == "success"
        contents[name] = read_delta(base / "lake" / "people")
        runs = _runs(base / "lake" / "people")
        assert [r["status"] for r in runs] == ["success"] * 3
        assert [r["version"] for r in runs] == [0, 1, 2]  # one commit per run, rows and record together
    got, want = contents["distributed"], contents["datafusion"]
    strip = ("valid_from", "valid_to")
    assert [{k: v for k, v in r.items() if k not in strip} for r in got] == [
        {k: v for k, v in r.items() if k not in strip} for r in want
    ]
    assert len(got) == {"append": 14, "truncate": 5, "merge": 5, "scd2": 7}[mode]
    if mode == "scd2":
        closed = [(r["id"], r["city"], r["score"]) for r in got if not r["is_current"]]
        assert sorted(closed) == [(2, "rome", 20), (3, "kyiv", 30)]
        assert all(r["valid_to"] is None for r in got if r["is_current"])
        assert all(r["valid_to"] is not None for r in got if not r["is_current"])
    if mode == "merge":
        assert [r["city"] for r in got] == ["oslo", "bern", "kyiv", "lima", "nice"]


def test_merge_twice_is_idempotent_and_counts_come_from_the_commit(tmp_path: Path) -> None:
    write_version(tmp_path, 1)
    runner.run(declare(tmp_path, "merge", {}))
    write_version(tmp_path, 2)
    second = runner.run(declare(tmp_path, "merge", {}))
    third = runner.run(declare(tmp_path, "merge", {}))
    assert second.extra == {"inserted": 1, "updated": 2, "unchanged": 2}
    assert third.extra == {"inserted": 0, "updated": 0, "unchanged": 5}
    history = DeltaTarget(str(tmp_path / "lake" / "people")).history()
    assert [json.loads(h["extra"]) for h in history][1:] == [second.extra, third.extra]
    assert [h["rows_written"] for h in history] == [4, 3, 0]


def test_the_watermark_is_read_back_from_the_commit_metadata(tmp_path: Path) -> None:
    write_version(tmp_path, 1)
    first = runner.run(declare(tmp_path, "append", {}, watermark=True))
    write_version(tmp_path, 2)
    second = runner.run(declare(tmp_path, "append", {}, watermark=True))
    third = runner.run(declare(tmp_path, "append", {}, watermark=True))
    assert (first.rows_read, second.rows_read, third.rows_read) == (4, 3, 0)  # 2, 3 and 5 are newer
    assert second.watermark is not None and second.watermark == third.watermark
    assert second.watermark.startswith("2026-01-03") and "10:00:00" in second.watermark
    assert len(read_delta(tmp_path / "lake" / "people")) == 7


def test_a_failed_run_writes_no_rows_and_is_recorded_in_the_log(tmp_path: Path) -> None:
    write_version(tmp_path, 1)
    runner.run(declare(tmp_path, "merge", {}))
    (tmp_path / "src.parquet").unlink()
    pq.write_table(pa.table({"id": [1, 1], "name": ["x", "y"], "city": ["a", "b"], "score": [1, 2],
                             "updated": ["2027-01-01 00:00:00"] * 2}), tmp_path / "src.parquet")  # fmt: skip
    with pytest.raises(LoadError, match="appears 2 times"):
        runner.run(declare(tmp_path, "merge", {}))
    rows = read_delta(tmp_path / "lake" / "people")
    assert [r["name"] for r in rows] == ["ann", "bob", "cy", "dee"]
    assert [r["status"] for r in _runs(tmp_path / "lake" / "people")] == ["success", "failed"]


class _RacedTarget(DeltaTarget):
    """A target that, once it has read the table, lets another writer commit first."""

    def _open(self) -> Any:
        table = super()._open()
        if table is not None:
            write_deltalake(self.location, pa.table({"id": [99]}), mode="overwrite", schema_mode="overwrite")
        return table


def test_a_concurrent_writer_makes_the_run_fail_clearly_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_deltalake(path, pa.table({"id": [1, 2], "v": ["a", "b"]}))
    run = RunRecord(uuid.uuid4().hex, "p", str(path), "merge", datetime.now(UTC))
    with pytest.raises(LoadError, match="another writer committed to the table meanwhile"):
        _RacedTarget(str(path)).load(pa.table({"id": [2, 3], "v": ["B", "c"]}), "merge", ["id"], run)
    assert read_delta(path) == [{"id": 99}]  # the other writer's commit stands; ours wrote nothing
    assert not any(RUN_KEY in c for c in DeltaTable(str(path)).history())


@pytest.mark.parametrize("engine", ["datafusion", "distributed"])
def test_a_delta_source_and_a_delta_target_in_a_bucket(
    s3_server: S3Server, tmp_path: Path, engine: str
) -> None:
    """Read a Delta table from the S3 server, merge into another there (the AWS environment only)."""
    opts = {
        "aws_endpoint": s3_server.endpoint,
        "aws_access_key_id": s3_server.key_id,
        "aws_secret_access_key": s3_server.secret,
        "aws_allow_http": "true",
        "aws_region": "us-east-1",
    }
    if "pipelines" not in {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}:
        s3_server.client().create_bucket(Bucket="pipelines")
    source = f"s3://pipelines/{engine}/src"
    target = f"s3://pipelines/{engine}/people"
    for version in (1, 2):
        table = pacsv.read_csv(pa.BufferReader(VERSIONS[version].encode()))
        write_deltalake(source, table, mode="overwrite", storage_options=opts)
        mesh = (
            {"engine": "distributed", "local": 2, "local_below_bytes": 0} if engine == "distributed" else {}
        )
        data = {
            "pipeline_name": "people",
            "sources": {"src": {"kind": "delta", "path": source}},
            "transform": {"sql": "SELECT id, name, city, score FROM src", **mesh},
            "target": {"kind": "delta", "path": target, "mode": "merge", "keys": ["id"]},
        }
        with environment(s3_server.env()):
            record = runner.run(Pipeline.from_dict(data, origin=str(tmp_path / "p.toml"), base_dir=tmp_path))
        assert record.status == "success"
    rows = read_delta(target, storage_options=opts)
    assert [(r["id"], r["city"]) for r in rows] == [
        (1, "oslo"),
        (2, "bern"),
        (3, "kyiv"),
        (4, "lima"),
        (5, "nice"),
    ]
