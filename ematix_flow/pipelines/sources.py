"""A pipeline's inputs, registered as tables of a DataFusion SessionContext or of a Mesh.

File sources (parquet, csv, json: a file or a folder of files) are registered by path, so a mesh's
peers read them where they are. Database sources (duckdb, sqlite, postgres: a table or a query)
are read into Arrow in this process; a SessionContext gets them as in-memory tables, a Mesh as a
Parquet file written under ``staging_dir`` (peers read files by path: on a multi-host mesh
``staging_dir`` must be a path every peer sees at the same place, e.g. a shared mount).

Sources are always read whole: an incremental load filters the transform's result, not a source.

Example:
    >>> import datafusion
    >>> from pathlib import Path
    >>> ctx = datafusion.SessionContext()
    >>> spec = SourceSpec("csv", path="data/orders.csv")
    >>> register_source(ctx, "orders", spec, Path("examples"), Path("/tmp"))  # doctest: +SKIP
    SourceInfo(name='orders', kind='csv', location='/.../examples/data/orders.csv', rows=None, staged=None)
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import re
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

import datafusion
import pyarrow as pa
import pyarrow.parquet as pq

from ematix_flow.engine import stores
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError, FlowError, QueryError, first_line
from ematix_flow.urls import folder_url, is_url, parse_url

if TYPE_CHECKING:
    from ematix_flow.coordinator_lib.mesh import Mesh

log = logging.getLogger(__name__)

SourceKind = Literal["parquet", "csv", "json", "delta", "iceberg", "duckdb", "sqlite", "postgres"]
FILE_KINDS = ("parquet", "csv", "json")
DATABASE_KINDS = ("duckdb", "sqlite", "postgres")
LAKE_KINDS = ("delta", "iceberg")
_EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "json": ".json"}
_DECIMAL = re.compile(r"(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


@dataclass(frozen=True)
class SourceSpec:
    """One input.

    Attributes:
        kind: the format or database.
        path: a file or folder (parquet, csv, json) or a database file (duckdb, sqlite), relative
            to the ``base_dir`` given to :func:`register_source`.
        table: the table to read (database kinds; ``schema.table`` for duckdb and postgres).
        query: or the SQL to run, in the database's own dialect (database kinds).
        dsn: a libpq connection string or URL (postgres).
        has_header: whether a CSV's first line names the columns.
        delimiter: a CSV's field separator (one character).
    """

    kind: SourceKind
    path: str | None = None
    table: str | None = None
    query: str | None = None
    dsn: str | None = None
    has_header: bool = True
    delimiter: str = ","


class SourceLike(Protocol):
    """What this module reads of a source: a :class:`SourceSpec`, or any object with its fields."""

    @property
    def kind(self) -> str: ...  # noqa: D102
    @property
    def path(self) -> str | None: ...  # noqa: D102
    @property
    def table(self) -> str | None: ...  # noqa: D102
    @property
    def query(self) -> str | None: ...  # noqa: D102
    @property
    def dsn(self) -> str | None: ...  # noqa: D102
    @property
    def has_header(self) -> bool: ...  # noqa: D102
    @property
    def delimiter(self) -> str: ...  # noqa: D102


@dataclass(frozen=True)
class SourceInfo:
    """What :func:`register_source` registered.

    Attributes:
        name: the table name.
        kind: the source's kind.
        location: the file or folder registered, or where the rows were read from.
        rows: rows read (database kinds); None for files, which are not read here.
        staged: the Parquet file a database source was written to for a Mesh, else None.
    """

    name: str
    kind: str
    location: str
    rows: int | None = None
    staged: Path | None = None


def register_source(
    sink: datafusion.SessionContext | Mesh,
    name: str,
    spec: SourceLike,
    base_dir: Path,
    staging_dir: Path,
    storage: StorageConfig | None = None,
) -> SourceInfo:
    """Register ``spec`` as table ``name`` of ``sink`` (a table of that name is replaced).

    A file source's path may be an object-store URL; ``storage`` resolves its bucket for a
    SessionContext sink (a Mesh resolves it with its own).

    Raises ConfigError for a missing file, database or table (naming the source and the fix) and
    QueryError when a source's query fails.
    """
    _check(name, spec)
    if spec.kind == "parquet" and _delta_folder(spec.path or "", base_dir, storage or StorageConfig()):
        spec = SourceSpec("delta", path=spec.path)  # its folder holds removed files too: read the log
    if spec.kind == "iceberg":
        _register_iceberg(sink, name, spec.path or "", storage or StorageConfig())
        return SourceInfo(name, spec.kind, spec.path or "")
    if spec.kind == "delta":
        given = spec.path or ""
        location = given if is_url(given) else str(_existing(name, spec, base_dir))
        _register_delta(sink, name, location, storage or StorageConfig())
        return SourceInfo(name, spec.kind, location)
    if spec.kind in FILE_KINDS and is_url(spec.path or ""):
        url = _url_source(sink, name, spec, storage or StorageConfig())
        return SourceInfo(name, spec.kind, url)
    if spec.kind in FILE_KINDS:
        path = _existing(name, spec, base_dir)
        _register_file(sink, name, spec, path)
        return SourceInfo(name, spec.kind, str(path))
    data, location = _read_database(name, spec, base_dir)
    if isinstance(sink, datafusion.SessionContext):
        if sink.table_exist(name):
            sink.deregister_table(name)
        sink.from_arrow(data, name=name)
        return SourceInfo(name, spec.kind, location, rows=data.num_rows)
    staging_dir.mkdir(parents=True, exist_ok=True)
    staged = (staging_dir / f"{name}.parquet").resolve()
    pq.write_table(data, staged)
    sink.register_parquet(name, staged)
    return SourceInfo(name, spec.kind, location, rows=data.num_rows, staged=staged)


def describe_source(spec: SourceLike, base_dir: Path) -> str:
    """One line for --dry-run, e.g. ``duckdb /data/w.duckdb table raw.orders`` (no DSN password)."""
    where = spec.path if is_url(spec.path or "") else _resolve(spec.path or "", base_dir)
    if spec.kind == "csv":
        header = "header" if spec.has_header else "no header"
        return f"csv {where} ({header}, delimiter {spec.delimiter!r})"
    if spec.kind == "iceberg":
        return f"iceberg {spec.path}"
    if spec.kind in (*FILE_KINDS, "delta"):
        return f"{spec.kind} {where}"
    where = (
        _postgres_where(spec.dsn or "") if spec.kind == "postgres" else _resolve(spec.path or "", base_dir)
    )
    what = f"table {spec.table}" if spec.table else f"query {_shorten(spec.query or '')}"
    return f"{spec.kind} {where} {what}"


# -------------------------------------------------------------------------------- files
def _check(name: str, spec: SourceLike) -> None:
    if spec.kind not in (*FILE_KINDS, *LAKE_KINDS, *DATABASE_KINDS):
        kinds = ", ".join((*FILE_KINDS, *LAKE_KINDS, *DATABASE_KINDS))
        raise ConfigError(f"source {name}: kind {spec.kind!r} is not one of {kinds}")
    if spec.kind == "postgres" and not spec.dsn:
        raise ConfigError(f'source {name}: postgres needs dsn (e.g. dsn = "postgresql://user@host/db")')
    if spec.kind != "postgres" and not spec.path:
        raise ConfigError(f'source {name}: {spec.kind} needs path (e.g. path = "data/{name}.{spec.kind}")')
    if spec.kind in DATABASE_KINDS and bool(spec.table) == bool(spec.query):
        raise ConfigError(f'source {name}: give exactly one of table = "name" or query = "SELECT ..."')


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _existing(name: str, spec: SourceLike, base_dir: Path) -> Path:
    """The source's file or folder, absolute; ConfigError when it is not there."""
    path = _resolve(spec.path or "", base_dir).resolve()
    if not path.exists():
        raise ConfigError(
            f"source {name}: {spec.path}: no such file or directory ({path}): fix path (relative paths "
            f"start at {base_dir})"
        )
    return path


def _url_source(
    sink: datafusion.SessionContext | Mesh, name: str, spec: SourceLike, storage: StorageConfig
) -> str:
    """Register a file or folder URL with the reader of its kind; returns the URL registered."""
    url = folder_url(spec.path or "")
    extension = PurePosixPath(url).suffix if not url.endswith("/") else _EXTENSIONS[spec.kind]
    if isinstance(sink, datafusion.SessionContext):
        stores.register(sink, [url], storage)
        if sink.table_exist(name):
            sink.deregister_table(name)
    try:
        if spec.kind == "parquet":
            sink.register_parquet(name, url, file_extension=extension)
        elif spec.kind == "csv":
            sink.register_csv(
                name, url, has_header=spec.has_header, delimiter=spec.delimiter, file_extension=extension
            )
        else:
            sink.register_json(name, url, file_extension=extension)
    except FlowError:
        raise
    except Exception as exc:  # DataFusion raises plain exceptions
        failure = stores.storage_failure(str(exc), [parse_url(url).store_url])
        if failure is not None:
            raise failure from exc
        raise ConfigError(f"source {name}: cannot read {url} as {spec.kind}: {first_line(exc)}") from exc
    return url


def _delta_folder(path: str, base_dir: Path, storage: StorageConfig) -> bool:
    """Whether a parquet source's path is a folder (or folder URL) holding a Delta table."""
    from ematix_flow.engine.lake import delta

    if is_url(path):
        url = folder_url(path)
        return url.endswith("/") and delta.is_delta(url, storage)
    folder = _resolve(path, base_dir)
    return folder.is_dir() and delta.is_delta(str(folder))


def _register_delta(
    sink: datafusion.SessionContext | Mesh, name: str, location: str, storage: StorageConfig
) -> None:
    """A Delta table: its snapshot on a Mesh; deltalake's table provider (or dataset) on a SessionContext."""
    if not isinstance(sink, datafusion.SessionContext):
        sink.register_delta(name, location)
        return
    from ematix_flow.engine.lake import delta

    table = delta.open_table(location, storage)
    if sink.table_exist(name):
        sink.deregister_table(name)
    if is_url(location):  # deltalake's provider cannot reach a bucket from this context: its dataset can
        sink.register_dataset(name, table.to_pyarrow_dataset())
    else:
        sink.register_table(name, table)


def _register_iceberg(
    sink: datafusion.SessionContext | Mesh, name: str, url: str, storage: StorageConfig
) -> None:
    """An Iceberg table (``iceberg://CATALOG/ns.table``): its snapshot on a Mesh; read whole in-process."""
    from ematix_flow.engine.lake import iceberg
    from ematix_flow.engine.tables import parse_iceberg_url

    catalog, identifier = parse_iceberg_url(url)
    if not isinstance(sink, datafusion.SessionContext):
        sink.register_iceberg(name, identifier, catalog=catalog)
        return
    table = iceberg.load_table(identifier, storage.catalog(catalog), storage)
    if sink.table_exist(name):
        sink.deregister_table(name)
    sink.from_arrow(table.scan().to_arrow(), name=name)


def _register_file(sink: datafusion.SessionContext | Mesh, name: str, spec: SourceLike, path: Path) -> None:
    """Register a file or folder with the reader of its kind (a file's own suffix is accepted)."""
    extension = "".join(path.suffixes[-1:]) if path.is_file() else _EXTENSIONS[spec.kind]
    if path.is_dir() and not any(f.is_file() for f in path.glob(f"*{extension}")):
        raise ConfigError(
            f"source {name}: folder {path} has no *{extension} files (subfolders are not read): point "
            f"path at the folder that holds them (names ending in {extension}) or at one file"
        )
    if isinstance(sink, datafusion.SessionContext) and sink.table_exist(name):
        sink.deregister_table(name)
    try:
        if spec.kind == "parquet":
            sink.register_parquet(name, str(path), file_extension=extension)
        elif spec.kind == "csv":
            sink.register_csv(
                name,
                str(path),
                has_header=spec.has_header,
                delimiter=spec.delimiter,
                file_extension=extension,
            )
        else:
            sink.register_json(name, str(path), file_extension=extension)
    except ConfigError:
        raise
    except Exception as exc:  # DataFusion raises plain exceptions
        raise ConfigError(f"source {name}: cannot read {path} as {spec.kind}: {first_line(exc)}") from exc


# -------------------------------------------------------------------------------- databases
def _read_database(name: str, spec: SourceLike, base_dir: Path) -> tuple[pa.Table, str]:
    """The rows of a database source as Arrow, and where they came from."""
    if spec.kind == "postgres":
        return _read_postgres(name, spec), _postgres_where(spec.dsn or "")
    path = _existing(name, spec, base_dir)
    if not path.is_file():
        raise ConfigError(f"source {name}: {path} is a folder, not a {spec.kind} database file: fix path")
    reader = _read_duckdb if spec.kind == "duckdb" else _read_sqlite
    return reader(name, spec, path), str(path)


def _select(spec: SourceLike) -> str:
    """The SQL that reads the source: its query, or every column of its (quoted) table."""
    if spec.query:
        return spec.query
    table = ".".join('"' + part.replace('"', '""') + '"' for part in (spec.table or "").split("."))
    return f"SELECT * FROM {table}"


def _failed(name: str, spec: SourceLike, exc: Exception, missing_table: bool) -> Exception:
    """The FlowError for a database error: a missing table is a ConfigError, the rest QueryError."""
    if missing_table and spec.table:
        return ConfigError(
            f"source {name}: {spec.kind} has no table {spec.table}: fix table ({first_line(exc)})"
        )
    what = f"the query failed: {first_line(exc)} (fix query)" if spec.query else first_line(exc)
    return QueryError(f"source {name}: {spec.kind}: {what}")


def _read_duckdb(name: str, spec: SourceLike, path: Path) -> pa.Table:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise ConfigError(f"source {name}: cannot open {path} as duckdb: {first_line(exc)}") from exc
    try:
        result = con.execute(_select(spec)).arrow()
        table = result.read_all() if isinstance(result, pa.RecordBatchReader) else result
    except duckdb.Error as exc:
        raise _failed(name, spec, exc, isinstance(exc, duckdb.CatalogException)) from exc
    finally:
        con.close()
    assert isinstance(table, pa.Table)
    return table


def _read_sqlite(name: str, spec: SourceLike, path: Path) -> pa.Table:
    """Read through a temporary view, whose columns keep their declared types where SQLite knows them."""
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"source {name}: cannot open {path} as sqlite: {first_line(exc)}") from exc
    try:
        con.execute(f"CREATE TEMP VIEW flow_source AS {_select(spec)}")
        declared = [str(row[2]) for row in con.execute("PRAGMA table_info(flow_source)")]
        cursor = con.execute("SELECT * FROM flow_source")
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    except sqlite3.Error as exc:
        raise _failed(name, spec, exc, "no such table" in str(exc)) from exc
    finally:
        con.close()
    return _table(name, names, [_sqlite_type(d) for d in declared], rows)


def _sqlite_type(declared: str) -> pa.DataType | None:
    """The Arrow type of a declared SQLite column type (SQLite's affinity rules first); None: infer."""
    d = declared.upper()
    if "INT" in d:
        return pa.int64()
    if any(word in d for word in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if "BLOB" in d:
        return pa.binary()
    if any(word in d for word in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    if "BOOL" in d:
        return pa.bool_()
    if "TIMESTAMP" in d or "DATETIME" in d:
        return pa.timestamp("us")
    if d.startswith("DATE"):
        return pa.date32()
    match = _DECIMAL.search(d)
    if match and int(match[1]) <= 38:
        return pa.decimal128(int(match[1]), int(match[2] or 0))
    return None  # NUMERIC or no type: from the values


def _read_postgres(name: str, spec: SourceLike) -> pa.Table:
    import psycopg

    try:
        con = psycopg.connect(spec.dsn or "", connect_timeout=10)
    except psycopg.Error as exc:
        raise ConfigError(
            f"source {name}: cannot connect to postgres {_postgres_where(spec.dsn or '')}: "
            f"{first_line(exc)} (check dsn)"
        ) from exc
    try:
        with con.transaction(), con.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(_select(spec).encode())
            description = cur.description or []
            rows = cur.fetchall()
    except psycopg.Error as exc:
        raise _failed(name, spec, exc, isinstance(exc, psycopg.errors.UndefinedTable)) from exc
    finally:
        con.close()
    kinds = [postgres_arrow_type(c.type_code, c.precision, c.scale) for c in description]
    return _table(name, [c.name for c in description], kinds, rows)


_POSTGRES_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "uuid": pa.string(),
    "json": pa.string(),
    "jsonb": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.duration("us"),
}


def postgres_arrow_type(oid: int, precision: int | None, scale: int | None) -> pa.DataType | None:
    """The Arrow type of a PostgreSQL result column; None: from the values."""
    from psycopg import postgres

    info = postgres.types.get(oid)
    if info is None:
        return None
    if info.name == "numeric":
        return pa.decimal128(precision, scale or 0) if precision and precision <= 38 else None
    return _POSTGRES_TYPES.get(info.name)


def _postgres_where(dsn: str) -> str:
    """``host:port/dbname`` of a DSN (never its password)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable dsn)"
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{host}{port}/{parts.get('dbname') or parts.get('user') or ''}"


# -------------------------------------------------------------------------------- to Arrow
def _table(
    name: str, names: Sequence[str], kinds: Sequence[pa.DataType | None], rows: Sequence[Sequence[Any]]
) -> pa.Table:
    """Rows of Python values as an Arrow table, each column of its declared type where it has one."""
    columns = [[row[i] for row in rows] for i in range(len(names))]
    arrays = [_column(name, n, values, kind) for n, values, kind in zip(names, columns, kinds, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(names))


def _column(source: str, name: str, values: list[Any], kind: pa.DataType | None) -> pa.Array:
    """One column: of ``kind`` if its values fit, else of the type they imply, else as text."""
    if kind is not None:
        try:
            return pa.array([_coerce(v, kind) for v in values], type=kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError, decimal.DecimalException):
            log.warning(
                "source %s: column %s holds values that are not %s; read as they are", source, name, kind
            )
    plain = [_plain(v) for v in values]
    try:
        return pa.array(plain)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in plain], type=pa.string())


def _coerce(value: Any, kind: pa.DataType) -> Any:
    """A database value in the Python form pyarrow takes for ``kind`` (SQLite keeps dates as text)."""
    if value is None:
        return None
    if (pa.types.is_timestamp(kind) or pa.types.is_date(kind)) and isinstance(value, int | float):
        raise TypeError(f"{value!r} is a number, not a {kind}: read as stored")  # e.g. epoch seconds
    if pa.types.is_timestamp(kind) and isinstance(value, str):
        moment = dt.datetime.fromisoformat(value)
        return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo and not kind.tz else moment
    if pa.types.is_date32(kind) and isinstance(value, str):
        return dt.date.fromisoformat(value)
    if pa.types.is_boolean(kind) and isinstance(value, int):
        return bool(value)
    if pa.types.is_decimal(kind) and isinstance(value, int | float | str):
        exact = decimal.Context(traps=[decimal.Inexact, decimal.InvalidOperation])
        return decimal.Decimal(str(value)).quantize(decimal.Decimal(1).scaleb(-kind.scale), context=exact)
    return _plain(value)


def _plain(value: Any) -> Any:
    """JSON documents as text, UUIDs as text; other values as they are."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _shorten(text: str, width: int = 60) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 3] + "..."
