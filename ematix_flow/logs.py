"""Log set-up for ``flow-worker``: text or JSON lines, each line of a task tagged with its ids.

A task's thread runs inside :func:`task_context`; a filter copies the query id, stage and task from
that context onto every record logged meanwhile, whichever module logs it.

Example:
    >>> setup_logging("info", "json")  # doctest: +SKIP
    >>> with task_context("9f2c...", stage=2, task=0):  # doctest: +SKIP
    ...     logging.getLogger("x").info("done")  # {"ts": ..., "query_id": "9f2c...", "stage": 2, ...}
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

LogFormat = Literal["text", "json"]
_TASK: contextvars.ContextVar[tuple[str, int, int] | None] = contextvars.ContextVar("flow_task", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(task_prefix)s%(message)s"


@contextmanager
def task_context(query_id: str, stage: int, task: int) -> Iterator[None]:
    """Tag every log record of this thread with the task's ids until the block ends."""
    token = _TASK.set((query_id, stage, task))
    try:
        yield
    finally:
        _TASK.reset(token)


class TaskFilter(logging.Filter):
    """Adds ``query_id``, ``stage``, ``task`` and ``task_prefix`` to every record (empty outside tasks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag the record (it is always kept)."""
        ids = _TASK.get()
        record.query_id, record.stage, record.task = ids if ids else ("", -1, -1)
        record.task_prefix = f"query={ids[0]} stage={ids[1]} task={ids[2]}: " if ids else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the task's ids when in one, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "query_id", ""):
            out.update({k: getattr(record, k) for k in ("query_id", "stage", "task")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` ("debug", "info", ...) as text lines or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TaskFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
