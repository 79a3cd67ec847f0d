"""CPU affinity of whole processes (every thread), for the scaling run.

``os.sched_setaffinity(pid, cpus)`` on Linux applies to one thread only (the thread whose id is
``pid``); threads created later inherit their creator's mask. A process already running a thread
pool is pinned by applying the mask to every thread listed in ``/proc/PID/task``, like
``taskset -a -p``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["affinity", "pin_process", "pinning_problem"]

_PASSES = 3  # threads may start while we walk the list: walk it again until it is stable


def _threads(pid: int) -> set[int]:
    try:
        return {int(name) for name in os.listdir(f"/proc/{pid}/task")}
    except FileNotFoundError:
        return set()


def pin_process(pid: int, cpus: Iterable[int]) -> int:
    """Restrict every thread of process ``pid`` to ``cpus``; returns how many threads were pinned.

    Raises:
        OSError: the kernel refused (e.g. a CPU outside the machine's set).
    """
    mask = set(cpus)
    done: set[int] = set()
    for _ in range(_PASSES):
        todo = _threads(pid) - done
        if not todo:
            break
        for tid in todo:
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, mask)
            done.add(tid)
    return len(done)


def affinity(pid: int = 0) -> set[int]:
    """The CPUs thread/process ``pid`` may run on (0: the calling thread)."""
    return set(os.sched_getaffinity(pid))


def pinning_problem(cpus: Iterable[int]) -> str | None:
    """Why ``cpus`` cannot be pinned here (None when they can)."""
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/self/task").is_dir():
        return "CPU pinning needs Linux (os.sched_setaffinity and /proc)"
    missing = set(cpus) - affinity(0)
    if missing:
        return f"CPUs {sorted(missing)} are not available to this process (have {sorted(affinity(0))})"
    return None
