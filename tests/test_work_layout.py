"""The work-dir layout (engine/layout.py) and the plan splice of task inputs (planner/splice.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from ematix_flow.engine import layout
from ematix_flow.errors import ProtocolError
from ematix_flow.planner.nodes import input_node, parse_tree
from ematix_flow.planner.splice import rename_projection, splice
from ematix_flow.transport.messages import OutputRef
from ematix_flow.worker.store import WorkStore

QUERY = "ab12cd34" * 2


def test_a_worker_output_path_is_a_shuffle_file(tmp_path: Path) -> None:
    root = tmp_path / f"{layout.work_dir_prefix(4242)}abc"
    path = WorkStore(root).output_path(OutputRef(QUERY, 3, 1, 7))
    assert path == root / QUERY / "s3-t1" / "out" / "p00007.arrow"
    assert path.name == layout.output_name(7)
    assert layout.work_dir_pid(root.name) == "4242"
    assert list(tmp_path.glob(layout.WORK_DIR_GLOB)) == [root]
    assert not layout.is_shuffle_file(str(path))  # not written yet
    path.parent.mkdir(parents=True)
    with pa.ipc.new_file(str(path), pa.schema([("a", pa.int64())])):
        pass
    assert layout.is_shuffle_file(str(path))
    inputs = layout.input_path(path.parent.parent, 2, 5, 1)
    assert inputs == root / QUERY / "s3-t1" / "in2" / "p00005-0001.arrow"


@pytest.mark.parametrize(
    ("query_id", "stage", "task"), [("../etc", 0, 0), ("AB12CD34", 0, 0), (QUERY, -1, 0), (QUERY, 0, True)]
)
def test_names_of_files_are_checked(tmp_path: Path, query_id: str, stage: int, task: int) -> None:
    with pytest.raises(ProtocolError, match="invalid"):
        layout.task_dir(tmp_path, query_id, stage, task)


def test_splice_replaces_input_markers_and_refuses_missing_ones() -> None:
    marker = input_node(4, 1, "input")
    scan = parse_tree(rename_projection(input_node(9, 1, "x").to_bytes(), ["a#dup1"], ["a"]))
    spliced = parse_tree(splice(marker.to_bytes(), {4: scan.to_bytes()}))
    assert [n.kind for n in spliced.walk()] == ["projection", "input"]
    with pytest.raises(ProtocolError, match="references input 4"):
        splice(marker.to_bytes(), {})
