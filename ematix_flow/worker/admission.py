"""Task admission: which tasks may run now, which wait, which are refused.

At most ``max_tasks`` tasks hold a slot at once; the others queue for one. A task that gets its slot
is refused if its query was cancelled meanwhile (or before it arrived) or if the work dir holds more
than ``--max-disk``. No Flight and no files here: the disk use is a function the worker passes in.

Example:
    >>> admission = Admission(max_tasks=1)
    >>> slot = admission.queue("ab12cd34")
    >>> admission.start(slot)
    >>> admission.active, admission.queued
    (1, 0)
    >>> admission.finish(slot, succeeded=True)
    >>> admission.active, admission.tasks_run
    (0, 1)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ematix_flow.errors import TaskFailedError

#: How long a cancelled query id is remembered (a task of it arriving late is refused meanwhile).
CANCEL_MEMORY_SECONDS = 600.0


@dataclass
class TaskSlot:
    """One admitted task's place: queued until :meth:`Admission.start`, then holding a run slot."""

    query_id: str
    cancel: threading.Event  # shared by every task of the query; set when it is cancelled
    running: bool = False  # holds a slot (set by Admission.start)

    @property
    def cancelled(self) -> bool:
        """Whether the task's query has been cancelled (now, not when it arrived)."""
        return self.cancel.is_set()


class Admission:
    """The ``--max-tasks`` slots, the queue for them, the ``--max-disk`` check and query cancellation.

    Thread-safe: every Flight call runs on a thread of its own.
    """

    def __init__(
        self,
        max_tasks: int,
        max_disk: int | None = None,
        disk_used: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Admit ``max_tasks`` tasks at once (at least 1); ``disk_used`` measures the work dir in bytes."""
        self.max_tasks = max(1, max_tasks)
        self.max_disk = max_disk
        self._disk_used = disk_used
        self._clock = clock
        self._slots = threading.BoundedSemaphore(self.max_tasks)
        self._lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}  # query id -> set when cancelled
        self._running: dict[str, int] = {}  # query id -> its tasks queued or running now
        self._cancelled_at: dict[str, float] = {}
        self._active = 0  # tasks holding a slot
        self._queued = 0  # tasks waiting for one
        self.tasks_run = 0  # tasks that ended without an error

    @property
    def active(self) -> int:
        """Tasks holding a slot now."""
        return self._active

    @property
    def queued(self) -> int:
        """Tasks waiting for a slot now."""
        return self._queued

    def queue(self, query_id: str) -> TaskSlot:
        """Count a new task of ``query_id`` as queued; every ``queue`` needs one :meth:`finish`."""
        with self._lock:
            cancel = self._cancels.setdefault(query_id, threading.Event())
            self._running[query_id] = self._running.get(query_id, 0) + 1
            self._queued += 1
        return TaskSlot(query_id, cancel)

    def start(self, slot: TaskSlot) -> None:
        """Wait for a free slot, then check the task may run.

        Raises:
            TaskFailedError: the query was cancelled, or the work dir holds more than ``max_disk``
                (the task holds its slot all the same until :meth:`finish`).
        """
        self._slots.acquire()  # at most max_tasks at once; the others wait here
        slot.running = True
        with self._lock:
            self._queued -= 1
            self._active += 1
        if slot.cancelled:
            raise TaskFailedError("cancelled by the submitter")
        self.check_disk()

    def finish(self, slot: TaskSlot, succeeded: bool = False) -> None:
        """Give back the task's slot (or its place in the queue); the query is forgotten with its last task.

        A cancelled query is remembered until :data:`CANCEL_MEMORY_SECONDS` after its cancel, so that
        its late tasks are refused.
        """
        query_id = slot.query_id
        with self._lock:
            if slot.running:
                self._active -= 1
            else:
                self._queued -= 1
            self._running[query_id] -= 1
            if not self._running[query_id]:
                del self._running[query_id]
                if not slot.cancelled:
                    self._cancels.pop(query_id, None)
            if succeeded:
                self.tasks_run += 1
        if slot.running:
            self._slots.release()

    def cancel(self, query_id: str) -> None:
        """Mark the query cancelled: its running tasks see it, its queued and later tasks are refused."""
        with self._lock:
            self._cancels.setdefault(query_id, threading.Event()).set()
            self._cancelled_at[query_id] = self._clock()
            now = self._clock()
            for old in [q for q, t in self._cancelled_at.items() if now - t > CANCEL_MEMORY_SECONDS]:
                self._cancelled_at.pop(old, None)
                if old not in self._running:
                    self._cancels.pop(old, None)

    def busy(self, query_id: str) -> bool:
        """Whether a task of ``query_id`` is queued or running here."""
        with self._lock:
            return query_id in self._running

    def check_disk(self) -> None:
        """Refuse a task while the work dir holds more than ``max_disk``.

        Raises:
            TaskFailedError: the work dir is over the limit.
        """
        limit = self.max_disk
        if limit is not None and (used := self._disk_used()) > limit:
            raise TaskFailedError(
                f"work dir full: {used / 1e6:.0f} MB held, --max-disk is {limit / 1e6:.0f} MB "
                "(raise it, add peers, or wait for running queries to finish)"
            )

    def saturated(self) -> bool:
        """Whether every slot is busy and tasks are waiting."""
        return self._active >= self.max_tasks and self._queued > 0
