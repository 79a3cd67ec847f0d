"""The SQL of each load mode: from the staged rows into the target table, in the load's transaction.

Append inserts every staged row; truncate deletes every row first, in the same transaction; merge
updates the rows whose keys match and whose values differ, then inserts the rows of new keys; scd2
closes the current versions whose row hash changed, then inserts a version for every key with none
current. Keys absent from the stage are left as they are. Each returns its counts (``run.extra``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ematix_flow.pipelines.targets.base import SCD2_COLUMNS
from ematix_flow.pipelines.targets.session import STAGE, Session, TableName, quote


def insert(session: Session, table: TableName, names: list[str], *, truncate: bool) -> dict[str, int]:
    """Append (or, with ``truncate``, replace) the table's rows with the staged ones."""
    target, columns = table.sql(), _column_list(names)
    counts = {"deleted": session.count(f"DELETE FROM {target}")} if truncate else {}
    statement = f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {quote(STAGE)}"
    counts["inserted"] = session.count(statement)
    return counts


def merge(
    session: Session,
    table: TableName,
    keys: list[str],
    names: list[str],
    total: int,
    *,
    distinct: Callable[[str, str], str],
) -> dict[str, int]:
    """Update the rows whose keys match and whose values differ; insert the rows of new keys.

    ``distinct(left, right)`` is the database's condition that two values differ, NULL counting as a value.
    """
    target, stage, match = table.sql(), quote(STAGE), _key_match(keys)
    updated = 0
    others = [name for name in names if name not in keys]
    if others:
        sets = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in others)
        changed = " OR ".join(distinct(f"t.{quote(c)}", f"s.{quote(c)}") for c in others)
        updated = session.count(
            f"UPDATE {target} AS t SET {sets} FROM {stage} AS s WHERE {match} AND ({changed})"
        )
    inserted = session.count(
        f"INSERT INTO {target} ({_column_list(names)}) SELECT {_column_list(names, 's')} "
        f"FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {match})"
    )
    return {"inserted": inserted, "updated": updated, "unchanged": total - inserted - updated}


def scd2(
    session: Session,
    table: TableName,
    keys: list[str],
    names: list[str],
    total: int,
    *,
    now: str,
    timestamptz: str,
) -> dict[str, int]:
    """Close the current versions whose row hash changed; insert versions for keys with none current.

    ``now`` is the SQL literal of the run's start (the versions' ``valid_from``, the closed ones'
    ``valid_to``), ``timestamptz`` the database's name of that type.
    """
    target, stage, match = table.sql(), quote(STAGE), _key_match(keys)
    valid_to, is_current, row_hash = quote("valid_to"), quote("is_current"), quote("row_hash")
    closed = session.count(
        f"UPDATE {target} AS t SET {valid_to} = {now}, {is_current} = FALSE FROM {stage} AS s "
        f"WHERE t.{is_current} AND {match} AND t.{row_hash} <> s.{row_hash}"
    )
    no_version = f"CAST(NULL AS {timestamptz})"
    inserted = session.count(
        f"INSERT INTO {target} ({_column_list([*names, *SCD2_COLUMNS])}) "
        f"SELECT {_column_list(names, 's')}, {now}, {no_version}, TRUE, s.{row_hash} FROM {stage} AS s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE t.{is_current} AND {match})"
    )
    return {"inserted": inserted, "closed": closed, "unchanged": total - inserted}


def _column_list(names: Sequence[str], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + quote(name) for name in names)


def _key_match(keys: Sequence[str]) -> str:
    return " AND ".join(f"t.{quote(key)} = s.{quote(key)}" for key in keys)
