"""Apache Iceberg snapshots (``pyiceberg``): files planned through the table's catalog.

A snapshot's data files come from ``table.scan(snapshot_id=...).plan_files()``. Iceberg reads
columns by field id, not by name: a file written before a rename still names the column the old
way. Each file's footer says which name carries which field id; files are grouped by that layout
and each group becomes a branch of the table (``registry.register_snapshot``), its columns renamed,
cast or null-filled to the table's current schema. Column bounds and null counts (by field id)
become each file's facts for skipping. Delete files (position or equality deletes) are refused by
name: applying them is not built.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ematix_flow.engine.lake.pruning import FileFacts
from ematix_flow.engine.lake.snapshot import LakeColumn, Snapshot, SnapshotFile
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.stores import storage_failure
from ematix_flow.errors import ConfigError, FlowError, first_line
from ematix_flow.urls import is_url, parse_url

_FIELD_ID = b"PARQUET:field_id"
_USERINFO = re.compile(r"://[^/@\s]+@")
_EPOCH = datetime.date(1970, 1, 1)


def catalog_properties(catalog: Mapping[str, str], storage: StorageConfig) -> dict[str, str]:
    """``catalog``'s pyiceberg properties, with S3 settings filled from ``storage`` for its warehouse.

    A catalog that sets none of ``s3.*`` gets the ``[s3.BUCKET]`` entry (or environment) of its
    warehouse's bucket, so one ``--storage`` file serves both the catalog and the data files.
    """
    props = {str(k): str(v) for k, v in catalog.items()}
    warehouse = props.get("warehouse", "")
    if (
        is_url(warehouse)
        and parse_url(warehouse).cloud == "s3"
        and not any(k.startswith("s3.") for k in props)
    ):
        opts = storage.bucket(parse_url(warehouse)).options
        mapping = {
            "endpoint": "s3.endpoint",
            "region": "s3.region",
            "access_key_id": "s3.access-key-id",
            "secret_access_key": "s3.secret-access-key",
            "session_token": "s3.session-token",
        }
        props.update({mapping[k]: str(v) for k, v in opts.items() if k in mapping})
        for key, names in _ENVIRONMENT.items():  # what the entry leaves out, as our own stores read it
            value = next((os.environ[n] for n in names if os.environ.get(n)), None)
            if value and key not in props:
                props[key] = value
    return props


#: pyiceberg's S3 property -> the environment variables that give it (first set wins).
_ENVIRONMENT = {
    "s3.endpoint": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
    "s3.region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "s3.access-key-id": ("AWS_ACCESS_KEY_ID",),
    "s3.secret-access-key": ("AWS_SECRET_ACCESS_KEY",),
    "s3.session-token": ("AWS_SESSION_TOKEN",),
}


def load_table(identifier: str, catalog: Mapping[str, str], storage: StorageConfig) -> Any:
    """The Iceberg table ``namespace.table`` of the catalog with properties ``catalog``.

    Raises:
        ConfigError: the catalog cannot be loaded, or has no such table.
        StorageError: the store refused or did not answer.
    """
    from pyiceberg.catalog import load_catalog

    props = catalog_properties(catalog, storage)
    name = props.pop("name", "default")
    try:
        return load_catalog(name, **props).load_table(identifier)
    except FlowError:
        raise
    except Exception as exc:
        failure = storage_failure(str(exc), [])
        if failure is not None:
            raise failure from None
        kind = type(exc).__name__
        text = _scrubbed(first_line(exc, 200))
        if kind in ("NoSuchTableError", "NoSuchNamespaceError"):
            raise ConfigError(f"iceberg table {identifier}: not in catalog {name} ({text})") from None
        raise ConfigError(f"iceberg table {identifier}: cannot load it ({kind}: {text})") from None


def _scrubbed(text: str) -> str:
    """``text`` without the user and password of a URL (a catalog's ``postgresql://u:p@host/db``)."""
    return _USERINFO.sub("://***@", text)


def snapshot(
    identifier: str,
    catalog: Mapping[str, str],
    storage: StorageConfig,
    snapshot_id: int | None = None,
) -> tuple[Snapshot, list[Snapshot]]:
    """The snapshot (the current one, or ``snapshot_id``) and its branches, one per file layout.

    Raises:
        ConfigError: no such table or snapshot, or delete files (named).
        StorageError: the store refused or did not answer.
    """
    table = load_table(identifier, catalog, storage)
    if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
        raise ConfigError(f"iceberg table {identifier}: no snapshot {snapshot_id}")
    current = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    schema = table.schema() if snapshot_id is None else _schema_of(table, current)
    arrow = schema.as_arrow()
    columns = tuple(LakeColumn(f.name, f.name, arrow.field(f.name).type) for f in schema.fields)
    version = current.snapshot_id if current is not None else 0
    table_snap = Snapshot("iceberg", identifier, version, columns, ())
    if current is None:  # an empty table: no files, one layout
        return table_snap, [table_snap]
    try:
        tasks = list(table.scan(snapshot_id=version).plan_files())
    except Exception as exc:
        raise _failure(identifier, exc) from None
    deletes = sum(len(t.delete_files) for t in tasks)
    if deletes:
        raise ConfigError(
            f"iceberg table {identifier}: snapshot {version} has {deletes} delete files (position or "
            "equality deletes), which ematix-flow does not apply yet (compact the table: rewrite_data_files)"
        )
    ids = {f.field_id: f for f in schema.fields}
    layouts: dict[tuple[tuple[int, str], ...], list[SnapshotFile]] = {}
    for task in tasks:
        layout = _layout(table, task.file.file_path, schema)
        layouts.setdefault(layout, []).append(_file(task.file, ids, dict(layout)))
    branches = []
    for layout, files in layouts.items():
        names = dict(layout)
        branch_columns = tuple(
            LakeColumn(ids[fid].name, physical, _file_type(arrow, ids[fid].name))
            for fid, physical in names.items()
        )
        branches.append(replace(table_snap, columns=branch_columns, files=tuple(files)))
    all_files = tuple(f for b in branches for f in b.files)
    return replace(table_snap, files=all_files), branches


def _schema_of(table: Any, snap: Any) -> Any:
    """The schema a snapshot was written with (time travel reads the columns it had)."""
    schema_id = getattr(snap, "schema_id", None)
    for s in table.schemas().values():
        if s.schema_id == schema_id:
            return s
    return table.schema()


def _file_type(arrow: pa.Schema, name: str) -> pa.DataType:
    return arrow.field(name).type


def _layout(table: Any, path: str, schema: Any) -> tuple[tuple[int, str], ...]:
    """(field id, the name the file gives it) for each of ``schema``'s fields the file holds."""
    with table.io.new_input(path).open() as f:
        file_schema = pq.read_schema(f)
    by_id: dict[int, str] = {}
    for field in file_schema:
        meta = field.metadata or {}
        if _FIELD_ID in meta:
            by_id[int(meta[_FIELD_ID])] = field.name
    if not by_id:  # a file without field ids (a migrated table): by name
        names = set(file_schema.names)
        return tuple((f.field_id, f.name) for f in schema.fields if f.name in names)
    return tuple((f.field_id, by_id[f.field_id]) for f in schema.fields if f.field_id in by_id)


def _file(data_file: Any, ids: Mapping[int, Any], names: Mapping[int, str]) -> SnapshotFile:
    from pyiceberg.conversions import from_bytes

    facts = FileFacts(rows=int(data_file.record_count))
    for fid, physical in names.items():
        field_type = ids[fid].field_type
        for bounds, into in (
            (data_file.lower_bounds, facts.minimum),
            (data_file.upper_bounds, facts.maximum),
        ):
            raw = (bounds or {}).get(fid)
            if raw is not None:
                into[physical] = _python(from_bytes(field_type, raw), field_type)
        nulls = (data_file.null_value_counts or {}).get(fid)
        if nulls is not None:
            facts.nulls[physical] = int(nulls)
    path = str(data_file.file_path)
    url = path.removeprefix("file://") if path.startswith("file://") else path
    return SnapshotFile(url, int(data_file.file_size_in_bytes), facts)


def _python(value: Any, field_type: Any) -> Any:
    """A bound as the pruner compares it: dates as dates; strings may be truncated prefixes (still bounds)."""
    kind = type(field_type).__name__
    if kind == "DateType" and isinstance(value, int):
        return _EPOCH + datetime.timedelta(days=value)
    if kind in ("StringType", "LongType", "IntegerType", "DecimalType", "DateType"):
        return value
    return None  # other types: not used for skipping


def _failure(identifier: str, exc: Exception) -> FlowError:
    failure = storage_failure(str(exc), [])
    if failure is not None:
        return failure
    return ConfigError(
        f"iceberg table {identifier}: cannot plan its files ({_scrubbed(first_line(exc, 200))})"
    )
