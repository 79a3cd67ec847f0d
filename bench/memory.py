"""Peak resident memory (RSS) of a few processes, sampled in a background thread.

Example:
    >>> with RssSampler(0.05) as sampler:  # doctest: +SKIP
    ...     with sampler.window({"bench": os.getpid()}) as peaks:
    ...         run_query()
    ...     peaks["bench"].delta_bytes
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import psutil

__all__ = ["MemoryPeak", "RssSampler"]


@dataclass
class MemoryPeak:
    """One process's RSS over a window (or the worst over several windows, see :meth:`merge`).

    ``delta_bytes`` is the peak minus the RSS when the window opened: what running the query added.
    """

    peak_bytes: int
    delta_bytes: int
    samples: int

    def merge(self, other: MemoryPeak) -> MemoryPeak:
        """The worst of both: largest peak, largest growth; samples add up."""
        return MemoryPeak(
            max(self.peak_bytes, other.peak_bytes),
            max(self.delta_bytes, other.delta_bytes),
            self.samples + other.samples,
        )


class _Window:
    def __init__(self, pids: Mapping[str, int]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        self.start: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.samples: dict[str, int] = {}
        for label, pid in pids.items():
            try:
                proc = psutil.Process(pid)
                rss = int(proc.memory_info().rss)
            except psutil.Error:
                continue
            self.procs[label], self.start[label], self.peak[label] = proc, rss, rss
            self.samples[label] = 1

    def sample(self) -> None:
        for label, proc in self.procs.items():
            try:
                rss = int(proc.memory_info().rss)
            except psutil.Error:
                continue
            self.samples[label] += 1
            if rss > self.peak[label]:
                self.peak[label] = rss

    def result(self) -> dict[str, MemoryPeak]:
        return {
            label: MemoryPeak(self.peak[label], self.peak[label] - self.start[label], self.samples[label])
            for label in self.procs
        }


class RssSampler:
    """Samples the RSS of the processes of the open window every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._active: _Window | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._active is not None:
                    self._active.sample()

    @contextmanager
    def window(self, pids: Mapping[str, int]) -> Iterator[dict[str, MemoryPeak]]:
        """Sample ``pids`` (label -> pid) until the block ends; the yielded dict is filled then.

        One sample is taken when the window opens (the baseline) and one when it closes, so a
        window shorter than the interval still has a peak.
        """
        window = _Window(pids)
        peaks: dict[str, MemoryPeak] = {}
        with self._lock:
            self._active = window
        try:
            yield peaks
        finally:
            with self._lock:
                self._active = None
                window.sample()
            peaks.update(window.result())
