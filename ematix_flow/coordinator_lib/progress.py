"""Snapshots of a running query's progress, for live displays (``Mesh.sql(..., progress=hook)``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StageProgress:
    """One stage of a running query.

    ``tasks`` is 0 until the stage starts (its task count follows the bytes its inputs wrote).
    ``done`` can go down when a peer dies and the tasks whose outputs it held are run again.
    """

    stage: int
    kind: str
    tasks: int
    done: int
    running: int
    failed: int  # launches that failed (a dead peer); each is retried
    rows: int  # rows written by its finished tasks (the root: result rows so far)

    @property
    def finished(self) -> bool:
        """True when every task of the stage has its outputs."""
        return self.tasks > 0 and self.done == self.tasks


@dataclass(frozen=True)
class QueryProgress:
    """A query's progress: its stages (by id, the root last) and the time since it was submitted.

    A query that runs in-process (the adaptive gate) has no stages.
    """

    query_id: str
    elapsed: float
    stages: tuple[StageProgress, ...]
    rows: int  # result rows streamed so far
    finished: bool = False  # the last snapshot of a query that ran to its end


#: Called from the submitting thread whenever a task is launched, finishes or fails, when the root
#: stage starts and (at most every ``ROOT_PROGRESS_SECONDS``) while it streams; it should return fast.
ProgressHook = Callable[[QueryProgress], None]

#: While the root stage streams its result, progress is reported at most this often.
ROOT_PROGRESS_SECONDS = 0.2
