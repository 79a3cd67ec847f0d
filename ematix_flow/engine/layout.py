"""Where a worker keeps its files: the one definition of the work-dir layout.

::

    <base>/flow-worker-<pid>-<random>/           a worker's work dir (removed when it stops)
        _spill/  _templates/                     DataFusion's spill files, scan templates
        <query id>/s<stage>-t<task>/              one task of one query
            in<i>/p<group>-<n>.arrow             its fetched inputs (removed once consumed)
            out/p<k>.arrow                       its output partitions (until the query is released)

Workers write it (``worker/store.py``, ``worker/main.py``), the engine writes task outputs and inputs
into it and reads a producer's outputs in place on the same machine (:func:`is_shuffle_file`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ematix_flow.errors import ProtocolError

#: A work dir's name is this, the worker's pid, ``-`` and random characters.
WORK_DIR_PREFIX = "flow-worker-"
#: Matches every work dir in a base directory.
WORK_DIR_GLOB = f"{WORK_DIR_PREFIX}*-*"
#: DataFusion's spill files, inside a work dir.
SPILL_DIR = "_spill"
#: Empty IPC files the Arrow scan templates are made from, inside a work dir.
TEMPLATES_DIR = "_templates"
#: A task's output partitions, inside its task dir.
OUT_DIR = "out"
#: A task's fetched inputs, inside its task dir: ``in<input index>/``.
INPUT_DIR_PREFIX = "in"

_QUERY_ID = re.compile(r"^[0-9a-f]{8,64}$")
#: The output file of a task of a worker on this machine: the only files a task reads directly
#: instead of fetching them, whatever path a message names.
_SHUFFLE_FILE = re.compile(
    rf"/{WORK_DIR_PREFIX}\d+-[^/]+/[0-9a-f]{{8,64}}/s\d+-t\d+/{OUT_DIR}/p\d{{5}}\.arrow\Z"
)


def work_dir_prefix(pid: int) -> str:
    """The name prefix of the work dir of the worker with process id ``pid``."""
    return f"{WORK_DIR_PREFIX}{pid}-"


def work_dir_pid(name: str) -> str:
    """The pid part of a work dir's name (a string: not checked to be digits)."""
    return name.split("-")[2]


def is_query_id(name: str) -> bool:
    """Whether ``name`` is a query id (lowercase hex, 8 to 64 characters)."""
    return bool(_QUERY_ID.match(name))


def check_query_id(query_id: str) -> str:
    """A query id is lowercase hex: it names a directory, so nothing else is accepted.

    Raises:
        ProtocolError: ``query_id`` is not a query id.
    """
    if not isinstance(query_id, str) or not _QUERY_ID.match(query_id):
        raise ProtocolError(f"invalid query id {query_id!r}")
    return query_id


def check_index(kind: str, value: int) -> int:
    """Stage, task and partition numbers name files: only non-negative ints are accepted.

    Raises:
        ProtocolError: ``value`` is not a non-negative int.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"invalid {kind} {value!r}")
    return value


def query_dir(root: Path, query_id: str) -> Path:
    """Everything a work dir holds for one query."""
    return root / check_query_id(query_id)


def task_dir(root: Path, query_id: str, stage: int, task: int) -> Path:
    """Directory of one task (its fetched inputs and its outputs)."""
    stage, task = check_index("stage", stage), check_index("task", task)
    return query_dir(root, query_id) / f"s{stage}-t{task}"


def output_name(partition: int) -> str:
    """The file name of output partition ``partition`` in a task's ``out`` dir."""
    return f"p{partition:05d}.arrow"


def output_path(root: Path, query_id: str, stage: int, task: int, partition: int) -> Path:
    """The IPC file of one output partition of one task."""
    partition = check_index("partition", partition)
    return task_dir(root, query_id, stage, task) / OUT_DIR / output_name(partition)


def input_path(task: Path, index: int, group: int, n: int) -> Path:
    """Where a task keeps the ``n``-th fetched file of scan partition ``group`` of its input ``index``."""
    return task / f"{INPUT_DIR_PREFIX}{index}" / f"p{group:05d}-{n:04d}.arrow"


def input_dirs(task: Path) -> list[Path]:
    """The folders of a task's fetched inputs (removed once the task has run)."""
    return list(task.glob(f"{INPUT_DIR_PREFIX}*"))


def is_shuffle_file(path: str) -> bool:
    """Whether ``path`` is an existing task output file of a worker here (no symlinks, no ``..``)."""
    return (
        bool(path)
        and os.path.isabs(path)
        and _SHUFFLE_FILE.search(path) is not None
        and os.path.realpath(path) == os.path.normpath(path)
        and os.path.isfile(path)
    )
