"""The engines a benchmark compares, behind one small protocol, and the registry that names them.

Every engine reads the same Parquet files. ``datafusion`` and ``duckdb`` run inside the bench
process; ``mesh`` runs its tasks in ``flow-worker`` processes (the bench process is its submitter and
runs the root stage); ``pyspark`` runs in a JVM child process. A variant is one registry line, e.g.
``"mesh-adaptive"`` (the adaptive gate on) is one such line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from bench import pinning
from ematix_flow.errors import first_line
from ematix_flow.workloads.tpch import table_path

__all__ = [
    "ENGINES",
    "DataFusionEngine",
    "DuckDBEngine",
    "Engine",
    "EngineOptions",
    "EngineUnavailable",
    "MeshEngine",
    "SparkEngine",
    "UnknownEngine",
    "Validation",
    "create",
    "parse_names",
]


class EngineUnavailable(Exception):  # noqa: N818 - a reason to skip, not a failure
    """The engine cannot run here (an optional package or Java is missing); the message says why."""


class UnknownEngine(ValueError):  # noqa: N818 - raised for a bad --engines value
    """An engine name that is not in :data:`ENGINES`."""


@dataclass(frozen=True)
class Validation:
    """How an engine's answers are compared with single-process DataFusion's."""

    rel_tol: float = 1e-6
    abs_tol: float = 1e-9
    check_names: bool = True


STRICT = Validation()
"""Engines that plan with DataFusion: same names, tight tolerance."""
FOREIGN = Validation(rel_tol=1e-5, abs_tol=2e-6, check_names=False)
"""Other engines: doubles where DataFusion keeps decimals, their own names for unaliased columns, and
6-decimal results that round where DataFusion truncates (Spark's avg: 0.050145 vs 0.050144)."""


@dataclass(frozen=True)
class EngineOptions:
    """Command-line settings an engine may use."""

    workers: int = 2
    partitions: int | None = None
    min_task_bytes: int | None = None
    log_level: str = "warning"
    spark_conf: Mapping[str, str] = field(default_factory=dict)


class Engine(Protocol):
    """Runs SQL over the tables of one data folder."""

    name: str
    validation: Validation

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        """Start (processes, sessions) and register every table of ``data_dir``."""
        ...

    def run(self, sql: str) -> pa.Table:
        """Run ``sql`` to completion and return the whole answer."""
        ...

    def close(self) -> None:
        """Stop everything ``start`` started."""
        ...

    def version(self) -> str:
        """The engine's version, as recorded in the results."""
        ...

    def pids(self) -> dict[str, int]:
        """Processes whose memory counts for this engine, besides the bench process (label -> pid)."""
        ...

    def info(self) -> dict[str, Any]:
        """Facts about the set-up worth recording (partitions, pinning, configuration)."""
        ...

    def details(self) -> dict[str, Any]:
        """Facts about the last run worth recording (e.g. whether it was distributed)."""
        ...


def _table(data_dir: Path, name: str) -> Path:
    path = table_path(data_dir, name)
    if path is None:
        raise FileNotFoundError(f"table {name} missing from {data_dir}")
    return path.resolve()


class DataFusionEngine:
    """Single-process DataFusion (the reference), ``target_partitions`` = the machine's cores."""

    validation = STRICT

    def __init__(self, options: EngineOptions, *, name: str = "datafusion") -> None:
        self.name = name
        self.partitions = os.cpu_count() or 1
        self._ctx: Any = None

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        from datafusion import SessionConfig, SessionContext

        self._ctx = SessionContext(SessionConfig().with_target_partitions(self.partitions))
        for name in tables:
            self._ctx.register_parquet(name, self._location(data_dir, name))

    def _location(self, data_dir: Path, name: str) -> str:
        """Where table ``name`` is read: the local file (DataFusionS3Engine: its copy in a bucket)."""
        return str(_table(data_dir, name))

    def run(self, sql: str) -> pa.Table:
        table: pa.Table = self._ctx.sql(sql).to_arrow_table()
        return table

    def close(self) -> None:
        self._ctx = None

    def version(self) -> str:
        import datafusion

        return str(datafusion.__version__)

    def pids(self) -> dict[str, int]:
        return {}

    def info(self) -> dict[str, Any]:
        return {"process": "bench process", "target_partitions": self.partitions}

    def details(self) -> dict[str, Any]:
        return {}


class DuckDBEngine:
    """In-memory DuckDB, a view per Parquet table, default threads (the machine's cores)."""

    validation = FOREIGN

    def __init__(self, options: EngineOptions, *, name: str = "duckdb") -> None:
        try:
            import duckdb
        except ImportError as exc:
            raise EngineUnavailable(f"duckdb is not installed ({exc})") from exc
        self.name = name
        self._duckdb = duckdb
        self._con: Any = None

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        # never download an extension at run time: Parquet support is built in
        config: dict[str, str | bool | int | float | list[str]] = {
            "autoinstall_known_extensions": "false",
            "autoload_known_extensions": "false",
        }
        self._con = self._duckdb.connect(":memory:", config=config)
        for name in tables:
            path = _table(data_dir, name)
            source = str(path / "*.parquet") if path.is_dir() else str(path)
            literal = "'" + source.replace("'", "''") + "'"
            self._con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet({literal})')

    def run(self, sql: str) -> pa.Table:
        # DuckDB 1.5's .arrow() returns a RecordBatchReader; to_arrow_table() is the whole answer
        table: pa.Table = self._con.sql(sql).to_arrow_table()
        return table

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def version(self) -> str:
        return str(self._duckdb.__version__)

    def pids(self) -> dict[str, int]:
        return {}

    def info(self) -> dict[str, Any]:
        threads = self._con.sql("SELECT current_setting('threads')").fetchone()[0] if self._con else None
        return {"process": "bench process", "threads": threads}

    def details(self) -> dict[str, Any]:
        return {}


class MeshEngine:
    """``Mesh.local`` over mTLS: ``workers`` flow-worker processes; the bench process submits.

    ``worker_cpus[i]`` pins worker i (every thread) to those CPUs after it started;
    ``submitter_cpus`` pins the bench process while this engine runs a query (and restores it after).
    ``mesh_options`` go to ``Mesh.local`` unchanged (e.g. a future ``adaptive=False``).
    """

    validation = STRICT

    def __init__(
        self,
        options: EngineOptions,
        *,
        name: str = "mesh",
        workers: int | None = None,
        worker_cpus: Sequence[Sequence[int]] | None = None,
        submitter_cpus: Sequence[int] | None = None,
        mesh_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.workers = workers or options.workers
        self.worker_cpus = [set(c) for c in worker_cpus] if worker_cpus else None
        self.submitter_cpus = set(submitter_cpus) if submitter_cpus else None
        for cpus in [*(self.worker_cpus or []), self.submitter_cpus or set()]:
            problem = pinning.pinning_problem(cpus)
            if problem:
                raise EngineUnavailable(problem)
        self.options: dict[str, Any] = {"log_level": options.log_level, **(mesh_options or {})}
        if options.partitions is not None:
            self.options["partitions"] = options.partitions
        if options.min_task_bytes is not None:
            self.options["min_task_bytes"] = options.min_task_bytes
        self._mesh: Any = None
        self._all_cpus = pinning.affinity(0)

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        from ematix_flow import Mesh

        self._mesh = Mesh.local(workers=self.workers, **self.options)
        if self.worker_cpus:
            for worker, cpus in zip(self._mesh.workers, self.worker_cpus, strict=False):
                pinning.pin_process(worker.pid, cpus)
        for name in tables:
            self._mesh.register_parquet(name, self._location(data_dir, name))

    def _location(self, data_dir: Path, name: str) -> str:
        """Where the mesh reads table ``name``: the local file (MeshS3Engine: its copy in a bucket)."""
        return str(_table(data_dir, name))

    def run(self, sql: str) -> pa.Table:
        if self.submitter_cpus is None:
            table: pa.Table = self._mesh.sql(sql)
            return table
        pinning.pin_process(os.getpid(), self.submitter_cpus)
        try:
            table = self._mesh.sql(sql)
        finally:
            pinning.pin_process(os.getpid(), self._all_cpus)
        return table

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def version(self) -> str:
        import ematix_flow

        return str(ematix_flow.__version__)

    def pids(self) -> dict[str, int]:
        return {f"worker{i}": w.pid for i, w in enumerate(self._mesh.workers)} if self._mesh else {}

    def info(self) -> dict[str, Any]:
        mesh = self._mesh
        return {
            "workers": self.workers,
            "tls": mesh is not None and mesh.tls is not None,
            "partitions": getattr(mesh, "partitions", None),
            "min_task_bytes": getattr(mesh, "min_task_bytes", None),
            "local_reads": getattr(mesh, "local_reads", None),
            "mesh_options": {k: v for k, v in self.options.items() if k != "log_level"},
            "worker_cpus": [sorted(c) for c in self.worker_cpus] if self.worker_cpus else None,
            "submitter_cpus": sorted(self.submitter_cpus) if self.submitter_cpus else None,
            "process": "flow-worker processes; the bench process submits and runs the root stage",
        }

    def details(self) -> dict[str, Any]:
        report = self._mesh.last_run if self._mesh else None
        if report is None:
            return {}
        return {
            "distributed": bool(report.distributed),
            "peers_used": len(report.peers_used),
            "report_seconds": round(float(report.seconds), 6),
        }


class SparkEngine:
    """PySpark ``local[*]`` (one JVM, a thread per core), a temporary view per Parquet table."""

    validation = FOREIGN
    DEFAULT_CONF: Mapping[str, str] = {
        "spark.driver.memory": "4g",  # the default 1g is tight for SF 1 joins
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        # standard SQL: "..." quotes an identifier (TPC-DS aliases such as "order count"); without it
        # Spark reads a string literal and cannot parse 8 of the 99 TPC-DS queries
        "spark.sql.ansi.doubleQuotedIdentifiers": "true",
    }

    def __init__(self, options: EngineOptions, *, name: str = "pyspark") -> None:
        try:
            import pyspark
        except ImportError as exc:
            raise EngineUnavailable(
                f"pyspark is not installed ({exc}); pip install -e '.[bench-spark]' (needs Java 17+)"
            ) from exc
        self.name = name
        self._pyspark = pyspark
        self.conf = {**self.DEFAULT_CONF, **options.spark_conf}
        self._spark: Any = None

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        from pyspark.sql import SparkSession

        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = SparkSession.builder.master("local[*]").appName("ematix-flow-bench")
        for key, value in self.conf.items():
            builder = builder.config(key, value)
        try:
            self._spark = builder.getOrCreate()
        except Exception as exc:  # no Java, or a JVM that refuses to start
            raise EngineUnavailable(f"Spark did not start: {first_line(exc)}") from exc
        self._spark.sparkContext.setLogLevel("ERROR")
        for name in tables:
            self._spark.read.parquet(str(_table(data_dir, name))).createOrReplaceTempView(name)

    def run(self, sql: str) -> pa.Table:
        frame = self._spark.sql(sql)
        if hasattr(frame, "toArrow"):  # pyspark >= 4.0
            table: pa.Table = frame.toArrow()
            return table
        return pa.Table.from_pandas(frame.toPandas(), preserve_index=False)

    def close(self) -> None:
        if self._spark is not None:
            self._spark.stop()
            self._spark = None

    def version(self) -> str:
        java = (
            self._spark.sparkContext._jvm.java.lang.System.getProperty("java.version") if self._spark else "?"
        )
        return f"{self._pyspark.__version__} (Java {java})"

    def pids(self) -> dict[str, int]:
        if self._spark is None:
            return {}
        return {"jvm": int(self._spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())}

    def info(self) -> dict[str, Any]:
        return {"master": "local[*]", "conf": dict(self.conf), "process": "JVM child process"}

    def details(self) -> dict[str, Any]:
        return {}


class FlightSqlEngine:
    """A client of the mesh through Arrow Flight SQL: the ADBC driver (Go) over mTLS to worker 0.

    ``workers`` flow-worker processes each list the others in ``--peers`` and register the tables
    themselves (``--table``); worker 0 plans every query and drives it across the mesh (it runs the
    root stage), and streams the result to the bench process, which only decodes Arrow batches.
    """

    validation = STRICT

    def __init__(self, options: EngineOptions, *, name: str = "mesh-flightsql") -> None:
        try:
            import adbc_driver_flightsql.dbapi  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable(
                f"the ADBC Flight SQL driver is not installed ({exc}); pip install adbc-driver-flightsql"
            ) from exc
        self.name = name
        self.workers = options.workers
        self.log_level = options.log_level
        self._spawned: list[Any] = []
        self._conn: Any = None
        self._base: Path | None = None

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        import socket
        import tempfile

        import adbc_driver_flightsql.dbapi as flight_sql
        from adbc_driver_flightsql import DatabaseOptions

        from ematix_flow.coordinator_lib.local import spawn_worker
        from ematix_flow.transport.certs import init_certs

        self._base = Path(tempfile.mkdtemp(prefix="bench-flightsql-"))
        certs = self._base / "certs"
        init_certs(certs, ["127.0.0.1", "localhost"])
        socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(self.workers)]
        ports = [s.getsockname()[1] for s in socks]
        for s in socks:
            s.close()
        addresses = [f"127.0.0.1:{p}" for p in ports]
        catalog = [f"--table={name}={_table(data_dir, name)}" for name in tables]
        for i, port in enumerate(ports):
            others = ",".join(a for a in addresses if a != addresses[i])
            extra = ["--peers", others, *catalog]
            worker = spawn_worker(
                certs, self._base / "work", port=port, extra=extra, log_level=self.log_level
            )
            self._spawned.append(worker)
        self._conn = flight_sql.connect(
            f"grpc+tls://{addresses[0]}",
            autocommit=True,
            db_kwargs={
                DatabaseOptions.TLS_ROOT_CERTS.value: (certs / "ca.pem").read_text(),
                DatabaseOptions.MTLS_CERT_CHAIN.value: (certs / "peer.pem").read_text(),
                DatabaseOptions.MTLS_PRIVATE_KEY.value: (certs / "peer-key.pem").read_text(),
            },
        )

    def run(self, sql: str) -> pa.Table:
        with self._conn.cursor() as cursor:
            cursor.execute(sql)
            table: pa.Table = cursor.fetch_arrow_table()
        return table

    def close(self) -> None:
        import shutil

        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for worker in self._spawned:
            worker.stop()
        self._spawned = []
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    def version(self) -> str:
        import adbc_driver_flightsql

        import ematix_flow

        return f"{ematix_flow.__version__} (ADBC Flight SQL {adbc_driver_flightsql.__version__})"

    def pids(self) -> dict[str, int]:
        return {f"worker{i}": w.pid for i, w in enumerate(self._spawned)}

    def info(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "tls": True,
            "process": "flow-worker processes; worker0 plans, drives and runs the root stage; "
            "the bench process is an ADBC client",
        }

    def details(self) -> dict[str, Any]:
        return {}


EngineFactory = Callable[[EngineOptions], Engine]


def _mesh_s3(options: EngineOptions) -> Engine:
    from bench.s3engines import MeshS3Engine  # imports this module: made on demand

    return MeshS3Engine(options)


def _datafusion_s3(options: EngineOptions) -> Engine:
    from bench.s3engines import DataFusionS3Engine

    return DataFusionS3Engine(options)


def _lake(name: str) -> EngineFactory:
    def make(options: EngineOptions) -> Engine:
        from bench import lakeengines  # deltalake / pyiceberg: imported when asked for

        classes = {
            "mesh-delta": lakeengines.MeshDeltaEngine,
            "mesh-iceberg": lakeengines.MeshIcebergEngine,
            "datafusion-delta": lakeengines.DataFusionDeltaEngine,
        }
        engine: Engine = classes[name](options)
        return engine

    return make


ENGINES: dict[str, EngineFactory] = {
    "datafusion": DataFusionEngine,
    "mesh": MeshEngine,  # every query distributed (the adaptive gate is off by default)
    # the adaptive gate on: queries scanning under 64 MB run in-process on the submitter
    "mesh-adaptive": partial(MeshEngine, name="mesh-adaptive", mesh_options={"local_below_bytes": 64 << 20}),
    "duckdb": DuckDBEngine,
    "pyspark": SparkEngine,
    # the same mesh reached as a Flight SQL server by the ADBC driver (any BI tool's path)
    "mesh-flightsql": FlightSqlEngine,
    # the scaling run (--scaling): one worker and the submitter on core 0, vs two workers on cores 0 and 1
    "mesh-1core": partial(MeshEngine, name="mesh-1core", workers=1, worker_cpus=[[0]], submitter_cpus=[0]),
    "mesh-2core": partial(MeshEngine, name="mesh-2core", workers=2, worker_cpus=[[0], [1]]),
    # the dynamic filters the planning settings turn off (engine/settings.py), on again: what they cost
    "mesh-dynfilters": partial(
        MeshEngine,
        name="mesh-dynfilters",
        mesh_options={
            "settings": {
                "datafusion.optimizer.enable_join_dynamic_filter_pushdown": "true",
                "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown": "true",
            }
        },
    ),
    # --storage s3: mesh and datafusion over a copy of the data in an S3 server (moto, loopback)
    "mesh-s3": _mesh_s3,
    "datafusion-s3": _datafusion_s3,
    # the tables as lake tables (converted once beside the data): Delta and Iceberg on the mesh,
    # and single-process DataFusion over deltalake's own table provider
    "mesh-delta": _lake("mesh-delta"),
    "mesh-iceberg": _lake("mesh-iceberg"),
    "datafusion-delta": _lake("datafusion-delta"),
}
"""Engine name -> factory. A factory raises :class:`EngineUnavailable` when it cannot run here."""


def parse_names(spec: str) -> list[str]:
    """``"mesh,datafusion"`` -> the names, in order, without duplicates.

    Raises:
        UnknownEngine: a name is not in :data:`ENGINES`.
    """
    names = list(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        known = ", ".join(ENGINES)
        what = f"unknown engine {', '.join(map(repr, unknown))}" if unknown else "no engine named"
        raise UnknownEngine(f"{what}: choose from {known}")
    return names


def create(name: str, options: EngineOptions) -> Engine:
    """A new, not yet started engine.

    Raises:
        UnknownEngine: ``name`` is not in :data:`ENGINES`.
        EngineUnavailable: it cannot run here.
    """
    try:
        factory = ENGINES[name]
    except KeyError:
        raise UnknownEngine(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}") from None
    return factory(options)
