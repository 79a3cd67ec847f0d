"""The worker's work dir: everything it holds for a query lives under ``<work dir>/<query id>/``."""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

from ematix_flow.errors import ProtocolError
from ematix_flow.transport.messages import OutputRef

_QUERY_ID = re.compile(r"^[0-9a-f]{8,64}$")


def check_query_id(query_id: str) -> str:
    """A query id is lowercase hex: it names a directory, so nothing else is accepted."""
    if not isinstance(query_id, str) or not _QUERY_ID.match(query_id):
        raise ProtocolError(f"invalid query id {query_id!r}")
    return query_id


def _check_index(kind: str, value: int) -> int:
    """Stage, task and partition numbers name files: only non-negative ints are accepted."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"invalid {kind} {value!r}")
    return value


class WorkStore:
    """Paths of a worker's task inputs and outputs, namespaced by query id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def task_dir(self, query_id: str, stage: int, task: int) -> Path:
        """Directory of one task (its fetched inputs and its outputs)."""
        stage, task = _check_index("stage", stage), _check_index("task", task)
        return self.root / check_query_id(query_id) / f"s{stage}-t{task}"

    def output_path(self, ref: OutputRef) -> Path:
        """The IPC file of one output partition."""
        partition = _check_index("partition", ref.partition)
        return self.task_dir(ref.query_id, ref.stage, ref.task) / "out" / f"p{partition:05d}.arrow"

    def release(self, query_id: str) -> None:
        """Remove every file held for a query (moved aside at once, deleted in the background)."""
        path = self.root / check_query_id(query_id)
        trash = self.root / f".released-{query_id}-{uuid.uuid4().hex[:8]}"
        try:
            path.rename(trash)
        except OSError:
            return  # nothing held (or already released)
        threading.Thread(
            target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True}, daemon=True
        ).start()

    def idle_seconds(self, query_id: str) -> float:
        """Seconds since anything of the query was last written (0 when it is gone)."""
        try:
            paths = [self.root / query_id, *(self.root / query_id).rglob("*")]
            return time.time() - max(p.stat().st_mtime for p in paths)
        except (OSError, ValueError):
            return 0.0

    def used_bytes(self) -> int:
        """Bytes held for queries (outputs and fetched inputs; released ones are on their way out)."""
        total = 0
        for path in (p for q in self.queries() for p in (self.root / q).rglob("*")):
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
        return total

    def queries(self) -> list[str]:
        """Ids of the queries with files here."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _QUERY_ID.match(p.name))

    def destroy(self) -> None:
        """Remove the whole work dir."""
        shutil.rmtree(self.root, ignore_errors=True)
