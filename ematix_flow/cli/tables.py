"""Table options shared by ``flow sql`` and ``flow explain``: ``--table NAME=PATH``, ``--tables-dir DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ematix_flow.errors import ConfigError

_KINDS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}


class Registrar(Protocol):
    """Anything with register_parquet / register_csv / register_json (a Mesh, a SessionContext)."""

    def register_parquet(self, name: str, path: str) -> None: ...  # noqa: D102
    def register_csv(self, name: str, path: str) -> None: ...  # noqa: D102
    def register_json(self, name: str, path: str) -> None: ...  # noqa: D102


def kind_of(path: Path) -> str:
    """The format of a file, or of the files in a folder, from their extension."""
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


def kind_from_suffix(path: Path) -> str:
    """The format of a path that may not exist here (``--via``): its extension's, else Parquet (a folder)."""
    return _KINDS.get(path.suffix.lower(), "parquet")


def register(target: Registrar, name: str, path: Path) -> None:
    """Register ``path`` as table ``name`` with the reader its format needs."""
    if not path.exists():
        raise ConfigError(f"table {name}: no such file or directory: {path}")
    kind = kind_of(path)
    readers = {"parquet": target.register_parquet, "csv": target.register_csv, "json": target.register_json}
    readers[kind](name, str(path))


def parse_table_option(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"--table {value!r} must be NAME=PATH")
    return name.strip(), Path(path.strip())


def register_all(target: Registrar, tables: tuple[str, ...], tables_dir: str | None) -> list[str]:
    """Register every ``--table`` and every entry of ``--tables-dir``; returns the names."""
    names = []
    if tables_dir:
        root = Path(tables_dir)
        if not root.is_dir():
            raise ConfigError(f"--tables-dir {tables_dir}: not a directory")
        for entry in sorted(root.iterdir()):
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_file() and entry.suffix.lower() not in _KINDS:
                continue
            register(target, entry.stem if entry.is_file() else entry.name, entry)
            names.append(entry.stem if entry.is_file() else entry.name)
    for value in tables:
        name, path = parse_table_option(value)
        register(target, name, path)
        names.append(name)
    return names
