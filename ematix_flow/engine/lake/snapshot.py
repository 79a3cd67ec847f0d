"""A lake table's snapshot as the planner needs it: columns, data files and what is known of each."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from ematix_flow.engine.lake.pruning import FileFacts


@dataclass(frozen=True)
class LakeColumn:
    """One column of the table, in the table's order."""

    name: str  # as SQL sees it
    physical: str  # as the data files name it (Delta column mapping: ``col-<uuid>``)
    type: pa.DataType
    partition: bool = False  # its values come from the table's metadata, not from the files


@dataclass(frozen=True)
class SnapshotFile:
    """One data file of the snapshot."""

    url: str  # absolute: "/data/t/part-0.parquet" or "s3://lake/t/part-0.parquet"
    size: int
    facts: FileFacts = field(default_factory=FileFacts)  # keyed by physical column name


@dataclass(frozen=True)
class Snapshot:
    """One version of a lake table."""

    kind: str  # "delta" or "iceberg"
    uri: str  # the table's location (Delta) or catalog name (Iceberg)
    version: int  # Delta version or Iceberg snapshot id
    columns: tuple[LakeColumn, ...]
    files: tuple[SnapshotFile, ...]

    @property
    def partition_columns(self) -> list[LakeColumn]:
        """The partition columns, in the table's order."""
        return [c for c in self.columns if c.partition]

    @property
    def describe(self) -> str:
        """``delta /data/orders v3`` / ``iceberg sales.orders @123``."""
        at = f"v{self.version}" if self.kind == "delta" else f"@{self.version}"
        return f"{self.kind} {self.uri} {at}"
