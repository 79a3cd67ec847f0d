"""What a worker shows of itself: the ``status`` action, ``/api/status``, ``/api/queries``, ``/readyz``.

:class:`StatusViews` reads the worker's parts and never changes them; it is the
:class:`~ematix_flow.worker.http.StatusSource` the HTTP side is built on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import datafusion

from ematix_flow import __version__
from ematix_flow.errors import FlowError
from ematix_flow.transport.flight import ClientPool
from ematix_flow.worker.admission import Admission
from ematix_flow.worker.catalog import Catalog
from ematix_flow.worker.store import WorkStore
from ematix_flow.worker.telemetry import Metrics, PeerBook, ProcessMeter, QueryLog

log = logging.getLogger(__name__)

#: How long ``/api/queries`` waits for each peer's ``status`` answer.
STATUS_TIMEOUT = 2.0


class StatusViews:
    """The status of one worker as JSON-ready dicts, and its peers' answers for the mesh-wide views."""

    def __init__(
        self,
        *,
        name: str,
        address: str,
        peers: list[str],
        pool: ClientPool,
        admission: Admission,
        store: WorkStore,
        catalog: Catalog,
        peer_book: PeerBook,
        queries: QueryLog,
        metrics: Metrics,
        meter: ProcessMeter,
        stop: threading.Event,
    ) -> None:
        """Show the worker these parts belong to; ``stop`` is set when it shuts down."""
        self.name = name
        self.address = address
        self.instance = uuid.uuid4().hex  # tells this process apart when it is listed in its own --peers
        self.http_url = ""  # set once the HTTP side serves
        self.started = time.monotonic()
        self._peers = peers
        self._pool = pool
        self._admission = admission
        self._store = store
        self._catalog = catalog
        self._peer_book = peer_book
        self._queries = queries
        self._metrics = metrics
        self._meter = meter
        self._stop = stop
        self._disk = (0.0, 0)  # (time.monotonic(), bytes): work dir use, measured at most once a second
        self._asker = ThreadPoolExecutor(max_workers=8, thread_name_prefix="status")

    def work_dir_bytes(self) -> int:
        """Bytes the work dir holds for queries (measured at most once a second)."""
        at, used = self._disk
        if time.monotonic() - at >= 1.0:
            used = self._store.used_bytes()
            self._disk = (time.monotonic(), used)
        return used

    def readiness(self) -> str:
        """Why this worker takes no tasks now, "" when it does (for ``/readyz``)."""
        if self._stop.is_set():
            return "shutting down"
        limit = self._admission.max_disk
        if limit is not None and (used := self.work_dir_bytes()) > limit:
            return f"work dir holds {used:,} bytes, over --max-disk {limit:,}"
        if self._admission.saturated():
            max_tasks = self._admission.max_tasks
            return f"all {max_tasks} --max-tasks slots busy, {self._admission.queued} tasks queued"
        return ""

    def status_view(self) -> dict[str, Any]:
        """Who this worker is, its load and its peers (``/api/status``)."""
        return {
            "name": self.name,
            "address": self.address,
            "instance": self.instance,
            "version": __version__,
            "datafusion_version": datafusion.__version__,
            "uptime_seconds": time.monotonic() - self.started,
            "http": self.http_url,
            "load": {
                "tasks_running": self._admission.active,
                "tasks_queued": self._admission.queued,
                "max_tasks": self._admission.max_tasks,
                "cpu_percent": self._meter.cpu_percent(),
                "memory_bytes": self._meter.memory_bytes(),
                "work_dir_bytes": self.work_dir_bytes(),
            },
            "peers": self._peer_book.views(),
            "tables": self._catalog.names,
        }

    def query_views(self) -> list[dict[str, Any]]:
        """The queries this worker ran tasks for, newest first."""
        return self._queries.views()

    def status_answer(self) -> bytes:
        """The ``status`` action's answer: this worker's status and queries, as compact JSON."""
        answer = {"status": self.status_view(), "queries": self.query_views()}
        return json.dumps(answer, separators=(",", ":")).encode()

    def ask_peers(self) -> tuple[dict[str, bytes], list[str]]:
        """Every ``--peers`` entry's ``status`` answer, in parallel; down ones are not asked but listed."""
        down = set(self._peer_book.down())
        futures = {
            p: self._asker.submit(self._pool.action, p, "status", b"", STATUS_TIMEOUT)
            for p in self._peers
            if p not in down
        }
        answers: dict[str, bytes] = {}
        unreachable = sorted(down)
        for peer, future in futures.items():
            try:
                answers[peer] = future.result()
            except FlowError as exc:
                log.info("peer %s did not answer status: %s", peer, exc)
                unreachable.append(peer)
        return answers, unreachable

    def metrics_text(self) -> bytes:
        """Prometheus text format of this worker's metrics."""
        from prometheus_client import generate_latest

        return generate_latest(self._metrics.registry)

    def close(self) -> None:
        """Stop asking peers (calls in flight are abandoned)."""
        self._asker.shutdown(wait=False, cancel_futures=True)
