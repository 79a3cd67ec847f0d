"""A pipeline's declaration: TOML (``flow run pipeline.toml``) or Python (``Pipeline(...)``).

Both build the same dataclasses and go through the same checks, so a mistake gets the same
one-line message either way, naming where it is (``pipeline.toml: [target] keys: ...``) and the
fix. Reading a file checks its shape (unknown and missing keys, types); ``Pipeline.check`` then
checks what the keys mean together (a distributed engine needs peers, merge needs keys, ...).
Nothing here touches a source or a target: that is the runner's.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast, get_args

from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError
from ematix_flow.urls import is_url

SourceKind = Literal["parquet", "csv", "json", "delta", "iceberg", "duckdb", "sqlite", "postgres"]
TargetKind = Literal["duckdb", "sqlite", "parquet", "delta", "postgres"]
Engine = Literal["datafusion", "distributed"]
Dialect = Literal["datafusion", "spark", "duckdb"]
Mode = Literal["append", "truncate", "merge", "scd2"]

FILE_SOURCES = ("parquet", "csv", "json", "delta", "iceberg")
DATABASE_SOURCES = ("duckdb", "sqlite", "postgres")
#: Target kinds and the load modes each one supports.
TARGET_MODES: dict[str, tuple[str, ...]] = {
    "duckdb": ("append", "truncate", "merge", "scd2"),
    "sqlite": ("append", "truncate", "merge", "scd2"),
    "postgres": ("append", "truncate", "merge", "scd2"),
    "parquet": ("append", "truncate"),
    "delta": ("append", "truncate", "merge", "scd2"),
}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Source:
    """One input, registered as a table named after its key in ``[sources]``.

    ``path``: a file or folder (parquet, csv, json) or a database file (duckdb, sqlite), relative
    to the pipeline file's folder. ``dsn``: a PostgreSQL connection string (``${VAR}`` is read
    from the environment). Database sources name a ``table`` or a ``query``.
    """

    kind: SourceKind
    path: str | None = None
    table: str | None = None
    query: str | None = None
    dsn: str | None = None
    has_header: bool = True  # csv
    delimiter: str = ","  # csv


@dataclass
class Transform:
    """The SQL and where it runs.

    ``engine = "distributed"`` runs it on a mesh: ``peers`` (with ``tls_dir``, or ``insecure``) or
    ``local = N`` peers started for the run. ``watermark_column``: load only rows whose value in
    that column is above the last committed run's maximum.
    """

    sql: str = ""
    sql_file: str | None = None
    engine: Engine = "datafusion"
    dialect: Dialect = "datafusion"
    peers: list[str] = field(default_factory=list)
    local: int | None = None
    tls_dir: str | None = None
    tls_name: str = "peer"
    insecure: bool = False
    partitions: int | None = None
    local_below_bytes: int | None = None  # the mesh's adaptive gate (0: always distribute)
    timeout: float | None = None
    watermark_column: str | None = None


@dataclass
class Target:
    """Where the result goes, and how (``mode``; ``keys`` for merge and scd2)."""

    kind: TargetKind = "duckdb"
    path: str | None = None
    table: str | None = None
    dsn: str | None = None
    mode: Mode = "append"
    keys: list[str] = field(default_factory=list)


@dataclass
class Pipeline:
    """A whole pipeline: its sources, its transform, its target.

    ``base_dir`` is where relative paths start (the TOML file's folder; the working directory for
    a Python pipeline); ``origin`` names the declaration in messages.
    """

    name: str
    sources: dict[str, Source]
    transform: Transform
    target: Target
    staging_dir: str | None = None  # where database sources are staged as Parquet for a mesh
    base_dir: Path = field(default_factory=Path.cwd)
    origin: str = "pipeline"
    #: Object-store buckets of URL sources and targets (``flow run --storage``; else the environment).
    storage: StorageConfig = field(default_factory=StorageConfig, repr=False)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Pipeline:
        """Read and shape-check a pipeline file."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such pipeline file (check the path)") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read it: {exc.strerror or exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, origin=str(file), base_dir=file.resolve().parent)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, origin: str = "pipeline", base_dir: Path | None = None
    ) -> Pipeline:
        """Build a pipeline from parsed TOML (or an equal dict): unknown, missing, mistyped keys refused."""
        top = _Section(origin, "", data)
        top.known({"pipeline_name", "sources", "transform", "target", "staging_dir"})
        name = top.string("pipeline_name", required=True)
        assert name is not None
        raw_sources = top.table("sources", required=True)
        if not raw_sources:
            raise ConfigError(f"{origin}: [sources] is empty: declare at least one, e.g. [sources.orders]")
        sources = {}
        for key, value in raw_sources.items():
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{origin}: sources.{key} must be a table ([sources.{key}] with kind and path)"
                )
            sources[key] = _source(_Section(origin, f"sources.{key}", value))
        transform = _transform(_Section(origin, "transform", top.table("transform", required=True)))
        target = _target(_Section(origin, "target", top.table("target", required=True)))
        pipeline = cls(
            name=name,
            sources=sources,
            transform=transform,
            target=target,
            staging_dir=top.string("staging_dir"),
            base_dir=base_dir or Path.cwd(),
            origin=origin,
        )
        pipeline.check()
        return pipeline

    # ------------------------------------------------------------------ meaning
    def check(self) -> None:
        """Check what the settings mean together; raise ConfigError naming the key and the fix."""
        where = self.origin
        if not _NAME.match(self.name):
            raise ConfigError(
                f"{where}: pipeline_name {self.name!r} must be letters, digits and _ (it names run history)"
            )
        if not self.sources:
            raise ConfigError(f"{where}: no sources: declare at least one")
        for name, source in self.sources.items():
            _check_source(where, name, source)
        _check_transform(where, self.transform)
        _check_target(where, self.target, self.transform.watermark_column)

    def sql_text(self) -> str:
        """The transform's SQL as written (from ``sql`` or ``sql_file``), not yet translated."""
        t = self.transform
        if t.sql_file:
            file = self.resolve(t.sql_file)
            try:
                return file.read_text(encoding="utf-8").strip().rstrip(";")
            except OSError as exc:
                raise ConfigError(
                    f"{self.origin}: [transform] sql_file {t.sql_file!r}: cannot read {file}: "
                    f"{exc.strerror or exc}"
                ) from exc
        return t.sql.strip().rstrip(";")

    def location(self, path: str) -> str:
        """A path of the declaration made absolute (relative to ``base_dir``); a URL as it is."""
        return path if is_url(path) else str(self.resolve(path))

    def resolve(self, path: str) -> Path:
        """A path of the declaration, relative to ``base_dir``."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else self.base_dir / p


# ---------------------------------------------------------------------------------- sections
class _Section:
    """One TOML table, with typed getters that name ``origin: [section] key`` in their errors."""

    def __init__(self, origin: str, name: str, data: Mapping[str, Any]) -> None:
        self.origin, self.name, self.data = origin, name, data

    def where(self, key: str) -> str:
        return f"{self.origin}: [{self.name}] {key}" if self.name else f"{self.origin}: {key}"

    def known(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"{self.where(key)}: unknown key ({hint}known: {', '.join(sorted(allowed))})"
                )

    def _get(self, key: str, kind: type | tuple[type, ...], what: str, required: bool) -> Any:
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.where(key)}: missing (add {key} = <{what}>)")
            return None
        value = self.data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(f"{self.where(key)}: must be {what}, not {value!r}")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.where(key)}: must be {what}, not {type(value).__name__} {value!r}")
        return value

    def string(self, key: str, required: bool = False) -> str | None:
        return cast(str | None, self._get(key, str, "a string", required))

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(key) or default
        if value not in options:
            raise ConfigError(f"{self.where(key)}: {value!r} is not one of {', '.join(options)}")
        return value

    def integer(self, key: str) -> int | None:
        return cast(int | None, self._get(key, int, "an integer", False))

    def number(self, key: str) -> float | None:
        value = self._get(key, (int, float), "a number", False)
        return None if value is None else float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, bool, "true or false", False)
        return default if value is None else bool(value)

    def strings(self, key: str) -> list[str]:
        value = self._get(key, list, "a list of strings", False) or []
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{self.where(key)}: must be a list of strings, e.g. ["a", "b"]')
        return list(value)

    def table(self, key: str, required: bool = False) -> Mapping[str, Any]:
        value = self._get(key, dict, f"a table ([{key}])", required)
        return cast(Mapping[str, Any], value or {})


def _source(s: _Section) -> Source:
    if "kind" not in s.data:
        raise ConfigError(f"{s.where('kind')}: missing (add kind = one of {', '.join(get_args(SourceKind))})")
    kind = s.choice("kind", get_args(SourceKind), "")
    allowed = {"kind", "path"} | ({"has_header", "delimiter"} if kind == "csv" else set())
    if kind in DATABASE_SOURCES:
        allowed = {"kind", "table", "query"} | ({"dsn"} if kind == "postgres" else {"path"})
    s.known(allowed)
    return Source(
        kind=cast(SourceKind, kind),
        path=s.string("path"),
        table=s.string("table"),
        query=s.string("query"),
        dsn=_env(s, "dsn"),
        has_header=s.flag("has_header", True),
        delimiter=s.string("delimiter") or ",",
    )


def _transform(s: _Section) -> Transform:
    s.known({f.name for f in fields(Transform)} - {"tls_dir", "tls_name"} | {"tls"})
    tls = _Section(s.origin, "transform.tls", s.table("tls"))
    tls.known({"dir", "name"})
    return Transform(
        sql=s.string("sql") or "",
        sql_file=s.string("sql_file"),
        engine=cast(Engine, s.choice("engine", get_args(Engine), "datafusion")),
        dialect=cast(Dialect, s.choice("dialect", get_args(Dialect), "datafusion")),
        peers=s.strings("peers"),
        local=s.integer("local"),
        tls_dir=tls.string("dir"),
        tls_name=tls.string("name") or "peer",
        insecure=s.flag("insecure", False),
        partitions=s.integer("partitions"),
        local_below_bytes=s.integer("local_below_bytes"),
        timeout=s.number("timeout"),
        watermark_column=s.string("watermark_column"),
    )


def _target(s: _Section) -> Target:
    s.known({f.name for f in fields(Target)})
    kind = s.choice("kind", get_args(TargetKind), "duckdb")
    return Target(
        kind=cast(TargetKind, kind),
        path=s.string("path"),
        table=s.string("table"),
        dsn=_env(s, "dsn"),
        mode=cast(Mode, s.choice("mode", get_args(Mode), "append")),
        keys=s.strings("keys"),
    )


def _env(s: _Section, key: str) -> str | None:
    """A string whose ``${VAR}`` parts are read from the environment (for secrets like a DSN)."""
    value = s.string(key)
    if value is None:
        return None

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"{s.where(key)}: environment variable {m.group(1)} is not set (export it)")
        return os.environ[m.group(1)]

    return _ENV.sub(sub, value)


# ---------------------------------------------------------------------------------- checks
def _check_source(where: str, name: str, src: Source) -> None:
    at = f"{where}: [sources.{name}]"
    if not _NAME.match(name):
        raise ConfigError(f"{at}: {name!r} is not a usable table name (letters, digits and _)")
    if src.kind not in get_args(SourceKind):
        raise ConfigError(f"{at} kind: {src.kind!r} is not one of {', '.join(get_args(SourceKind))}")
    if src.kind == "postgres":
        if not src.dsn:
            raise ConfigError(f'{at} dsn: missing (add dsn = "postgresql://user@host/db" or "${{PG_DSN}}")')
    elif not src.path:
        example = {"iceberg": "iceberg://CATALOG/namespace.table", "delta": f"lake/{name}"}
        raise ConfigError(
            f'{at} path: missing (add path = "{example.get(src.kind, f"data/{name}.{src.kind}")}")'
        )
    if src.kind == "iceberg" and not (src.path or "").startswith("iceberg://"):
        raise ConfigError(f'{at} path: an Iceberg source is path = "iceberg://CATALOG/namespace.table"')
    if src.kind in DATABASE_SOURCES and bool(src.table) == bool(src.query):
        raise ConfigError(f'{at}: give exactly one of table = "name" or query = "SELECT ..."')
    if src.kind == "csv" and len(src.delimiter) != 1:
        raise ConfigError(f"{at} delimiter: must be one character, not {src.delimiter!r}")


def _check_transform(where: str, t: Transform) -> None:
    at = f"{where}: [transform]"
    if bool(t.sql.strip()) == bool(t.sql_file):
        raise ConfigError(f'{at}: give exactly one of sql = "SELECT ..." or sql_file = "transform.sql"')
    if t.engine not in get_args(Engine):
        raise ConfigError(f"{at} engine: {t.engine!r} is not one of {', '.join(get_args(Engine))}")
    if t.dialect not in get_args(Dialect):
        raise ConfigError(f"{at} dialect: {t.dialect!r} is not one of {', '.join(get_args(Dialect))}")
    mesh_keys = [k for k in ("peers", "local", "tls_dir", "partitions", "local_below_bytes") if getattr(t, k)]
    if t.engine == "distributed":
        if t.peers and t.local is not None:
            raise ConfigError(f"{at}: give either peers = [...] or local = N, not both")
        if not t.peers and t.local is None:
            raise ConfigError(
                f'{at}: engine = "distributed" needs peers = ["host:50051", ...] (with [transform.tls] '
                "dir) or local = 3"
            )
        if t.local is not None and t.local < 1:
            raise ConfigError(f"{at} local: must be at least 1, not {t.local}")
        if t.peers and not t.tls_dir and not t.insecure:
            raise ConfigError(
                f'{at}: peers need [transform.tls] dir = "certs" (mutual TLS), or insecure = true for '
                "plaintext peers"
            )
    elif mesh_keys:
        raise ConfigError(
            f'{at} {mesh_keys[0]}: only for engine = "distributed" (set it, or remove {mesh_keys[0]})'
        )
    if t.timeout is not None and t.timeout <= 0:
        raise ConfigError(f"{at} timeout: must be positive seconds, not {t.timeout}")


def _check_target(where: str, t: Target, watermark_column: str | None = None) -> None:
    at = f"{where}: [target]"
    if t.kind not in TARGET_MODES:
        raise ConfigError(f"{at} kind: {t.kind!r} is not one of {', '.join(TARGET_MODES)}")
    if t.mode not in get_args(Mode):
        raise ConfigError(f"{at} mode: {t.mode!r} is not one of {', '.join(get_args(Mode))}")
    if t.mode not in TARGET_MODES[t.kind]:
        raise ConfigError(
            f"{at} mode: {t.kind} targets support {', '.join(TARGET_MODES[t.kind])}, not {t.mode} "
            "(use a delta, duckdb, sqlite or postgres target for merge and scd2)"
        )
    if t.mode in ("merge", "scd2") and not t.keys:
        raise ConfigError(f'{at} keys: mode = "{t.mode}" needs keys = ["id", ...] (the business key)')
    if t.mode not in ("merge", "scd2") and t.keys:
        raise ConfigError(f'{at} keys: only used by mode = "merge" or "scd2" (remove it, or set mode)')
    if t.mode == "truncate" and watermark_column:
        raise ConfigError(
            f'{at} mode: "truncate" replaces the whole table, so with [transform] watermark_column it would '
            'keep only the new rows: use mode = "append" or "merge", or drop watermark_column'
        )
    if len(set(t.keys)) != len(t.keys):
        raise ConfigError(f"{at} keys: {t.keys} names a column twice")
    if t.kind == "postgres":
        if not t.dsn:
            raise ConfigError(f'{at} dsn: missing (add dsn = "postgresql://user@host/db" or "${{PG_DSN}}")')
        if t.path:
            raise ConfigError(f"{at} path: postgres targets take dsn, not path")
    elif not t.path:
        example = {"duckdb": "warehouse.duckdb", "delta": "lake/orders"}.get(t.kind, f"out/table.{t.kind}")
        raise ConfigError(f'{at} path: missing (add path = "{example}")')
    if t.kind in ("parquet", "delta"):
        if t.table:
            raise ConfigError(f"{at} table: {t.kind} targets are a folder (path), they take no table")
    elif not t.table:
        raise ConfigError(f'{at} table: missing (add table = "schema.table" or "table")')
