"""Tables by path (engine/tables.py): formats by suffix, folders, NAME=PATH, on any Registrar."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext

from ematix_flow.engine.tables import (
    Registrar,
    kind_from_suffix,
    kind_of,
    parse_table_option,
    register,
    register_all,
    register_format,
)
from ematix_flow.errors import ConfigError
from ematix_flow.worker.catalog import Catalog


class Recorder:
    """A Registrar that remembers what it was asked to register."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def register_parquet(self, name: str, path: str) -> None:
        self.calls.append(("parquet", name, path))

    def register_csv(self, name: str, path: str) -> None:
        self.calls.append(("csv", name, path))

    def register_json(self, name: str, path: str) -> None:
        self.calls.append(("json", name, path))


def _tables_dir(root: Path) -> Path:
    root.mkdir()
    pq.write_table(pa.table({"a": [1, 2]}), root / "nums.parquet")
    (root / "people.csv").write_text("name\nada\n")
    (root / "events.json").write_text('{"e": 1}\n')
    (root / "parts").mkdir()
    pq.write_table(pa.table({"b": [3]}), root / "parts" / "p0.parquet")
    (root / "README.md").write_text("not a table")
    (root / "_hidden.csv").write_text("x\n1\n")
    (root / ".dot.csv").write_text("x\n1\n")
    return root


def test_kind_of_files_and_folders(tmp_path: Path) -> None:
    root = _tables_dir(tmp_path / "t")
    assert kind_of(root / "nums.parquet") == "parquet"
    assert kind_of(root / "people.csv") == "csv"
    assert kind_of(root / "events.json") == "json"
    (tmp_path / "more.JSONL").write_text('{"e": 2}\n')
    assert kind_of(tmp_path / "more.JSONL") == "json"
    assert kind_of(root / "parts") == "parquet"
    with pytest.raises(ConfigError, match="cannot tell the format"):
        kind_of(root / "README.md")
    with pytest.raises(ConfigError, match=r"must hold files of one format .*found: csv, json, parquet"):
        kind_of(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="found: none"):
        kind_of(tmp_path / "empty")


def test_kind_from_suffix_defaults_to_parquet() -> None:
    assert kind_from_suffix(Path("/far/away/t.ndjson")) == "json"
    assert kind_from_suffix(Path("/far/away/folder")) == "parquet"


def test_parse_table_option() -> None:
    assert parse_table_option(" t = /x/y.csv ") == ("t", "/x/y.csv")
    assert parse_table_option("t=s3://lake/t/") == ("t", "s3://lake/t/")
    for bad in ("t", "=p", "t=", " = "):
        with pytest.raises(ConfigError, match="must be NAME=PATH"):
            parse_table_option(bad)


def test_register_all_names_dir_entries_then_options(tmp_path: Path) -> None:
    root = _tables_dir(tmp_path / "t")
    target = Recorder()
    names = register_all(target, (f"again={root / 'people.csv'}",), str(root))
    assert names == ["events", "nums", "parts", "people", "again"]
    assert target.calls == [
        ("json", "events", str(root / "events.json")),
        ("parquet", "nums", str(root / "nums.parquet")),
        ("parquet", "parts", str(root / "parts")),
        ("csv", "people", str(root / "people.csv")),
        ("csv", "again", str(root / "people.csv")),
    ]


def test_register_refuses_missing_paths_and_dirs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="table t: no such file or directory"):
        register(Recorder(), "t", tmp_path / "nope.parquet")
    with pytest.raises(ConfigError, match="not a directory"):
        register_all(Recorder(), (), str(tmp_path / "nope"))


def test_register_format_picks_the_reader() -> None:
    target = Recorder()
    register_format(target, "csv", "t", "/x.csv")
    assert target.calls == [("csv", "t", "/x.csv")]


def test_a_session_context_and_the_catalog_are_registrars(tmp_path: Path) -> None:
    root = _tables_dir(tmp_path / "t")
    targets: list[Registrar] = [SessionContext(), Catalog()]
    for target in targets:
        register_all(target, (), str(root))
    ctx = targets[0]
    assert isinstance(ctx, SessionContext)
    assert ctx.sql("SELECT sum(a) AS s FROM nums").to_pydict() == {"s": [3]}
    catalog = targets[1]
    assert isinstance(catalog, Catalog)
    assert catalog.names == ["events", "nums", "parts", "people"]
    again = SessionContext()
    catalog.register(again)
    assert again.sql("SELECT count(*) AS n FROM parts").to_pydict() == {"n": [1]}
