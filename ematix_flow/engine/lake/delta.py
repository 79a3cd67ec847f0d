"""Delta Lake snapshots (``deltalake``): the log read once, where the query is planned.

The snapshot's add actions are its files: their paths, sizes, partition values and statistics
become a :class:`~ematix_flow.engine.lake.snapshot.Snapshot`. What a reader must do that the mesh's
Parquet scan does not is refused by name (:data:`HANDLED`), never read wrongly.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from ematix_flow.engine import objects
from ematix_flow.engine.lake.pruning import FileFacts
from ematix_flow.engine.lake.snapshot import LakeColumn, Snapshot, SnapshotFile
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.stores import object_store_options, storage_failure
from ematix_flow.errors import ConfigError, FlowError, first_line
from ematix_flow.urls import folder_url, is_url, parse_url

#: Reader features and what reading them takes here. Anything else is refused by name.
HANDLED = {
    "columnMapping": "mode 'name': files are read by their physical column names",
    "deletionVectors": "read when the snapshot has none; refused when it has some",
    "timestampNtz": "timestamps without a time zone, read as such",
    "v2Checkpoint": "checkpoints are read by deltalake",
    "vacuumProtocolCheck": "no effect on reading",
    "variantType": "read when no column is a variant",
}
LOG_DIR = "_delta_log"


def is_delta(path: str, storage: StorageConfig | None = None) -> bool:
    """Whether the folder or URL prefix ``path`` holds a Delta table (a ``_delta_log/`` in it)."""
    if is_url(path):
        prefix = folder_url(path)
        if not prefix.endswith("/"):
            return False
        return LOG_DIR in objects.names(prefix, storage or StorageConfig())
    return (Path(path) / LOG_DIR).is_dir()


def storage_options(uri: str, storage: StorageConfig) -> dict[str, str] | None:
    """What deltalake needs to reach ``uri``'s bucket (None for a local path)."""
    return object_store_options(parse_url(uri), storage) if is_url(uri) else None


def open_table(
    uri: str,
    storage: StorageConfig,
    version: int | None = None,
    timestamp: datetime.datetime | str | None = None,
) -> Any:
    """The ``DeltaTable`` at ``uri`` (at ``version`` or as of ``timestamp``; else the latest).

    Raises:
        ConfigError: no Delta table there, or no such version.
        StorageError: the store refused or did not answer.
    """
    from deltalake import DeltaTable  # deltalake is heavy: imported where a Delta table is opened

    uri = uri.rstrip("/") if is_url(uri) else str(Path(uri).resolve())
    try:
        table = DeltaTable(uri, version=version, storage_options=storage_options(uri, storage))
        if timestamp is not None:
            table.load_as_version(timestamp)
    except FlowError:
        raise
    except Exception as exc:
        if version is not None:
            _check_version(uri, storage, version)
        raise _error(uri, exc) from None
    return table


def _check_version(uri: str, storage: StorageConfig, version: int) -> None:
    """Raise a ConfigError naming the latest version when ``version`` is past it."""
    from deltalake import DeltaTable

    try:
        latest = DeltaTable(uri, storage_options=storage_options(uri, storage)).version()
    except Exception:  # the table itself cannot be read: the first error says why
        return
    if version > latest or version < 0:
        raise ConfigError(f"{uri}: the Delta table has no version {version} (its latest is {latest})")


def _error(uri: str, exc: Exception) -> FlowError:
    text = str(exc)
    failure = storage_failure(text, [uri])
    if failure is not None and "no files in log segment" not in text.lower():
        return failure
    if type(exc).__name__ == "TableNotFoundError" or "no files in log segment" in text.lower():
        return ConfigError(f"{uri}: no Delta table there (no {LOG_DIR}/ with commits)")
    return ConfigError(f"cannot read the Delta table {uri}: {first_line(text, 240)}")


def check_features(table: Any, uri: str) -> str:
    """The column-mapping mode of ``table`` ("none" or "name") after checking its reader features.

    Raises:
        ConfigError: a reader feature, reader version or column-mapping mode the mesh does not read
            correctly, named.
    """
    protocol = table.protocol()
    config = table.metadata().configuration
    if protocol.min_reader_version > 3:
        raise ConfigError(
            f"{uri}: Delta reader version {protocol.min_reader_version} is not supported (at most 3)"
        )
    features = set(protocol.reader_features or [])
    if protocol.min_reader_version == 2:
        features.add("columnMapping")
    unknown = sorted(features - set(HANDLED))
    if unknown:
        raise ConfigError(
            f"{uri}: the Delta table uses {', '.join(unknown)}, which ematix-flow does not read yet"
        )
    mode = config.get("delta.columnMapping.mode", "none")
    if mode not in ("none", "name"):
        raise ConfigError(f"{uri}: Delta column mapping mode '{mode}' is not supported (only 'name')")
    if "variantType" in features and '"variant"' in table.schema().to_json():
        raise ConfigError(f"{uri}: the Delta table has a variant column, which ematix-flow does not read yet")
    if "deletionVectors" in features and pa.table(table.deletion_vectors()).num_rows:
        raise ConfigError(
            f"{uri}: the Delta table has deletion vectors in version {table.version()}, which ematix-flow "
            "does not apply yet (run OPTIMIZE or REORG TABLE ... APPLY (PURGE) on it first)"
        )
    return str(mode)


def snapshot(
    uri: str,
    storage: StorageConfig,
    version: int | None = None,
    timestamp: datetime.datetime | str | None = None,
) -> Snapshot:
    """The snapshot of the Delta table at ``uri``: its columns and data files.

    Raises:
        ConfigError: not a Delta table, no such version, or a feature read wrongly here (named).
        StorageError: the store refused or did not answer.
    """
    table = open_table(uri, storage, version, timestamp)
    location = uri.rstrip("/") if is_url(uri) else str(Path(uri).resolve())
    mode = check_features(table, location)
    parts = set(table.metadata().partition_columns)
    columns = []
    for f in json.loads(table.schema().to_json())["fields"]:
        physical = (
            f.get("metadata", {}).get("delta.columnMapping.physicalName", f["name"])
            if mode == "name"
            else f["name"]
        )
        columns.append(
            LakeColumn(f["name"], physical, pa.field(_arrow_field(table, f["name"])).type, f["name"] in parts)
        )
    try:
        actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    except Exception as exc:
        raise _error(location, exc) from None
    files = tuple(_file(location, a, columns) for a in actions)
    return Snapshot("delta", location, table.version(), tuple(columns), files)


def _arrow_field(table: Any, name: str) -> pa.Field:
    schema = pa.schema(table.schema().to_arrow())
    return schema.field(name)


def _file(location: str, action: dict[str, Any], columns: list[LakeColumn]) -> SnapshotFile:
    path = unquote(str(action["path"]))  # the log holds it URI-encoded (a partition value's "#": %2523)
    url = path if "://" in path or path.startswith("/") else f"{location}/{path}"
    facts = FileFacts(rows=action.get("num_records"))
    for c in columns:
        if c.partition:
            key = f"partition.{c.physical}" if f"partition.{c.physical}" in action else f"partition.{c.name}"
            facts.partition[c.physical] = action.get(key)
            continue
        for prefix, into in (("min.", facts.minimum), ("max.", facts.maximum), ("null_count.", facts.nulls)):
            value = action.get(prefix + c.physical)
            if value is not None:
                into[c.physical] = value
    return SnapshotFile(url, int(action["size_bytes"]), facts)
