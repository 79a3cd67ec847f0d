"""``CREATE EXTERNAL TABLE``: the one statement that changes what a Flight SQL session sees.

A gateway registers such a table for the session by path, exactly as ``--table NAME=PATH`` does
(peers read files by path), instead of letting DataFusion run the DDL while it plans: that way the
location is checked against the worker's ``--data-root`` first, and nothing else about the planner's
state can be changed by a client.

Example:
    >>> CreateTable.parse("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/data/t.parquet'")
    CreateTable(name='t', kind='parquet', location='/data/t.parquet', replace=False, if_not_exists=False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ematix_flow.errors import QueryError
from ematix_flow.urls import is_url

KINDS = ("parquet", "csv", "json", "delta", "iceberg")
_START = re.compile(r"\s*CREATE\s+(OR\s+REPLACE\s+)?(UNBOUNDED\s+)?EXTERNAL\s+TABLE\b", re.IGNORECASE)
_STATEMENT = re.compile(
    r"""\s*CREATE\s+(?P<replace>OR\s+REPLACE\s+)?EXTERNAL\s+TABLE\s+
    (?P<ine>IF\s+NOT\s+EXISTS\s+)?
    (?P<name>"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)\s+
    STORED\s+AS\s+(?P<kind>[A-Za-z]+)\s+
    LOCATION\s+'(?P<location>(?:[^']|'')*)'
    \s*;?\s*""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_FORM = (
    "CREATE [OR REPLACE] EXTERNAL TABLE [IF NOT EXISTS] name "
    "STORED AS PARQUET|CSV|JSON|DELTA|ICEBERG LOCATION '/abs/path'"
)


def _quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class CreateTable:
    """A parsed ``CREATE EXTERNAL TABLE``: register ``location`` as table ``name`` for the session."""

    name: str
    kind: str  # parquet | csv | json | delta | iceberg
    location: str  # an absolute path on the peer, or an object-store URL
    replace: bool = False
    if_not_exists: bool = False

    @classmethod
    def parse(cls, sql: str) -> CreateTable | None:
        """The statement, or None when ``sql`` is not a CREATE EXTERNAL TABLE.

        Raises:
            QueryError: it is one, but not of the supported form (column lists, OPTIONS, partitioning,
                other formats, a relative location).
        """
        if not _START.match(sql):
            return None
        m = _STATEMENT.fullmatch(sql)
        if m is None:
            raise QueryError(f"unsupported CREATE EXTERNAL TABLE: the form served is {_FORM}")
        raw = m.group("name")
        name = raw[1:-1].replace('""', '"') if raw.startswith('"') else raw.lower()  # as DataFusion names it
        kind = m.group("kind").lower()
        location = m.group("location").replace("''", "'")
        if kind not in KINDS:
            raise QueryError(
                f"CREATE EXTERNAL TABLE ... STORED AS {kind.upper()}: "
                "use PARQUET, CSV, JSON, DELTA or ICEBERG"
            )
        if kind == "iceberg" and not location.startswith("iceberg://"):
            raise QueryError(
                f"CREATE EXTERNAL TABLE {name} STORED AS ICEBERG: LOCATION must be "
                "'iceberg://CATALOG/namespace.table' (a catalog of the peer's --storage file)"
            )
        if kind != "iceberg" and not location.startswith("/") and not is_url(location):
            raise QueryError(
                f"CREATE EXTERNAL TABLE {name}: LOCATION {location!r} must be an absolute path "
                "(every peer reads the files at that same path) or an object-store URL (s3://...)"
            )
        return cls(name, kind, location, bool(m.group("replace")), bool(m.group("ine")))

    def to_sql(self) -> str:
        """The statement as text (names quoted, so their case is kept)."""
        head = "CREATE OR REPLACE EXTERNAL TABLE" if self.replace else "CREATE EXTERNAL TABLE"
        if self.if_not_exists:
            head += " IF NOT EXISTS"
        location = self.location.replace("'", "''")
        return f"{head} {_quote_name(self.name)} STORED AS {self.kind.upper()} LOCATION '{location}'"
