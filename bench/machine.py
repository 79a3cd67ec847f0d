"""Facts about the machine and the source tree that a benchmark result should carry."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

__all__ = ["cpu_model", "cpu_seconds", "git_state", "machine"]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first ``model name`` of ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Platform, CPU model, cores (and those usable here), memory, Python."""
    usable: int | None = os.cpu_count()
    with contextlib.suppress(AttributeError):
        usable = len(os.sched_getaffinity(0))
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_bytes": int(psutil.virtual_memory().total),
        "python": platform.python_version(),
    }


def git_state(root: Path | None = None) -> dict[str, Any]:
    """The commit checked out and whether the tree has uncommitted changes (None outside git)."""
    where = root or Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the machine has been busy, CPU seconds of this process and its descendants).

    Differences of two readings tell how much CPU other processes took meanwhile (someone running
    tests on the same machine). Steal time is left out: no process here used it.
    """
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    me = psutil.Process()
    ours = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            c = proc.cpu_times()
            ours += c.user + c.system + c.children_user + c.children_system
    return busy, ours
