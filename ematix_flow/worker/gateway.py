"""The coordinator role inside a worker: plan and drive the SQL that clients send to it, across the mesh.

A Flight SQL client (ADBC, JDBC, ``flow sql --via``) hands a peer a query; the peer's gateway plans it
with its own view of the data and drives it with :class:`~ematix_flow.coordinator_lib.mesh.Mesh` over
itself and its ``--peers``, connecting with the worker's own certificate (every peer's
``--allow-peer`` must name this worker, as it must anyway for shuffles). It keeps:

- **sessions**, keyed by the client's certificate identity and, when the client keeps cookies, its
  Flight SQL session id (``""``: the identity's shared session). A session that ran
  ``CREATE EXTERNAL TABLE`` plans on a Mesh of its own holding the catalog and its tables; the others
  share one. Sessions idle for ``session_ttl`` are closed.
- **statement handles**: 16 random bytes naming a planned statement, bound to the identity that made
  it, good for one DoGet, forgotten after ``statement_ttl`` when never fetched. Prepared statements
  are handles that last until closed (or idle that long).

Queries run read-only: DDL, DML and SET are refused rather than run by the planner, except
``CREATE EXTERNAL TABLE``, which registers a table for the session after a ``--data-root`` check.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ematix_flow.coordinator_lib.mesh import Mesh
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError, FlowError, QueryError
from ematix_flow.flightsql.ddl import CreateTable
from ematix_flow.transport.tls import TLSConfig
from ematix_flow.urls import is_url
from ematix_flow.worker.catalog import Catalog, Table
from ematix_flow.worker.policy import AccessPolicy

log = logging.getLogger(__name__)

STATEMENT_TTL = 600.0  # seconds an unfetched statement or an unused prepared statement is kept
SESSION_TTL = 3600.0  # seconds an idle session keeps its tables
MAX_HANDLES = 256  # statements and prepared statements one identity may hold at once
MAX_OWN_MESHES = 32  # sessions with tables of their own (each plans on a Mesh of its own)
MAX_OWN_MESHES_PER_IDENTITY = 8  # of those, per certificate identity: one client cannot take them all
MAX_SESSION_TABLES = 256
EMPTY = pa.schema([])

SessionKey = tuple[str, str]  # (certificate identity, Flight SQL session id or "")


@dataclass
class _Session:
    key: SessionKey
    tables: dict[str, Table] = field(default_factory=dict)  # its CREATE EXTERNAL TABLE registrations
    mesh: Mesh | None = None  # its own, once it has tables
    used: float = field(default_factory=time.monotonic)
    streams: int = 0  # results streaming now: a closed session's Mesh waits for them
    closed: bool = False


@dataclass
class Statement:
    """A statement a client may fetch (DoGet) or, when prepared, run again."""

    session: SessionKey
    sql: str
    schema: pa.Schema
    create: CreateTable | None  # a CREATE EXTERNAL TABLE (its result is empty)
    used: float = field(default_factory=time.monotonic)


class Gateway:
    """Runs clients' SQL on the mesh: sessions, statement handles, the catalog."""

    def __init__(
        self,
        peers: list[str],
        tls: TLSConfig | None,
        catalog: Catalog,
        policy: AccessPolicy,
        *,
        statement_ttl: float = STATEMENT_TTL,
        session_ttl: float = SESSION_TTL,
        memory_limit: int | None = None,
        storage: StorageConfig | None = None,
    ) -> None:
        self.peers = peers
        self.storage = storage or StorageConfig()  # the worker's: its Meshes resolve buckets with it
        self.tls = tls
        self.catalog = catalog
        self.policy = policy
        self.statement_ttl = statement_ttl
        self.session_ttl = session_ttl
        self.memory_limit = memory_limit  # of each Mesh's root stages (the worker's --memory-limit)
        self._lock = threading.Lock()
        self._creating = threading.Lock()  # one CREATE EXTERNAL TABLE at a time (it may make a Mesh)
        self._shared: Mesh | None = None
        self._sessions: dict[SessionKey, _Session] = {}
        self._handles: dict[bytes, Statement] = {}
        self._closed = False

    # ------------------------------------------------------------------ meshes and sessions
    def _new_mesh(self) -> Mesh:
        if not self.peers:
            raise ConfigError(
                "this worker listens on a wildcard address and has no --peers: it cannot name itself to run "
                "a query; give it --peers, or listen on a concrete address"
            )
        mesh = Mesh(
            self.peers,
            self.tls,
            insecure=self.tls is None,
            memory_limit=self.memory_limit,
            storage=self.storage,
        )
        try:
            self.catalog.register(mesh)
        except BaseException:
            mesh.close()
            raise
        return mesh

    def _session(self, key: SessionKey) -> _Session:
        """The session of ``key`` (made on first use); expired sessions and handles go first."""
        with self._lock:
            if self._closed:
                raise ConfigError("this worker is shutting down")
            self._expire()
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _Session(key)
            session.used = time.monotonic()
            return session

    def _mesh(self, session: _Session) -> Mesh:
        if session.mesh is not None:
            return session.mesh
        with self._lock:
            if self._shared is None:
                self._shared = self._new_mesh()
            return self._shared

    def _expire(self) -> None:
        """Forget stale handles and close idle sessions (called with the lock held)."""
        now = time.monotonic()
        for handle in [h for h, s in self._handles.items() if now - s.used > self.statement_ttl]:
            del self._handles[handle]
        for key in [
            k for k, s in self._sessions.items() if now - s.used > self.session_ttl and not s.streams
        ]:
            self._end(self._sessions.pop(key))

    def _end(self, session: _Session) -> None:
        session.closed = True
        if session.mesh is not None and not session.streams:
            session.mesh.close()
            session.mesh = None

    def close_session(self, key: SessionKey) -> bool:
        """Close a cookie session (its tables go; results still streaming finish first)."""
        with self._lock:
            session = self._sessions.pop(key, None) if key[1] else None
            if session is not None:
                self._end(session)
            for handle in [h for h, s in self._handles.items() if s.session == key]:
                del self._handles[handle]
        return session is not None

    # ------------------------------------------------------------------ statements
    def tables(self, key: SessionKey) -> dict[str, pa.Schema]:
        """Every table the session sees (the catalog and its own) and its schema."""
        return self._mesh(self._session(key)).tables()

    def describe(self, key: SessionKey, sql: str) -> tuple[pa.Schema, CreateTable | None]:
        """What ``sql`` returns, planned read-only: nothing runs (a CREATE is only checked)."""
        create = CreateTable.parse(sql)
        if create is not None:
            self.policy.check_path(create.location, f"CREATE EXTERNAL TABLE {create.name}")
            return EMPTY, create
        return _plain_schema(self._mesh(self._session(key)).schema(sql, read_only=True)), None

    def execute(self, key: SessionKey, sql: str) -> Statement:
        """Plan ``sql`` to run it now (a CREATE EXTERNAL TABLE registers its table here and now)."""
        schema, create = self.describe(key, sql)
        if create is not None:
            with self._creating:
                self._create(self._session(key), create)
        return Statement(key, sql, schema, create)

    def prepare(self, key: SessionKey, sql: str) -> Statement:
        """Plan ``sql`` for later runs (nothing runs yet)."""
        schema, create = self.describe(key, sql)
        return Statement(key, sql, schema, create)

    def hold(self, statement: Statement) -> bytes:
        """A new random handle for ``statement``, bound to its identity."""
        identity = statement.session[0]
        with self._lock:
            self._expire()
            held = sum(1 for s in self._handles.values() if s.session[0] == identity)
            if held >= MAX_HANDLES:
                raise QueryError(
                    f"{held} open statements for {identity or 'this client'}: fetch or close some (unfetched "
                    f"ones are dropped after {self.statement_ttl:.0f} s)"
                )
            handle = secrets.token_bytes(16)
            self._handles[handle] = statement
        return handle

    def lookup(self, identity: str, handle: bytes, *, take: bool) -> Statement:
        """The statement behind ``handle`` if ``identity`` made it (``take``: and forget the handle)."""
        with self._lock:
            self._expire()
            statement = self._handles.get(handle)
            if statement is None or statement.session[0] != identity:
                raise QueryError(
                    "unknown statement handle: fetched already, closed, expired, or never made here"
                )
            if take:
                del self._handles[handle]
            statement.used = time.monotonic()
            return statement

    def release(self, identity: str, handle: bytes) -> None:
        """Forget a (prepared) statement; unknown handles are ignored."""
        with self._lock:
            statement = self._handles.get(handle)
            if statement is not None and statement.session[0] == identity:
                del self._handles[handle]

    def _create(self, session: _Session, create: CreateTable) -> None:
        """Register a CREATE EXTERNAL TABLE for ``session``, on a Mesh of its own."""
        name = create.name
        exists = name in session.tables or name in self.catalog.tables
        if exists and create.if_not_exists:
            return
        if exists and not create.replace:
            raise QueryError(f"table {name} already exists (CREATE OR REPLACE EXTERNAL TABLE replaces it)")
        if not is_url(create.location) and not os.path.exists(create.location):
            raise QueryError(
                f"CREATE EXTERNAL TABLE {name}: no such file or directory here: {create.location}"
            )
        if len(session.tables) >= MAX_SESSION_TABLES:
            raise QueryError(f"this session holds {MAX_SESSION_TABLES} tables already: open a new session")
        where = create.location if is_url(create.location) else str(Path(create.location))
        table = Table(name, create.kind, where)
        made = session.mesh is None
        if made:
            with self._lock:
                owners = [s for s in self._sessions.values() if s.mesh is not None]
            mine = sum(1 for s in owners if s.key[0] == session.key[0])
            if len(owners) >= MAX_OWN_MESHES or mine >= MAX_OWN_MESHES_PER_IDENTITY:
                raise QueryError(
                    f"{mine} of your sessions ({len(owners)} in all) hold tables of their own on this "
                    f"worker (at most {MAX_OWN_MESHES_PER_IDENTITY} per client, {MAX_OWN_MESHES} in all): "
                    f"close one, or wait {self.session_ttl:.0f} s for idle ones to expire"
                )
            session.mesh = self._new_mesh()
        mesh = session.mesh
        assert mesh is not None
        try:
            table.register(mesh)
        except ConfigError as exc:
            if made:  # a Mesh that holds nothing must not count against the limits
                mesh.close()
                session.mesh = None
            raise QueryError(str(exc)) from exc
        session.tables[name] = table
        log.info(
            "session of %s: table %s -> %s (%s)",
            session.key[0] or "(plaintext)",
            name,
            table.path,
            table.kind,
        )

    def run(self, statement: Statement, cancelled: Callable[[], bool]) -> Iterator[pa.RecordBatch]:
        """Run a statement on the mesh, streaming its batches in the schema it was planned with."""
        if statement.create is not None:
            return
        session = self._session(statement.session)
        mesh = self._mesh(session)
        with self._lock:
            session.streams += 1
        batches = mesh.sql_batches(statement.sql, stop=cancelled)  # a client gone stops the stages too
        try:
            for batch in batches:
                if cancelled():
                    log.info("a client cancelled its result stream of %.80r", statement.sql)
                    return
                yield batch if batch.schema.equals(statement.schema) else _conform(batch, statement.schema)
        finally:
            batches.close()  # releases the query's files on the peers
            with self._lock:
                session.streams -= 1
                session.used = time.monotonic()
                if session.closed:
                    self._end(session)

    def close(self) -> None:
        """Close every Mesh (the worker is stopping)."""
        with self._lock:
            self._closed = True
            meshes = [s.mesh for s in self._sessions.values() if s.mesh is not None]
            meshes += [self._shared] if self._shared is not None else []
            self._sessions.clear()
            self._handles.clear()
        for mesh in meshes:
            try:
                mesh.close()
            except FlowError as exc:
                log.info("closing a gateway mesh: %s", exc)


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with dictionary columns as their value type.

    A Flight SQL result is streamed without dictionary batches (``GeneratorStream`` sends none), so
    dictionary columns are decoded on the way out.
    """
    fields = [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` in the planned schema (names and types as GetFlightInfo announced them)."""
    columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
