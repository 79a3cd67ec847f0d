"""What a worker counts: Prometheus metrics, the queries it ran tasks for, what its peers last said.

Everything here is in memory and bounded: running queries plus the last :data:`RECENT_QUERIES`
finished ones, a fixed set of metric series, one entry per ``--peers`` address. Views are plain
JSON-able dicts (the shapes of ``/api/status`` and ``/api/queries``, see ``worker/http.py``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from ematix_flow.transport.messages import SQL_INFO_CHARS, PeerInfo

#: Finished queries kept for status pages (running ones are all kept).
RECENT_QUERIES = 50
#: Running queries tracked at most; past it the oldest one with no task running here is closed.
MAX_ACTIVE_QUERIES = 1000
#: Stages and inputs per stage taken from a task's ``info`` (the rest is ignored).
MAX_STAGES = 1000
MAX_STAGE_INPUTS = 64
STAGE_KINDS = ("shuffle", "gather", "root")
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

QueryState = Literal["running", "done", "failed", "cancelled"]
TaskOutcome = Literal["done", "failed", "cancelled"]
PeerState = Literal["up", "down", "unknown"]


class ProcessMeter:
    """RSS and CPU use of this process.

    CPU is sampled at most once a second: psutil measures between calls, so more often would only
    shorten the interval.
    """

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._cpu = self._process.cpu_percent(None)  # the first call starts the interval
        self._at = time.monotonic()

    def memory_bytes(self) -> int:
        """Resident set size, in bytes."""
        return int(self._process.memory_info().rss)

    def cpu_percent(self) -> float:
        """CPU use since the previous sample (100 = one core busy)."""
        with self._lock:
            if time.monotonic() - self._at >= 1.0:
                self._cpu = float(self._process.cpu_percent(None))
                self._at = time.monotonic()
            return float(self._cpu)


class Metrics:
    """The Prometheus series of one worker, in a registry of its own (several workers may share a process)."""

    def __init__(self, meter: ProcessMeter) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series (process-wide)
        self.registry = CollectorRegistry()
        reg = self.registry
        self.tasks_running = Gauge("flow_tasks_running", "Tasks running on this worker now", registry=reg)
        self.tasks_queued = Gauge("flow_tasks_queued", "Tasks waiting for a --max-tasks slot", registry=reg)
        self.tasks = Counter("flow_tasks", "Tasks ended on this worker, by outcome", ["state"], registry=reg)
        self.task_seconds = Histogram(
            "flow_task_seconds",
            "Wall time of tasks that completed, by the kind of their stage",
            ["stage_kind"],
            buckets=TASK_BUCKETS,
            registry=reg,
        )
        self.shuffle_bytes = Counter(
            "flow_shuffle_bytes",
            "Shuffle bytes over Flight: in = fetched by tasks here, out = served to other peers",
            ["direction"],
            registry=reg,
        )
        memory = Gauge("flow_memory_bytes", "Resident memory of this worker process", registry=reg)
        memory.set_function(meter.memory_bytes)
        cpu = Gauge("flow_cpu_percent", "CPU use of this worker process (100 = one core)", registry=reg)
        cpu.set_function(meter.cpu_percent)
        self.peers_up = Gauge("flow_peers_up", "--peers entries that answered the last hello", registry=reg)
        self.flight_sql = Counter(
            "flow_flight_sql_requests",
            "Flight SQL requests, by RPC and command or action (names of the specification, else other)",
            ["rpc", "command"],
            registry=reg,
        )
        for outcome in ("done", "failed", "cancelled"):
            self.tasks.labels(state=outcome)
        for direction in ("in", "out"):
            self.shuffle_bytes.labels(direction=direction)
        for kind in ("shuffle", "gather"):
            self.task_seconds.labels(stage_kind=kind)


# ----------------------------------------------------------------------------------- queries
@dataclass
class _Stage:
    id: int
    kind: str
    inputs: list[int]
    done: int = 0
    running: int = 0
    failed: int = 0
    cancelled: int = 0
    rows: int = 0
    bytes: int = 0


@dataclass
class _Query:
    id: str
    sql: str
    submitter: str
    started: float  # unix seconds: its first task arrived here
    stages: dict[int, _Stage]
    ended: float | None = None
    state: QueryState = "running"
    errors: int = 0  # tasks that failed with an error the submitter does not retry
    touched: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> int:
        return sum(s.running for s in self.stages.values())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_stages(info: object) -> dict[int, _Stage]:
    """The stage list of a task's ``info``; malformed entries are skipped (it is for display only)."""
    raw = info.get("stages") if isinstance(info, dict) else None
    out: dict[int, _Stage] = {}
    for s in raw[:MAX_STAGES] if isinstance(raw, list) else []:
        if not isinstance(s, dict) or not _is_int(s.get("id")) or not 0 <= s["id"] < 1 << 31:
            continue
        kind = s.get("kind") if s.get("kind") in STAGE_KINDS else "unknown"
        inputs = s.get("inputs")
        ids = [i for i in inputs[:MAX_STAGE_INPUTS] if _is_int(i)] if isinstance(inputs, list) else []
        out[s["id"]] = _Stage(s["id"], str(kind), ids)
    return out


def parse_sql(info: object) -> str:
    """The SQL text of a task's ``info`` ("" when absent), at most SQL_INFO_CHARS long."""
    sql = info.get("sql") if isinstance(info, dict) else None
    return sql[:SQL_INFO_CHARS] if isinstance(sql, str) else ""


class QueryLog:
    """The queries this worker ran tasks for: their stages' task counts, rows and bytes; thread-safe."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._lock = threading.Lock()
        self._active: dict[str, _Query] = {}
        self._recent: OrderedDict[str, _Query] = OrderedDict()

    def task_started(self, query_id: str, stage: int, info: object, submitter: str) -> str:
        """Count a task of ``stage`` as running; returns the kind of its stage."""
        with self._lock:
            q = self._active.get(query_id)
            if q is None and (q := self._recent.get(query_id)) is None:
                self._make_room()
                q = _Query(query_id, parse_sql(info), submitter, time.time(), parse_stages(info))
                self._active[query_id] = q
            elif q.state != "running" and q.state != "cancelled":  # released, then asked again: reopen
                del self._recent[query_id]
                q.state, q.ended = "running", None
                self._active[query_id] = q
            q.touched = time.monotonic()
            st = q.stages.setdefault(stage, _Stage(stage, "unknown", []))
            st.running += 1
            return st.kind

    def task_ended(
        self,
        query_id: str,
        stage: int,
        outcome: TaskOutcome,
        rows: int = 0,
        nbytes: int = 0,
        retried: bool = False,
    ) -> None:
        """A task ended: ``retried`` failures (a peer was unreachable) do not fail the query."""
        with self._lock:
            q = self._active.get(query_id) or self._recent.get(query_id)
            if q is None:
                return
            q.touched = time.monotonic()
            st = q.stages.setdefault(stage, _Stage(stage, "unknown", []))
            st.running = max(0, st.running - 1)
            if outcome == "done":
                st.done += 1
                st.rows += rows
                st.bytes += nbytes
            elif outcome == "cancelled":
                st.cancelled += 1
            else:
                st.failed += 1
                q.errors += 0 if retried else 1

    def finish(self, query_id: str, how: Literal["release", "cancel", "expire"]) -> None:
        """The submitter released (or cancelled) the query, or nobody did for too long."""
        with self._lock:
            q = self._active.pop(query_id, None) or self._recent.pop(query_id, None)
            if q is None:
                return  # a release reaches every peer, also those that ran nothing of it
            self._close(q, how)

    def expire(self, idle_seconds: float) -> None:
        """Close running queries with no task here and no news for ``idle_seconds``."""
        now = time.monotonic()
        with self._lock:
            for q in [q for q in self._active.values() if not q.running and now - q.touched > idle_seconds]:
                del self._active[q.id]
                self._close(q, "expire")

    def _close(self, q: _Query, how: str) -> None:
        if how == "cancel":
            q.state = "cancelled"
        elif q.state != "cancelled":
            q.state = "failed" if q.errors or how == "expire" else "done"
        q.ended = q.ended or time.time()
        self._recent[q.id] = q
        while len(self._recent) > RECENT_QUERIES:
            self._recent.popitem(last=False)

    def _make_room(self) -> None:
        if len(self._active) < MAX_ACTIVE_QUERIES:
            return
        idle = [q for q in self._active.values() if not q.running]
        if idle:
            oldest = min(idle, key=lambda q: q.touched)
            del self._active[oldest.id]
            self._close(oldest, "expire")

    def views(self) -> list[dict[str, Any]]:
        """Every query (running, then the recent ones), newest first, as ``/api/queries`` entries."""
        with self._lock:
            queries = [*self._active.values(), *self._recent.values()]
            out = [self._view(q) for q in queries]
        return sorted(out, key=lambda v: (v["state"] == "running", v["started"]), reverse=True)

    def _view(self, q: _Query) -> dict[str, Any]:
        stages = [
            {
                "id": s.id,
                "kind": s.kind,
                "inputs": list(s.inputs),
                "tasks": {"done": s.done, "running": s.running, "failed": s.failed, "cancelled": s.cancelled},
                "rows": s.rows,
                "bytes": s.bytes,
                "peers": [self.address] if s.done or s.running or s.failed or s.cancelled else [],
            }
            for s in sorted(q.stages.values(), key=lambda s: s.id)
        ]
        end = q.ended if q.ended is not None else time.time()
        return {
            "id": q.id,
            "sql": q.sql,
            "submitter": q.submitter,
            "state": q.state,
            "started": q.started,
            "ended": q.ended,
            "elapsed_seconds": max(0.0, end - q.started),
            "rows": sum(s.rows for s in q.stages.values()),
            "bytes": sum(s.bytes for s in q.stages.values()),
            "peers": [self.address],
            "peers_asked": [self.address],
            "peers_unreachable": [],
            "stages": stages,
        }


# ----------------------------------------------------------------------------------- peers
def _reachable(url: str, dialled: str) -> str:
    """A peer's HTTP URL, its wildcard host (0.0.0.0, ::) replaced by the host we reach it at."""
    scheme, sep, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    if not sep or host not in ("0.0.0.0", "[::]", "::"):
        return url
    return f"{scheme}://{dialled.rpartition(':')[0]}:{port}"


@dataclass
class _Peer:
    state: PeerState = "unknown"
    seen: float | None = None  # time.monotonic() of its last answer
    info: PeerInfo | None = None


class PeerBook:
    """What each ``--peers`` entry answered to the last hello, and when; thread-safe."""

    def __init__(self, peers: list[str]) -> None:
        self._lock = threading.Lock()
        self._peers = {p: _Peer() for p in peers}

    def answered(self, peer: str, info: PeerInfo) -> PeerState:
        """Record an answer; returns the peer's previous state."""
        with self._lock:
            p = self._peers.setdefault(peer, _Peer())
            before = p.state
            p.state, p.seen, p.info = "up", time.monotonic(), info
            return before

    def failed(self, peer: str) -> PeerState:
        """Record a hello that got no answer; returns the peer's previous state."""
        with self._lock:
            p = self._peers.setdefault(peer, _Peer())
            before = p.state
            p.state = "down"
            return before

    def down(self) -> list[str]:
        """Peers whose last hello failed, sorted."""
        with self._lock:
            return sorted(a for a, p in self._peers.items() if p.state == "down")

    def unseen(self) -> bool:
        """Whether some peer never answered yet."""
        with self._lock:
            return any(p.seen is None for p in self._peers.values())

    def up(self) -> int:
        """How many peers answered their last hello."""
        with self._lock:
            return sum(p.state == "up" for p in self._peers.values())

    def views(self) -> list[dict[str, Any]]:
        """Each peer as an ``/api/status`` entry, in ``--peers`` order."""
        now = time.monotonic()
        with self._lock:
            return [
                {
                    "address": address,
                    "name": p.info.name if p.info else "",
                    "state": p.state,
                    "last_seen_seconds": None if p.seen is None else max(0.0, now - p.seen),
                    "tasks_running": p.info.tasks_running if p.info else 0,
                    "tasks_queued": p.info.tasks_queued if p.info else 0,
                    "version": p.info.version if p.info else "",
                    "http": _reachable(p.info.http, address) if p.info else "",
                }
                for address, p in self._peers.items()
            ]
