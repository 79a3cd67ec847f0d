"""Task admission without Flight or processes: slots, the queue, --max-disk, cancellation."""

from __future__ import annotations

import doctest
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ematix_flow.errors import TaskFailedError
from ematix_flow.worker import admission as admission_module
from ematix_flow.worker.admission import CANCEL_MEMORY_SECONDS, Admission, TaskSlot

QUERY = "ab12cd34"
OTHER = "ef56ab78"
TIMEOUT = 10.0


class _Start:
    """The outcome of ``admission.start(slot)`` called on a thread of its own."""

    def __init__(self) -> None:
        self.returned = threading.Event()
        self.error: BaseException | None = None


@contextmanager
def _starting(admission: Admission, slot: TaskSlot) -> Iterator[_Start]:
    """``admission.start(slot)`` on a thread; the thread must have returned when the block ends."""
    outcome = _Start()

    def start() -> None:
        try:
            admission.start(slot)
        except BaseException as exc:
            outcome.error = exc
        outcome.returned.set()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "start() still waiting for a slot"


def test_module_example_runs() -> None:
    result = doctest.testmod(admission_module, raise_on_error=True)
    assert result.attempted > 0


def test_tasks_beyond_max_tasks_queue_until_a_slot_frees() -> None:
    admission = Admission(max_tasks=2)
    first, second, third = (admission.queue(QUERY) for _ in range(3))
    assert (admission.active, admission.queued) == (0, 3)
    admission.start(first)
    admission.start(second)
    assert (admission.active, admission.queued) == (2, 1)
    assert admission.saturated()
    with _starting(admission, third) as outcome:
        assert not outcome.returned.wait(0.1), "a third task got one of two slots"
        assert not third.running
        admission.finish(first, succeeded=True)
        assert outcome.returned.wait(TIMEOUT), "the queued task never got the freed slot"
    assert outcome.error is None and third.running
    assert (admission.active, admission.queued) == (2, 0)
    assert not admission.saturated()
    admission.finish(second, succeeded=True)
    admission.finish(third, succeeded=False)
    assert (admission.active, admission.queued, admission.tasks_run) == (0, 0, 2)
    assert not admission.busy(QUERY)


def test_max_tasks_is_at_least_one() -> None:
    admission = Admission(max_tasks=0)
    assert admission.max_tasks == 1
    slot = admission.queue(QUERY)
    admission.start(slot)
    assert admission.active == 1
    admission.finish(slot)


def test_a_task_is_refused_while_the_work_dir_is_over_max_disk() -> None:
    used = [200_000_000]
    admission = Admission(max_tasks=1, max_disk=100_000_000, disk_used=lambda: used[0])
    slot = admission.queue(QUERY)
    with pytest.raises(TaskFailedError, match=r"work dir full: 200 MB held, --max-disk is 100 MB"):
        admission.start(slot)
    assert slot.running  # it held the slot while refused: finish gives it back
    admission.finish(slot)
    assert (admission.active, admission.queued, admission.tasks_run) == (0, 0, 0)
    used[0] = 50_000_000  # below the limit again: the one slot is free and tasks run
    slot = admission.queue(QUERY)
    admission.start(slot)
    admission.finish(slot, succeeded=True)
    assert admission.tasks_run == 1


def test_no_max_disk_never_measures_the_work_dir() -> None:
    def measure() -> int:
        raise AssertionError("measured without --max-disk")

    admission = Admission(max_tasks=1, disk_used=measure)
    slot = admission.queue(QUERY)
    admission.start(slot)
    admission.finish(slot)


def test_cancel_reaches_running_tasks_and_refuses_queued_ones() -> None:
    admission = Admission(max_tasks=1)
    running = admission.queue(QUERY)
    admission.start(running)
    queued = admission.queue(QUERY)
    other = admission.queue(OTHER)
    admission.cancel(QUERY)
    assert running.cancelled and queued.cancelled and not other.cancelled
    with _starting(admission, queued) as outcome:
        admission.finish(running)  # the running task stops at its next batch and gives back its slot
        assert outcome.returned.wait(TIMEOUT), "the queued task never got the freed slot"
    assert isinstance(outcome.error, TaskFailedError)
    assert "cancelled by the submitter" in str(outcome.error)
    admission.finish(queued)
    admission.start(other)  # another query's task runs as usual
    assert not other.cancelled
    admission.finish(other, succeeded=True)
    assert (admission.active, admission.queued, admission.tasks_run) == (0, 0, 1)


def test_a_task_of_a_cancelled_query_arriving_late_is_refused() -> None:
    admission = Admission(max_tasks=2)
    admission.cancel(QUERY)  # before any task of it arrived
    late = admission.queue(QUERY)
    with pytest.raises(TaskFailedError, match="cancelled by the submitter"):
        admission.start(late)
    admission.finish(late)
    again = admission.queue(QUERY)  # still remembered after its last task ended
    assert again.cancelled
    admission.finish(again)


def test_cancelled_queries_are_forgotten_after_the_memory_period() -> None:
    now = [1000.0]
    admission = Admission(max_tasks=1, clock=lambda: now[0])
    admission.cancel(QUERY)
    now[0] += CANCEL_MEMORY_SECONDS + 1
    admission.cancel(OTHER)  # a later cancel prunes the old ones
    assert not admission.queue(QUERY).cancelled
    assert admission.queue(OTHER).cancelled


def test_a_cancelled_query_with_a_task_still_running_is_not_forgotten() -> None:
    now = [1000.0]
    admission = Admission(max_tasks=1, clock=lambda: now[0])
    slot = admission.queue(QUERY)
    admission.start(slot)
    admission.cancel(QUERY)
    now[0] += CANCEL_MEMORY_SECONDS + 1
    admission.cancel(OTHER)
    assert admission.busy(QUERY)
    assert admission.queue(QUERY).cancelled  # its running task still sees the same event


def test_a_query_that_was_not_cancelled_is_forgotten_with_its_last_task() -> None:
    admission = Admission(max_tasks=2)
    first, second = admission.queue(QUERY), admission.queue(QUERY)
    assert first.cancel is second.cancel  # one event per query
    assert admission.busy(QUERY) and not admission.busy(OTHER)
    admission.finish(first)  # never started: leaves the queue
    assert admission.busy(QUERY)
    admission.start(second)
    admission.finish(second, succeeded=True)
    assert not admission.busy(QUERY)
    assert admission.queue(QUERY).cancel is not first.cancel
