"""What a worker allows itself: memory, concurrent tasks, how long unreleased files live."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerLimits:
    """Resource limits of one worker."""

    memory_limit: int | None = None  # bytes for DataFusion's memory pool (None: unbounded)
    max_tasks: int = 4  # tasks running at once; the rest wait their turn
    query_ttl: float = 3600.0  # seconds before an unreleased, idle query's files are removed
    max_disk: int | None = None  # bytes the work dir may hold; a task arriving above it is refused
