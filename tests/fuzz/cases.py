"""Regression cases: a minimised difference saved as a small JSON file under tests/fuzz/cases/.

A case holds the tables (columns with their Arrow type names and values, and how many Parquet files
each is written as), the SQL, the partition count it was found with, what DataFusion answered and
what the mesh did. ``tests/test_query_fuzz.py`` replays every case on a mesh.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.fuzz.tables import TYPES, Column, Table, World

__all__ = ["CASES_DIR", "Case", "answer_json", "datafusion_bug_families", "load_cases"]

CASES_DIR = Path(__file__).parent / "cases"


@dataclass
class Case:
    """One saved difference."""

    name: str
    family: str
    sql: str
    partitions: int
    tables: list[Table]
    datafusion: dict[str, Any] = field(default_factory=dict)  # {"columns": [...], "rows": [[...]]}
    mesh: dict[str, Any] = field(default_factory=dict)  # {"error": ...} or {"rows": .., "difference": ..}
    found: dict[str, Any] = field(default_factory=dict)  # seed, world, query, original SQL
    check: str = "rows"  # "rows", or "count" for a LIMIT without ORDER BY
    #: For a bug in DataFusion itself (its default answer is wrong or depends on timing): the settings
    #: with which single-process DataFusion answers right, and what the bug is. The replay compares
    #: the mesh with DataFusion under these settings.
    reference_settings: dict[str, str] = field(default_factory=dict)
    datafusion_bug: str = ""

    @property
    def world(self) -> World:
        """The case's tables as a world."""
        return World(0, self.tables)

    def to_json(self) -> str:
        """The case as JSON text (values encoded by ``_encode``)."""
        doc = {
            "name": self.name,
            "family": self.family,
            "sql": self.sql,
            "partitions": self.partitions,
            "check": self.check,
            "tables": [
                {
                    "name": t.name,
                    "files": t.files,
                    "columns": [
                        {"name": c.name, "type": c.type, "values": [_encode(v) for v in c.values]}
                        for c in t.columns
                    ],
                }
                for t in self.tables
            ],
            "datafusion": self.datafusion,
            "mesh": self.mesh,
            "found": self.found,
        }
        if self.reference_settings:
            doc["reference_settings"] = self.reference_settings
            doc["datafusion_bug"] = self.datafusion_bug
        return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Case:
        """A case from its JSON text."""
        doc = json.loads(text)
        tables = [
            Table(
                t["name"],
                [
                    Column(
                        c["name"], c["type"], [_decode(c["type"], v) for v in c["values"]], c["name"] == "id"
                    )
                    for c in t["columns"]
                ],
                t["files"],
            )
            for t in doc["tables"]
        ]
        return cls(
            doc["name"],
            doc["family"],
            doc["sql"],
            doc["partitions"],
            tables,
            doc.get("datafusion", {}),
            doc.get("mesh", {}),
            doc.get("found", {}),
            doc.get("check", "rows"),
            doc.get("reference_settings", {}),
            doc.get("datafusion_bug", ""),
        )

    def save(self, folder: Path) -> Path:
        """Write the case as ``<folder>/<name>.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(self.to_json())
        return path


def load_cases(folder: Path = CASES_DIR) -> list[Case]:
    """Every case saved in ``folder``, by name."""
    return [Case.from_json(p.read_text()) for p in sorted(folder.glob("*.json"))]


def datafusion_bug_families(cases: list[Case]) -> frozenset[str]:
    """The families of saved bugs in DataFusion itself: a new difference of one is not the mesh's."""
    return frozenset(c.family for c in cases if c.reference_settings)


def case_name(family: str, folder: Path) -> str:
    """A file name for a new case of ``family`` not yet used in ``folder``."""
    base = re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-")[:60] or "case"
    name, n = base, 1
    while (folder / f"{name}.json").exists():
        n += 1
        name = f"{base}-{n}"
    return name


# ------------------------------------------------------------------------------------- values
def _encode(v: Any) -> Any:
    """A value as JSON: non-finite floats and decimals as text, dates and times as ISO text."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf", "-inf"
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    return v


def _decode(type_name: str, v: Any) -> Any:
    """A column value from JSON (timestamps are stored as integers in the type's unit)."""
    if v is None:
        return None
    kind = TYPES[type_name][1]
    if kind == "float":
        return float(v)
    if kind == "dec":
        return Decimal(v)
    if kind == "date":
        return dt.date.fromisoformat(v)
    return v


def answer_json(table: pa.Table, limit: int = 50) -> dict[str, Any]:
    """An answer for a case file: column names and types and (the first ``limit``) rows."""
    columns = [c.to_pylist() for c in table.slice(0, limit).columns]
    rows = [[_encode(v) for v in row] for row in zip(*columns, strict=True)] if columns else []
    doc: dict[str, Any] = {
        "columns": [f"{f.name}: {f.type}" for f in table.schema],
        "rows": rows,
    }
    if table.num_rows > limit:
        doc["rows_total"] = table.num_rows
    return doc
