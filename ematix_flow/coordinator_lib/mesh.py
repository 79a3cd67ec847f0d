"""``Mesh``: the public entry point that plans a query, drives it on the peers, streams the result.

``Mesh`` is a facade over small collaborators: ``Membership`` (the peers, which are down),
``QueryDriver`` (one query: re-plans, stages, cancel, release), ``spawn_local`` (``Mesh.local``)
and, for ``Mesh(via=...)``, ``ViaMesh`` (a Mesh whose queries a peer plans and drives).
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
from datafusion import AggregateUDF, ScalarUDF

from ematix_flow.coordinator_lib.driver import QueryDriver, RunOptions, Submitter
from ematix_flow.coordinator_lib.local import LocalWorker, spawn_local
from ematix_flow.coordinator_lib.membership import Membership
from ematix_flow.coordinator_lib.planning import PlannedQuery, dataframe, plan_query
from ematix_flow.coordinator_lib.progress import ProgressHook
from ematix_flow.coordinator_lib.report import RunReport, render_graph
from ematix_flow.coordinator_lib.subqueries import check_rows
from ematix_flow.coordinator_lib.writes import Written, run_write
from ematix_flow.engine import layout, stores
from ematix_flow.engine.lake import delta, iceberg
from ematix_flow.engine.lake import registry as lake_registry
from ematix_flow.engine.lake.snapshot import Snapshot
from ematix_flow.engine.settings import execution_context, planning_context
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.tasks import TaskRunner
from ematix_flow.errors import ConfigError, FlowError, StorageError, first_line
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import PeerInfo
from ematix_flow.transport.tls import TLSConfig
from ematix_flow.urls import folder_url, is_url, parse_url, urls_in


def _holds_delta(path: str | os.PathLike[str], storage: StorageConfig) -> bool:
    """Whether ``path`` is a folder (or a folder URL) holding a Delta table's log."""
    text = os.fspath(path)
    if is_url(text):
        url = folder_url(text)
        return url.endswith("/") and delta.is_delta(url, storage)
    return Path(text).expanduser().is_dir() and delta.is_delta(str(Path(text).expanduser()))


def _storage(storage: str | os.PathLike[str] | StorageConfig) -> StorageConfig:
    return storage if isinstance(storage, StorageConfig) else StorageConfig.load(storage)


DEFAULT_MIN_TASK_BYTES = 4 * 1024 * 1024
DEFAULT_LOCAL_BELOW_BYTES = 0  # the adaptive gate is off unless asked for


class Mesh:
    """A connection to a mesh of ``flow-worker`` peers; any process can submit queries through it.

    ``Mesh(via="HOST:PORT")`` makes a ``ViaMesh`` (a Mesh too): a peer plans and drives its queries.

    Example:
        >>> with Mesh.local(workers=3) as mesh:  # doctest: +SKIP
        ...     mesh.register_parquet("lineitem", "data/tpch-sf0.1/lineitem.parquet")
        ...     mesh.sql("SELECT count(*) FROM lineitem")
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Mesh:
        """A ``ViaMesh`` when ``via`` names a peer, else a Mesh that plans here."""
        if cls is Mesh and kwargs.get("via"):
            from ematix_flow.coordinator_lib.via import ViaMesh  # via.py subclasses Mesh

            return super().__new__(ViaMesh)
        return super().__new__(cls)

    def __init__(
        self,
        peers: Sequence[str],
        tls: TLSConfig | None = None,
        *,
        insecure: bool = False,
        partitions: int | None = None,
        min_task_bytes: int = DEFAULT_MIN_TASK_BYTES,
        local_reads: bool = True,
        local_below_bytes: int = DEFAULT_LOCAL_BELOW_BYTES,
        max_attempts: int = 3,
        query_timeout: float | None = None,
        connect_timeout: float = 5.0,
        task_timeout: float | None = None,
        settings: dict[str, str] | None = None,
        via: str | None = None,
        memory_limit: int | None = None,
        storage: str | os.PathLike[str] | StorageConfig | None = None,
    ) -> None:
        """Connect to ``peers`` ("host:port") over mutual TLS (``insecure=True``: plaintext).

        ``settings`` are DataFusion settings for the planning context (they override ours).
        ``memory_limit`` (bytes) caps DataFusion's memory for what runs in this process (the root stage),
        spilling to its scratch dir where it can.
        A query that scans fewer than ``local_below_bytes`` runs in-process on the submitter (the
        adaptive gate; 0 turns it off): shipping it would cost more than running it.

        ``via="HOST:PORT"`` submits through that peer instead (Arrow Flight SQL): it plans each query with
        its own view of the data and drives it on its mesh; this process plans nothing and needs no access
        to the data. ``peers`` may then be empty; ``sql``, ``sql_batches``, ``schema``, ``tables`` and the
        ``register_*`` methods (as ``CREATE EXTERNAL TABLE`` in this Mesh's session on the peer) work; the
        peer drives the stages, so no progress snapshots arrive and ``last_run`` holds no stages.

        ``storage``: a ``--storage`` TOML file (or a loaded ``StorageConfig``) for the object-store
        buckets this process reads; the environment (``AWS_ACCESS_KEY_ID``...) fills the rest. Each
        peer resolves buckets from its own configuration: plans carry URLs, never credentials.
        """
        self.via: str | None = None  # a ViaMesh's peer (Mesh.__new__ makes one when via= names it)
        self.peers = [p.strip() for p in peers if p.strip()]
        if not self.peers:
            raise ConfigError("no peers given: pass at least one HOST:PORT (or use Mesh.local)")
        if tls is None and not insecure:
            raise ConfigError("no TLS material: pass tls=TLSConfig.from_dir('certs') or insecure=True")
        self.tls = tls
        self.workers: list[LocalWorker] = []
        self.last_run: RunReport | None = None
        self._owned_dir: Path | None = None
        self._closed = False
        self.partitions = partitions or max(4, 2 * len(self.peers))
        self.min_task_bytes = min_task_bytes
        self.local_reads = local_reads
        self.local_below_bytes = local_below_bytes
        self.max_attempts = max_attempts
        self.query_timeout = query_timeout
        self.task_timeout = task_timeout
        self._pool = ClientPool(tls)
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="flow-task")
        self._membership = Membership(self.peers, self._pool, self._executor)
        self.storage = storage if isinstance(storage, StorageConfig) else StorageConfig.load(storage)
        self._ctx = planning_context(self.partitions, settings)
        self._scratch = Path(tempfile.mkdtemp(prefix="flow-submit-"))
        spill = self._scratch / layout.SPILL_DIR
        if memory_limit:
            spill.mkdir()
        ctx = execution_context(memory_limit=memory_limit, spill_dir=str(spill) if memory_limit else None)
        runner = TaskRunner(ctx, self._pool, self._scratch, fetch_timeout=task_timeout, storage=self.storage)
        self._submitter = Submitter(
            self._ctx, self._membership, self._pool, self._executor, runner, self._scratch
        )
        try:
            self.peer_info: dict[str, PeerInfo] = self._membership.hello(connect_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    @classmethod
    def local(
        cls,
        workers: int = 3,
        *,
        insecure: bool = False,
        work_dir: str | os.PathLike[str] | None = None,
        log_level: str = "warning",
        **options: Any,
    ) -> Mesh:
        """Spawn ``workers`` flow-worker processes on 127.0.0.1 with fresh mTLS certificates.

        They inherit this process's environment and ``storage=`` file (``options`` go to ``Mesh``).
        """
        if workers < 1:
            raise ConfigError("Mesh.local needs at least one worker")
        storage = options.get("storage")
        source = storage.source if isinstance(storage, StorageConfig) else storage
        extra = ["--storage", str(source)] if source else []
        local = spawn_local(workers, insecure=insecure, work_dir=work_dir, log_level=log_level, extra=extra)
        try:
            mesh = cls(local.addresses, local.tls, insecure=insecure, **options)
        except BaseException:
            local.stop()
            raise
        mesh.workers = local.workers
        mesh._owned_dir = local.base
        return mesh

    def _hello(self, timeout: float, peers: Sequence[str] | None = None) -> dict[str, PeerInfo]:
        """Ask peers who they are (``Membership.hello``; a down one that answers rejoins)."""
        return self._membership.hello(timeout, peers)

    @property
    def peers_alive(self) -> list[str]:
        """Peers not known to be down (a down peer is asked again every few seconds)."""
        return self._membership.alive

    # ------------------------------------------------------------------ tables
    def _resolve(self, name: str, path: str | os.PathLike[str]) -> str:
        """A local path made absolute, or a URL whose bucket gets a store here (a folder URL gets its /)."""
        if is_url(path):
            url = folder_url(str(path))
            stores.register(self._ctx, [url], self.storage)
            return url
        p = Path(path).expanduser().resolve()
        if not p.exists():
            raise ConfigError(f"table {name}: no such file or directory: {path}")
        return str(p)

    def _register_urls(self, sql: str) -> list[StorageError]:
        """Give the planning context a store for every bucket quoted in ``sql`` (COPY TO, LOCATION).

        Buckets nobody configured are returned (a literal may be only a string): raised if planning fails.
        """
        missing = []
        for url in urls_in(sql):
            try:
                stores.register(self._ctx, [url], self.storage)
            except StorageError as exc:
                missing.append(exc)
        return missing

    def _plan(self, sql: str) -> PlannedQuery:
        missing = self._register_urls(sql)
        try:
            return plan_query(self._ctx, sql)
        except FlowError as exc:
            if missing:
                raise missing[0] from exc
            raise

    def register_parquet(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a Parquet file or a folder of Parquet files as table ``name``.

        A folder holding a Delta table (``_delta_log/``) is registered as one (``register_delta``):
        its Parquet files include removed and older ones, which a folder scan would read.
        """
        if not options and _holds_delta(path, self.storage):
            self.register_delta(name, path)
            return
        self._register(
            name, path, lambda: self._ctx.register_parquet(name, self._resolve(name, path), **options)
        )

    def register_csv(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a CSV file or folder (options go to DataFusion's ``register_csv``)."""
        self._register(name, path, lambda: self._ctx.register_csv(name, self._resolve(name, path), **options))

    def register_json(self, name: str, path: str | os.PathLike[str], **options: Any) -> None:
        """Register a newline-delimited JSON file or folder."""
        self._register(
            name, path, lambda: self._ctx.register_json(name, self._resolve(name, path), **options)
        )

    def register_delta(
        self,
        name: str,
        uri: str | os.PathLike[str],
        *,
        version: int | None = None,
        timestamp: datetime.datetime | str | None = None,
        storage: str | os.PathLike[str] | StorageConfig | None = None,
    ) -> None:
        """Register the Delta Lake table at ``uri`` (a folder or URL holding ``_delta_log/``) as ``name``.

        The latest version, or ``version`` / the one current at ``timestamp`` (time travel). Its data
        files are read by the peers; the query's filters skip files by partition values and file
        statistics. ``storage`` (a ``--storage`` file or ``StorageConfig``) replaces this Mesh's for it.
        The snapshot is read now: register again to see later commits.

        Raises:
            ConfigError: no Delta table there, no such version, or a feature the mesh does not read.
            StorageError: the bucket is not configured or refused.
        """
        conf = self.storage if storage is None else _storage(storage)
        snap = delta.snapshot(self._location(name, uri), conf, version, timestamp)
        self._register_snapshot(name, snap, conf)

    def register_iceberg(
        self,
        name: str,
        table: str,
        *,
        catalog: str | Mapping[str, str] = "default",
        snapshot_id: int | None = None,
        storage: str | os.PathLike[str] | StorageConfig | None = None,
    ) -> None:
        """Register the Iceberg table ``table`` ("namespace.table") of ``catalog`` as ``name``.

        ``catalog``: pyiceberg catalog properties (``{"type": "sql", "uri": ..., "warehouse": ...}``),
        or the name of an ``[iceberg.NAME]`` entry of the storage file. The current snapshot, or
        ``snapshot_id`` (time travel). Files are planned through the catalog; columns are read by
        field id (renamed and added columns read right); the query's filters skip files by their
        column bounds. Register again to see later snapshots.

        Raises:
            ConfigError: no such catalog, table or snapshot, or delete files (not applied yet).
            StorageError: the store refused or did not answer.
        """
        conf = self.storage if storage is None else _storage(storage)
        props = conf.catalog(catalog) if isinstance(catalog, str) else dict(catalog)
        snap, branches = iceberg.snapshot(table, props, conf, snapshot_id)
        self._register_snapshot(name, snap, conf, branches)

    def _register_snapshot(
        self, name: str, snap: Snapshot, conf: StorageConfig, branches: list[Snapshot] | None = None
    ) -> None:
        stores.register(self._ctx, [f.url for f in snap.files[:1] if is_url(f.url)], conf)
        if not lake_registry.deregister(self._ctx, name) and self._ctx.table_exist(name):
            self._ctx.deregister_table(name)
        lake_registry.register_snapshot(self._ctx, name, snap, self.partitions, branches)

    def _location(self, name: str, uri: str | os.PathLike[str]) -> str:
        """A lake table's location: a URL, or a local folder made absolute (which must exist)."""
        if is_url(uri):
            return str(uri)
        p = Path(uri).expanduser().resolve()
        if not p.is_dir():
            raise ConfigError(f"table {name}: no such directory: {uri}")
        return str(p)

    def tables(self) -> dict[str, pa.Schema]:
        """Every registered table and its Arrow schema (``via``: what this session on the peer sees)."""
        schema = self._ctx.catalog().schema()
        names = [n for n in sorted(schema.names()) if not n.startswith(lake_registry.HIDDEN_PREFIX)]
        return {name: self._ctx.table(name).schema() for name in names}

    def schema(self, sql: str, *, read_only: bool = False) -> pa.Schema:
        """The schema of the result of ``sql``, planned without running it.

        ``read_only=True`` refuses DDL, DML and SET statements (QueryError) where planning would run them.
        """
        self._register_urls(sql)
        return dataframe(self._ctx, sql, read_only=read_only).schema()

    def register_udf(self, function: ScalarUDF | AggregateUDF) -> None:
        """Register a Python scalar or aggregate UDF: it travels inside plans, pickled.

        Workers refuse such plans unless they run with ``--allow-udfs`` (a UDF is code).
        """
        if isinstance(function, AggregateUDF):
            self._ctx.register_udaf(function)
        else:
            self._ctx.register_udf(function)

    def _register(self, name: str, path: str | os.PathLike[str], action: Any) -> None:
        if not lake_registry.deregister(self._ctx, name) and self._ctx.table_exist(name):
            self._ctx.deregister_table(name)
        try:
            action()
        except FlowError:
            raise
        except Exception as exc:
            buckets = [parse_url(str(path)).store_url] if is_url(path) else []
            failure = stores.storage_failure(str(exc), buckets)
            if failure is not None:
                raise StorageError(f"table {name}: {failure}") from exc
            raise ConfigError(f"cannot register table {name}: {first_line(exc)}") from exc

    # ------------------------------------------------------------------ queries
    def explain(
        self,
        sql: str,
        analyze: bool = False,
        *,
        timeout: float | None = None,
        progress: ProgressHook | None = None,
    ) -> str:
        """The stage graph of ``sql``, readable (and whether the adaptive gate keeps it in-process).

        ``analyze=True`` runs the query (its rows are counted, not kept) and says, per stage, what it
        did: tasks, peers, rows, bytes written / read / fetched over Flight, wall time; plus the
        total time and result rows. ``Mesh.analyze`` gives the same as a ``RunReport``.
        """
        if analyze:
            return self.analyzed_text(self.analyze(sql, timeout=timeout, progress=progress))
        planned = self._plan(sql)
        if planned.local_plan is not None:
            return f"{self._local_reason(planned)}\n{planned.local_plan.display_indent()}"
        text = render_graph(planned.graph, len(self.peers))
        if planned.write is not None:
            w = planned.write
            who = "one task" if w.one_file else "its tasks, each to files of its own"
            text += (
                f"\nWrites: stage {w.stage} writes {w.url} ({who}) under a staging prefix; the files are "
                "published when every task succeeded, removed otherwise"
            )
        if self._runs_locally(planned):
            text = f"{self._local_reason(planned)}\n{text}"
        return text

    def analyze(
        self, sql: str, *, timeout: float | None = None, progress: ProgressHook | None = None
    ) -> RunReport:
        """Run ``sql``, dropping its rows, and return what it did (``RunReport.to_dict()`` for JSON)."""
        for _ in self._batches(sql, [], timeout, progress):
            pass
        assert self.last_run is not None
        return self.last_run

    def analyzed_text(self, report: RunReport) -> str:
        """The stage graph of a run, each stage with what it did (``explain(sql, analyze=True)``)."""
        if report.graph is None:
            ran = f"Ran in-process in {report.seconds:.3f}s: {report.rows:,} result rows"
            return f"{self.explain(report.sql)}\n{ran}"
        return render_graph(report.graph, len(self.peers), report)

    def _runs_locally(self, planned: PlannedQuery) -> bool:
        return planned.local_plan is not None or planned.scan_bytes < self.local_below_bytes

    def _local_reason(self, planned: PlannedQuery) -> str:
        if planned.local_plan is not None:
            return f"Runs in-process on the submitter: {planned.local_reason}"
        return (
            f"Runs in-process on the submitter: it scans {planned.scan_bytes / 1e6:.1f} MB, under the "
            f"{self.local_below_bytes / 1e6:.1f} MB adaptive gate (Mesh(local_below_bytes=0) distributes it)"
        )

    def sql(
        self, sql: str, *, timeout: float | None = None, progress: ProgressHook | None = None
    ) -> pa.Table:
        """Run ``sql`` on the mesh and return the whole result.

        ``timeout`` (seconds) bounds the whole query: past it, its tasks are cancelled on every peer
        and QueryTimeoutError is raised. ``progress`` is called with a ``QueryProgress`` snapshot
        (stages, tasks done / running / failed, rows) whenever a task is launched, ends or fails.
        """
        schema: list[pa.Schema] = []
        batches = list(self._batches(sql, schema, timeout, progress))
        if not batches:
            return schema[0].empty_table()
        return pa.Table.from_batches(batches, schema=batches[0].schema)

    def sql_batches(
        self,
        sql: str,
        *,
        timeout: float | None = None,
        progress: ProgressHook | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Generator[pa.RecordBatch, None, None]:
        """Run ``sql`` on the mesh and yield the result batch by batch (``progress``: as for ``sql``).

        Close the generator (or the Mesh) to stop early: either releases the query's files on the peers.
        ``stop`` is polled while stages run (every ``STOP_POLL_SECONDS``): once it returns True the
        query's tasks are cancelled on every peer and QueryCancelledError is raised (a Flight SQL
        gateway passes "has the client gone").
        """
        return self._batches(sql, [], timeout, progress, stop)

    def _batches(
        self,
        sql: str,
        schema_out: list[pa.Schema],
        timeout: float | None = None,
        hook: ProgressHook | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Generator[pa.RecordBatch, None, None]:
        if self._closed:
            raise ConfigError("this Mesh is closed: open a new one")
        t0 = time.perf_counter()
        timeout = timeout if timeout is not None else self.query_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        planned = self._plan(sql)
        check_rows(planned.row_check)  # as DataFusion, a subquery's second row fails before the query runs
        schema_out.append(planned.logical_schema)
        options = RunOptions(self.min_task_bytes, self.local_reads, self.max_attempts, self.task_timeout)
        driver = QueryDriver(
            self._submitter,
            sql,
            planned,
            options,
            t0=t0,
            timeout=timeout,
            deadline=deadline,
            hook=hook,
            stop=stop,
            publish=self._publish,
        )
        if self._runs_locally(planned):
            yield from driver.in_process(self._local_reason(planned))
            return
        if planned.write is not None:
            yield from run_write(driver, planned.write, self.storage, self._written)
            return
        yield from driver.batches()

    def _written(self, written: Written) -> None:
        if self.last_run is not None:
            self.last_run.files_written = written.files
            self.last_run.rows = 1  # the answer: one row, the rows written (the root saw one per task)

    def _publish(self, report: RunReport) -> None:
        self.last_run = report

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Disconnect; stop the workers this Mesh started and remove their files.

        Queries whose result stream is still open are released first.
        """
        self._closed = True
        self._submitter.release_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pool.close()
        for w in self.workers:
            w.stop()
        self.workers = []
        shutil.rmtree(self._scratch, ignore_errors=True)
        lake_registry.release(self._ctx)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> Mesh:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
