"""The worker's work dir: everything it holds for a query lives under ``<work dir>/<query id>/``.

The layout itself (names of task dirs and output files) is :mod:`ematix_flow.engine.layout`'s.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from pathlib import Path

from ematix_flow.engine import layout
from ematix_flow.transport.messages import OutputRef


class WorkStore:
    """Paths of a worker's task inputs and outputs, namespaced by query id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def task_dir(self, query_id: str, stage: int, task: int) -> Path:
        """Directory of one task (its fetched inputs and its outputs)."""
        return layout.task_dir(self.root, query_id, stage, task)

    def output_path(self, ref: OutputRef) -> Path:
        """The IPC file of one output partition."""
        return layout.output_path(self.root, ref.query_id, ref.stage, ref.task, ref.partition)

    def release(self, query_id: str) -> None:
        """Remove every file held for a query (moved aside at once, deleted in the background)."""
        path = layout.query_dir(self.root, query_id)
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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and layout.is_query_id(p.name))

    def destroy(self) -> None:
        """Remove the whole work dir."""
        shutil.rmtree(self.root, ignore_errors=True)
