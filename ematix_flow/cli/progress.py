"""A live view of a running query on the terminal: one row per stage, on stderr, gone when it ends.

Shown only when stderr is a terminal (never in pipes, files or CI logs), so scripts reading stderr
see the same lines as before; ``--quiet`` turns it off.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TextIO

import pyarrow as pa
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from ematix_flow.coordinator_lib.progress import ProgressHook, QueryProgress, StageProgress

BAR_WIDTH = 24


def count_text(n: int) -> str:
    """A count for people: ``950``, ``12.3k``, ``1.2M``, ``3.4G``."""
    if n < 1000:
        return str(n)
    unit, scale = next(((u, x) for u, x in (("k", 1e3), ("M", 1e6)) if n < x * 999.95), ("G", 1e9))
    return f"{n / scale:.1f}{unit}"


def stage_counts(s: StageProgress) -> str:
    """``5/8 tasks (3 running), 1.2M rows`` (and failed launches, if any)."""
    if not s.tasks:
        return ""
    text = f"{s.done}/{s.tasks} tasks"
    if s.running:
        text += f" ({s.running} running)"
    text += f", {count_text(s.rows)} rows"
    if s.failed:
        text += f", {s.failed} failed"
    return text


class _Bar(ProgressColumn):
    """The bar of a started stage; ``waiting`` for a stage whose inputs are not complete yet."""

    def __init__(self) -> None:
        super().__init__()
        self._bar = BarColumn(bar_width=BAR_WIDTH, complete_style="cyan", finished_style="green")

    def render(self, task: Task) -> RenderableType:
        """The bar, or the word ``waiting``."""
        if task.total is None:
            return Text("waiting".ljust(BAR_WIDTH), style="dim")
        return self._bar.render(task)


class StageDisplay(Progress):
    """A transient rich display of a query's stages, fed ``QueryProgress`` snapshots by ``show``."""

    def __init__(self, console: Console) -> None:
        self._ids: dict[int, TaskID] = {}
        self._query = ""
        self._t0 = time.perf_counter()
        self._rows = 0
        self._stages = 0
        self._done = 0
        super().__init__(
            TextColumn("stage {task.fields[stage]:>2} {task.fields[kind]:<7}"),
            _Bar(),
            TextColumn("{task.fields[counts]}"),
            console=console,
            transient=True,
            redirect_stdout=False,  # the result goes to stdout, never through the display
            redirect_stderr=True,  # other stderr lines print above the display
        )

    def show(self, snap: QueryProgress) -> None:
        """Take a new snapshot (a query re-planned under a new id starts over)."""
        if snap.query_id != self._query:
            for tid in self._ids.values():
                self.remove_task(tid)
            self._ids, self._query = {}, snap.query_id
        self._t0 = time.perf_counter() - snap.elapsed
        self._rows, self._stages = snap.rows, len(snap.stages)
        self._done = sum(s.finished for s in snap.stages)
        for s in snap.stages:
            if s.stage not in self._ids:
                self._ids[s.stage] = self.add_task("", total=None, stage=s.stage, kind=s.kind, counts="")
            tid = self._ids[s.stage]
            self.update(tid, total=s.tasks or None, completed=s.done, counts=stage_counts(s))

    def header(self) -> Text:
        """``query 4a362df8: 1.4s, 3/8 stages done, 0 result rows``."""
        if not self._query:
            return Text("starting the query ...", style="dim")
        elapsed = time.perf_counter() - self._t0
        where = f"{self._done}/{self._stages} stages done" if self._stages else "in-process"
        return Text(f"query {self._query[:8]}: {elapsed:.1f}s, {where}, {count_text(self._rows)} result rows")

    def get_renderables(self) -> Iterable[RenderableType]:
        """The header line, then one row per stage."""
        yield self.header()
        yield self.make_tasks_table(self.tasks)


class TerminalProgress:
    """The ``flow sql`` progress display: a no-op unless enabled and ``stream`` is a terminal.

    Use as a context manager; pass ``hook`` to ``Mesh.sql_batches(..., progress=)``.
    """

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        on = enabled and stream.isatty()
        self.display = StageDisplay(Console(file=stream)) if on else None
        self._stream = stream
        self._handlers: list[logging.StreamHandler[TextIO]] = []

    @property
    def hook(self) -> ProgressHook | None:
        """The progress callback (None when there is no display)."""
        return self.display.show if self.display is not None else None

    def __enter__(self) -> TerminalProgress:
        if self.display is not None:
            self.display.start()
            self._log_above()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the display (idempotent)."""
        if self.display is None:
            return
        for h in self._handlers:
            h.setStream(self._stream)
        self._handlers = []
        self.display.stop()
        self.display = None

    def until_output(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``batches``, removing the display before the first is written (to a terminal on stdout)."""
        for batch in batches:
            self.close()
            yield batch

    def _log_above(self) -> None:
        """Log lines meant for the terminal go through the display's redirected stderr."""
        for h in logging.getLogger().handlers:
            if (
                isinstance(h, logging.StreamHandler)
                and h.stream is self._stream
                and sys.stderr is not self._stream
            ):
                h.setStream(sys.stderr)
                self._handlers.append(h)
