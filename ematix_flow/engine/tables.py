"""Tables by path or URL: a file's format from its suffix, registered on a planning context or a mesh.

One set of rules for every place that registers tables: ``flow sql`` / ``flow explain``
(``--table NAME=PATH``, ``--tables-dir DIR``), the worker's catalog (the same options of
``flow-worker``) and the benchmarks' data folders.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

from ematix_flow.engine import objects
from ematix_flow.engine.lake import delta
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError
from ematix_flow.urls import folder_url, is_url

#: File suffix (lowercase) -> format.
_KINDS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}


class ParquetRegistrar(Protocol):
    """Anything that registers a Parquet table: a DataFusion ``SessionContext``, a ``Mesh``..."""

    def register_parquet(self, name: str, path: str, /) -> object:
        """Register the Parquet file or folder ``path`` as table ``name``."""


class Registrar(ParquetRegistrar, Protocol):
    """Anything that registers tables of every format we read: a ``SessionContext``, a ``Mesh``, a catalog."""

    def register_csv(self, name: str, path: str, /) -> object:
        """Register the CSV file or folder ``path`` as table ``name``."""

    def register_json(self, name: str, path: str, /) -> object:
        """Register the newline-delimited JSON file or folder ``path`` as table ``name``."""


#: ``iceberg://CATALOG/namespace.table``: a table of an ``[iceberg.CATALOG]`` of the storage file.
ICEBERG_SCHEME = "iceberg://"


def parse_iceberg_url(url: str) -> tuple[str, str]:
    """``iceberg://CATALOG/namespace.table`` -> (catalog, "namespace.table").

    Raises:
        ConfigError: not of that form.
    """
    catalog, _, identifier = url.removeprefix(ICEBERG_SCHEME).partition("/")
    if not url.startswith(ICEBERG_SCHEME) or not catalog or "." not in identifier.strip("/"):
        raise ConfigError(f"{url!r}: an Iceberg table is iceberg://CATALOG/namespace.table")
    return catalog, identifier.strip("/")


def kind_of(path: Path) -> str:
    """The format of a file, or of the files in a folder, from their extension.

    Raises:
        ConfigError: the suffix is not one we read, or a folder mixes formats (or holds none).
    """
    if path.is_dir():
        kinds = {_KINDS.get(p.suffix.lower()) for p in path.rglob("*") if p.is_file()} - {None}
        if len(kinds) != 1:
            found = ", ".join(sorted(k for k in kinds if k)) or "none"
            raise ConfigError(
                f"folder {path} must hold files of one format (.parquet, .csv or .json); found: {found}"
            )
        return next(k for k in kinds if k)
    kind = _KINDS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"cannot tell the format of {path}: use a .parquet, .csv or .json file (or a folder of them)"
        )
    return kind


def kind_from_suffix(path: Path | str) -> str:
    """The format of a path that may not exist here (``--via``): its extension's, else Parquet (a folder)."""
    return _KINDS.get(PurePosixPath(str(path)).suffix.lower(), "parquet")


def register_format(target: Registrar, kind: str, name: str, path: str) -> None:
    """Register ``path`` as table ``name`` with the reader of format ``kind`` (parquet, csv, json, delta).

    Raises:
        ConfigError: a Delta table given to something that cannot read one (a plain DataFusion context).
    """
    if kind == "iceberg":
        catalog, identifier = parse_iceberg_url(path)
        register_iceberg = getattr(target, "register_iceberg", None)
        if register_iceberg is None:
            raise ConfigError(f"table {name}: {path} is an Iceberg table; register it on a Mesh")
        register_iceberg(name, identifier, catalog=catalog)
        return
    if kind == "delta":
        register_delta = getattr(target, "register_delta", None)
        if register_delta is None:
            raise ConfigError(
                f"table {name}: {path} is a Delta table; register it on a Mesh (register_delta)"
            )
        register_delta(name, path)
        return
    readers = {"parquet": target.register_parquet, "csv": target.register_csv, "json": target.register_json}
    readers[kind](name, path)


def register(target: Registrar, name: str, path: Path | str, storage: StorageConfig | None = None) -> None:
    """Register ``path`` (a local path or an object-store URL) as table ``name`` with its format's reader.

    A folder (or folder URL) holding ``_delta_log/`` is a Delta table; ``iceberg://CATALOG/ns.table``
    an Iceberg table of a catalog of the storage file. A URL's format comes from its
    suffix; a folder URL's from the files under it (listed with ``storage``, this process's
    configuration).

    Raises:
        ConfigError: ``path`` does not exist or its format is unknown.
        StorageError: the URL's bucket is not configured here or cannot be listed.
    """
    if str(path).startswith(ICEBERG_SCHEME):
        register_format(target, "iceberg", name, str(path))
        return
    if is_url(path):
        url = folder_url(str(path))
        kind = "delta" if delta.is_delta(url, storage) else url_kind(url, storage or StorageConfig())
        register_format(target, kind, name, url)
        return
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"table {name}: no such file or directory: {path}")
    register_format(target, "delta" if delta.is_delta(str(path)) else kind_of(path), name, str(path))


def url_kind(url: str, storage: StorageConfig) -> str:
    """The format of the file a URL names, or of the files under a folder URL (listed).

    Raises:
        ConfigError: the suffix is not one we read, the folder is empty or mixes formats.
        StorageError: the bucket cannot be listed.
    """
    if not url.endswith("/"):
        kind = _KINDS.get(PurePosixPath(urlsplit(url).path).suffix.lower())
        if kind is None:
            raise ConfigError(
                f"cannot tell the format of {url}: use a .parquet, .csv or .json file (or a folder/)"
            )
        return kind
    kinds = {_KINDS.get(PurePosixPath(p).suffix.lower()) for p in objects.files(url, storage)} - {None}
    if len(kinds) != 1:
        found = ", ".join(sorted(k for k in kinds if k)) or "none"
        raise ConfigError(f"{url} must hold files of one format (.parquet, .csv or .json); found: {found}")
    return next(k for k in kinds if k)


def parse_table_option(value: str) -> tuple[str, str]:
    """``NAME=PATH`` (or ``NAME=URL``) -> (name, path).

    Raises:
        ConfigError: ``value`` is not ``NAME=PATH``.
    """
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"--table {value!r} must be NAME=PATH")
    return name.strip(), path.strip()


def register_dir(target: Registrar, tables_dir: str, storage: StorageConfig | None = None) -> list[str]:
    """Register every table file or folder of ``tables_dir`` (a folder or a URL prefix); returns the names.

    Entries starting with ``.`` or ``_`` and files of other formats are skipped.

    Raises:
        ConfigError: ``tables_dir`` is not a directory, or an entry's format is unclear.
        StorageError: a URL prefix cannot be listed.
    """
    if is_url(tables_dir):
        entries = objects.entries(folder_url(tables_dir), storage or StorageConfig())
    else:
        root = Path(tables_dir)
        if not root.is_dir():
            raise ConfigError(f"--tables-dir {tables_dir}: not a directory")
        entries = [(str(e), e.is_dir()) for e in sorted(root.iterdir())]
    names = []
    for entry, is_dir in entries:
        base = PurePosixPath(urlsplit(entry).path if is_url(entry) else entry)
        if base.name.startswith((".", "_")):
            continue
        if not is_dir and base.suffix.lower() not in _KINDS:
            continue
        name = base.name if is_dir else base.stem
        register(target, name, entry + ("/" if is_dir and is_url(entry) else ""), storage)
        names.append(name)
    return names


def register_all(
    target: Registrar, tables: tuple[str, ...], tables_dir: str | None, storage: StorageConfig | None = None
) -> list[str]:
    """Register every entry of ``tables_dir``, then every ``NAME=PATH`` of ``tables``; returns the names.

    Paths may be object-store URLs; ``storage`` is this process's configuration for listing them.

    Raises:
        ConfigError: an entry is malformed, missing, or of an unknown format.
        StorageError: a URL's bucket is not configured here or cannot be listed.
    """
    names = register_dir(target, tables_dir, storage) if tables_dir else []
    for value in tables:
        name, path = parse_table_option(value)
        register(target, name, path, storage)
        names.append(name)
    return names
