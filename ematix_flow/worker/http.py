"""The worker's HTTP side (``flow-worker --http HOST:PORT``): health, readiness, metrics, status JSON.

``/api/queries`` merges this worker's view with its ``--peers``' (Flight action ``status``): a
query's tasks are spread over the mesh, so each worker alone sees only its share. Every response
is a pydantic model, so ``/openapi.json`` describes exactly what is served. Off loopback the
server speaks mutual TLS with the worker's own certificate material and serves only identities
the worker's ``--allow-peer`` list allows; on loopback it is plain HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, cast

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from ematix_flow import __version__
from ematix_flow.errors import AccessDeniedError, ConfigError, first_line

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
QueryState = Literal["running", "done", "failed", "cancelled"]
StageKind = Literal["shuffle", "gather", "root", "unknown"]
Scope = Annotated[
    Literal["mesh", "local"],
    Query(description="mesh: merged with the views of this worker's --peers; local: its own only"),
]
_SEVERITY = {"done": 0, "running": 1, "cancelled": 2, "failed": 3}  # the merged state is the worst one


# ----------------------------------------------------------------------------------- models
class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    """Whether the worker takes tasks now, and why not."""

    ready: bool
    reason: str | None = None


class Load(BaseModel):
    """What the worker is doing now."""

    tasks_running: int
    tasks_queued: int
    max_tasks: int
    cpu_percent: float
    memory_bytes: int
    work_dir_bytes: int


class PeerView(BaseModel):
    """One ``--peers`` entry as its last hello found it."""

    address: str
    name: str
    state: Literal["up", "down", "unknown"]
    last_seen_seconds: float | None = Field(description="Seconds since it last answered; null: never")
    tasks_running: int
    tasks_queued: int = 0
    version: str = ""
    http: str = Field("", description="Its own HTTP API, when it serves one")


class Status(BaseModel):
    """Who this worker is and how busy it is."""

    name: str
    address: str
    instance: str = Field("", description="Random id of this worker process")
    version: str
    datafusion_version: str
    uptime_seconds: float
    http: str = ""
    load: Load
    peers: list[PeerView]
    tables: list[str] = Field(default_factory=list, description="Its catalog: --table and --tables-dir names")


class TaskCounts(BaseModel):
    """Tasks of a stage by state (tasks re-run after a failure count again)."""

    done: int = 0
    running: int = 0
    failed: int = 0
    cancelled: int = 0


class StageView(BaseModel):
    """One stage of a query: its tasks, and the rows and bytes they wrote."""

    id: int
    kind: StageKind
    inputs: list[int]
    tasks: TaskCounts
    rows: int
    bytes: int
    peers: list[str] = Field(description="Peers that ran a task of it")


class QueryView(BaseModel):
    """A query as the asked workers saw it (the root stage runs on the submitter: no tasks here)."""

    id: str
    sql: str
    submitter: str = Field(description="Certificate identity of whoever sent its tasks")
    state: QueryState
    started: float = Field(description="Unix seconds: its first task reached a worker")
    ended: float | None = None
    elapsed_seconds: float
    rows: int
    bytes: int
    peers: list[str] = Field(default_factory=list, description="Workers that ran tasks of it")
    peers_asked: list[str]
    peers_unreachable: list[str]
    stages: list[StageView]


class QueryList(BaseModel):
    """Running queries and the recent finished ones, newest first."""

    queries: list[QueryView]
    peers_asked: list[str] = Field(default_factory=list)
    peers_unreachable: list[str] = Field(default_factory=list)


class PeerStatus(BaseModel):
    """The answer to the Flight action ``status``: one worker's own view."""

    status: Status
    queries: list[QueryView]


class ErrorDetail(BaseModel):
    """An error, in FastAPI's usual shape."""

    detail: str


# ----------------------------------------------------------------------------------- merging
def merge_queries(
    sources: list[tuple[str, list[QueryView]]], asked: list[str], unreachable: list[str], now: float
) -> list[QueryView]:
    """One view per query id: task counts, rows and bytes summed over the workers that saw it."""
    parts: dict[str, list[tuple[str, QueryView]]] = {}
    for address, views in sources:
        for view in views:
            parts.setdefault(view.id, []).append((address, view))
    merged = [_merge_one(p, asked, unreachable, now) for p in parts.values()]
    return sorted(merged, key=lambda q: (q.state == "running", q.started), reverse=True)


def _merge_one(
    parts: list[tuple[str, QueryView]], asked: list[str], unreachable: list[str], now: float
) -> QueryView:
    views = [v for _, v in parts]
    state = max((v.state for v in views), key=lambda s: _SEVERITY[s])
    started = min(v.started for v in views)
    ended = None if state == "running" else max(v.ended or now for v in views)
    stages: dict[int, StageView] = {}
    for address, view in parts:
        for s in view.stages:
            m = stages.setdefault(
                s.id,
                StageView(
                    id=s.id, kind=s.kind, inputs=s.inputs, tasks=TaskCounts(), rows=0, bytes=0, peers=[]
                ),
            )
            if m.kind == "unknown":
                m.kind, m.inputs = s.kind, m.inputs or s.inputs
            for key in ("done", "running", "failed", "cancelled"):
                setattr(m.tasks, key, getattr(m.tasks, key) + getattr(s.tasks, key))
            m.rows += s.rows
            m.bytes += s.bytes
            if s.peers and address not in m.peers:
                m.peers.append(address)
    return QueryView(
        id=views[0].id,
        sql=next((v.sql for v in views if v.sql), ""),
        submitter=next((v.submitter for v in views if v.submitter), ""),
        state=state,
        started=started,
        ended=ended,
        elapsed_seconds=max(0.0, (now if ended is None else ended) - started),
        rows=sum(v.rows for v in views),
        bytes=sum(v.bytes for v in views),
        peers=[a for a, _ in parts],
        peers_asked=asked,
        peers_unreachable=unreachable,
        stages=[stages[k] for k in sorted(stages)],
    )


# ----------------------------------------------------------------------------------- the app
class StatusSource(Protocol):
    """What the HTTP side reads from its worker (``worker/status.py``'s ``StatusViews`` implements it)."""

    address: str
    instance: str

    def status_view(self) -> dict[str, Any]:
        """``/api/status`` as a dict."""

    def query_views(self) -> list[dict[str, Any]]:
        """This worker's own queries, newest first."""

    def ask_peers(self) -> tuple[dict[str, bytes], list[str]]:
        """``status`` answers of the reachable ``--peers``, and the peers that did not answer."""

    def readiness(self) -> str:
        """Why it takes no tasks now ("" when it does)."""

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of its metrics."""


def create_app(worker: StatusSource) -> FastAPI:
    """The FastAPI app of one worker: the API, then the status page's static files at ``/``."""
    app = FastAPI(
        title="flow-worker",
        version=__version__,
        description="Health, readiness, Prometheus metrics and query status of one ematix-flow worker.",
    )

    def local() -> list[QueryView]:
        return [QueryView.model_validate(v) for v in worker.query_views()]

    def mesh() -> QueryList:
        answers, unreachable = worker.ask_peers()
        sources = [(worker.address, local())]
        seen = {worker.instance}
        for peer, body in answers.items():
            try:
                answer = PeerStatus.model_validate_json(body)
            except ValidationError as exc:
                log.warning("peer %s answered status with a malformed view: %s", peer, first_line(exc))
                unreachable.append(peer)
                continue
            instance = answer.status.instance
            if instance and instance in seen:  # a worker listed twice (or in its own --peers) counts once
                continue
            seen.add(instance)
            sources.append((peer, answer.queries))
        asked = [worker.address, *answers, *unreachable]
        merged = merge_queries(sources, asked, sorted(unreachable), time.time())
        return QueryList(queries=merged, peers_asked=asked, peers_unreachable=sorted(unreachable))

    def queries(scope: str) -> QueryList:
        if scope == "local":
            return QueryList(queries=local(), peers_asked=[worker.address])
        return mesh()

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """The process answers."""
        return Health()

    @app.get(
        "/readyz",
        response_model=Ready,
        response_model_exclude_none=True,
        responses={503: {"model": Ready, "description": "Not taking tasks now"}},
        tags=["health"],
    )
    def readyz() -> Any:
        """200 while it takes tasks; 503 with a reason while shutting down, out of disk or saturated."""
        reason = worker.readiness()
        if reason:
            return JSONResponse(Ready(ready=False, reason=reason).model_dump(), status_code=503)
        return Ready(ready=True)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        tags=["metrics"],
    )
    def metrics() -> Response:
        """Prometheus text format."""
        return Response(worker.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/status", response_model=Status, tags=["status"])
    def status() -> Status:
        """Identity, version, load, and the state of every ``--peers`` entry."""
        return Status.model_validate(worker.status_view())

    @app.get("/api/queries", response_model=QueryList, tags=["status"])
    def list_queries(scope: Scope = "mesh") -> QueryList:
        """Running queries and the last finished ones, newest first."""
        return queries(scope)

    @app.get(
        "/api/queries/{query_id}",
        response_model=QueryView,
        responses={404: {"model": ErrorDetail, "description": "No such query (or long forgotten)"}},
        tags=["status"],
    )
    def one_query(
        query_id: Annotated[str, PathParam(pattern="^[0-9a-f]{8,64}$")], scope: Scope = "mesh"
    ) -> QueryView:
        """One query by id."""
        found = next((q for q in queries(scope).queries if q.id == query_id), None)
        if found is None:
            raise HTTPException(404, f"no query {query_id} on the asked workers (unknown, or long finished)")
        return found

    if STATIC_DIR.is_dir():  # after the API: "/" serves the status page
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


# ----------------------------------------------------------------------------------- serving
@dataclass(frozen=True)
class TLSFiles:
    """The worker's PEM files: its CA, certificate and key (from --tls-dir)."""

    ca: Path
    cert: Path
    key: Path


def first_san(cert: dict[str, Any]) -> str:
    """A peer certificate's identity as gRPC reports it: its first subjectAltName (else its CN)."""
    for _kind, value in cert.get("subjectAltName", ()):
        return str(value)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _guarded(check_peer: Callable[[str], None]) -> type[H11Protocol]:
    """An h11 protocol that answers 403 on every request of a connection whose identity is refused."""

    class Guarded(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            identity = first_san(ssl_object.getpeercert() or {}) if ssl_object is not None else ""
            try:
                check_peer(identity)
            except AccessDeniedError as exc:
                log.warning("refused HTTP from %s (identity %r): not allowed", self.client, identity)
                forbidden: ASGIApp = JSONResponse({"detail": f"AccessDeniedError: {exc}"}, status_code=403)
                self.app = cast(Any, forbidden)

    return Guarded


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on HOST:PORT (port 0: any), so a taken port fails here, not in a thread."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn serving an app on one socket from a daemon thread; ``stop`` ends it."""

    def __init__(
        self, app: FastAPI, listen: str, tls: TLSFiles | None, check_peer: Callable[[str], None]
    ) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ConfigError(f"--http {listen!r} must be HOST:PORT")
        options: dict[str, Any] = {"http": "h11"}
        if tls is not None:
            options = {
                "http": _guarded(check_peer),
                "ssl_certfile": str(tls.cert),
                "ssl_keyfile": str(tls.key),
                "ssl_ca_certs": str(tls.ca),
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
            }
        config = uvicorn.Config(
            app,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            **options,
        )
        try:
            config.load()  # TLS files are read here, not in the thread
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--http {listen}: cannot load the TLS material: {exc}") from exc
        self._sock = _bind(host, int(port))
        bound = self._sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{shown}:{bound}"
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="http", daemon=True
        )

    def start(self, timeout: float = 10.0) -> None:
        """Serve; returns once uvicorn listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the HTTP server on {self.url} did not start")
            self._thread.join(0.01)

    def stop(self) -> None:
        """Stop serving (open connections get a short grace period)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._sock.close()
