"""SQL targets (DuckDB, SQLite, PostgreSQL): every load mode, run history, watermarks, failures.

Each test runs against a fresh database of each kind (a file in tmp_path, or a new database on the
session's private PostgreSQL server) and checks the exact rows the database holds afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest

from ematix_flow.errors import ConfigError, LoadError
from ematix_flow.pipelines.targets import open_target
from ematix_flow.pipelines.targets.base import LoadMode, RunRecord, Watermark
from ematix_flow.pipelines.targets.duckdb import DuckDBTarget
from ematix_flow.pipelines.targets.postgres import PostgresTarget
from ematix_flow.pipelines.targets.rows import row_hashes
from ematix_flow.pipelines.targets.session import quote
from ematix_flow.pipelines.targets.sql import SQLTarget
from ematix_flow.pipelines.targets.sqlite import SQLiteTarget

#: The postgres cases start a private PostgreSQL (tests/pgserver.py): integration tier.
POSTGRES = pytest.param("postgres", marks=pytest.mark.integration)
KINDS = ["duckdb", "sqlite", POSTGRES]
T1 = datetime(2024, 1, 1, tzinfo=UTC)
T2 = datetime(2024, 2, 1, 12, 30, tzinfo=UTC)
T3 = datetime(2024, 3, 1, tzinfo=UTC)
T4 = datetime(2024, 4, 1, tzinfo=UTC)


class Place:
    """One fresh database of a kind: makes targets on it and reads it back with the plain driver."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str | None) -> None:
        self.kind = kind
        self.path = tmp_path / f"warehouse.{kind}"
        self.dsn = dsn
        self.table = "orders" if kind == "sqlite" else "sales.orders"
        self.history = '"ematix_flow_run_history"' if kind == "sqlite" else '"ematix_flow"."run_history"'

    def target(self, table: str | None = None) -> SQLTarget:
        table = table or self.table
        if self.kind == "duckdb":
            return DuckDBTarget(self.path, table)
        if self.kind == "sqlite":
            return SQLiteTarget(self.path, table)
        assert self.dsn is not None
        return PostgresTarget(self.dsn, table)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "duckdb":
            with duckdb.connect(str(self.path)) as conn:  # via Arrow: TIMESTAMPTZ needs no pytz
                return [tuple(row.values()) for row in conn.execute(sql).to_arrow_table().to_pylist()]
        if self.kind == "sqlite":
            lite = sqlite3.connect(self.path)
            try:
                return lite.execute(sql).fetchall()
            finally:
                lite.close()
        assert self.dsn is not None
        with psycopg.connect(self.dsn) as pg:
            return pg.execute(sql).fetchall()

    def rows(self, columns: str = "*", table: str | None = None, order: str = "1") -> list[tuple[Any, ...]]:
        name = table or self.table
        qualified = ".".join(quote(part) for part in name.split("."))
        return self.query(f"SELECT {columns} FROM {qualified} ORDER BY {order}")

    def history_rows(self) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT pipeline, target_table, mode, status, rows_read, rows_written, error, "
            f"watermark_column, watermark, watermark_type, extra FROM {self.history} ORDER BY started"
        )


@pytest.fixture(params=KINDS)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    dsn = request.getfixturevalue("postgres_db") if request.param == "postgres" else None
    yield Place(request.param, tmp_path, dsn)


def record(mode: LoadMode, started: datetime = T1, **fields: Any) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4().hex,
        pipeline="orders_daily",
        target_table="",
        mode=mode,
        started=started,
        **fields,
    )


def orders(ids: list[int], names: list[str], amounts: list[str | None] | None = None) -> pa.Table:
    amounts = amounts if amounts is not None else [f"{i}.50" for i in ids]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array(names, pa.string()),
            "amount": pa.array([Decimal(a) if a else None for a in amounts], pa.decimal128(10, 2)),
        }
    )


def moment(value: Any) -> datetime | None:
    """A timestamp as read from any of the three databases, as an aware UTC datetime."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(parsed, datetime) and parsed.tzinfo is not None
    return parsed.astimezone(UTC)


def money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def scd2_rows(place: Place) -> list[tuple[Any, ...]]:
    """(id, name, valid_from, valid_to, is_current, row_hash) in key and version order."""
    rows = place.rows("id, name, valid_from, valid_to, is_current, row_hash", order="id, valid_from")
    return [(i, n, moment(vf), moment(vt), bool(cur), h) for i, n, vf, vt, cur, h in rows]


def hash_of(**columns: Any) -> str:
    """The documented row hash encoding, written out independently of the code under test."""
    text = json.dumps([[k, columns[k]] for k in sorted(columns)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------- modes
def test_append_twice_keeps_both_loads(place: Place) -> None:
    target = place.target()
    run = target.load(orders([1, 2], ["a", "b"]), "append", [], record("append", rows_read=2))
    assert (run.rows_written, run.extra, run.status) == (2, {"inserted": 2}, "success")
    assert run.ended is not None and run.ended >= run.started
    target.load(orders([2, 3], ["b", "c"]), "append", [], record("append", T2))
    assert [(i, n, money(a)) for i, n, a in place.rows(order="id, name")] == [
        (1, "a", Decimal("1.50")),
        (2, "b", Decimal("2.50")),
        (2, "b", Decimal("2.50")),
        (3, "c", Decimal("3.50")),
    ]
    history = place.history_rows()
    assert [h[:6] for h in history] == [
        ("orders_daily", place.table, "append", "success", 2, 2),
        ("orders_daily", place.table, "append", "success", 0, 2),
    ]
    assert json.loads(history[0][-1]) == {"inserted": 2}


def test_append_of_no_rows_creates_the_table(place: Place) -> None:
    run = place.target().load(orders([], []), "append", [], record("append"))
    assert run.rows_written == 0
    assert place.rows() == []


def test_truncate_replaces_every_row(place: Place) -> None:
    target = place.target()
    target.load(orders([1, 2, 3], ["a", "b", "c"]), "append", [], record("append"))
    run = target.load(orders([7, 8], ["x", "y"]), "truncate", [], record("truncate", T2))
    assert run.extra == {"deleted": 3, "inserted": 2} and run.rows_written == 2
    assert place.rows("id, name") == [(7, "x"), (8, "y")]
    run = target.load(orders([9], ["z"]), "truncate", [], record("truncate", T3))
    assert run.extra == {"deleted": 2, "inserted": 1}
    assert place.rows("id, name") == [(9, "z")]


def test_merge_updates_matching_keys_and_inserts_new_ones(place: Place) -> None:
    target = place.target()
    first = target.load(orders([1, 2, 3], ["a", "b", "c"]), "merge", ["id"], record("merge"))
    assert first.extra == {"inserted": 3, "updated": 0, "unchanged": 0}
    data = orders([2, 3, 4], ["B", "c", "d"], ["2.50", "3.50", None])
    run = target.load(data, "merge", ["id"], record("merge", T2))
    assert run.extra == {"inserted": 1, "updated": 1, "unchanged": 1}
    assert run.rows_written == 2
    assert [(i, n, money(a)) for i, n, a in place.rows(order="id")] == [
        (1, "a", Decimal("1.50")),  # absent from the second load: kept
        (2, "B", Decimal("2.50")),
        (3, "c", Decimal("3.50")),
        (4, "d", None),
    ]
    # a NULL that becomes a value, and a value that becomes NULL, are both changes
    run = target.load(orders([3, 4], ["c", "d"], [None, "4.00"]), "merge", ["id"], record("merge", T3))
    assert run.extra == {"inserted": 0, "updated": 2, "unchanged": 0}
    assert [money(a) for (a,) in place.rows("amount", order="id")] == [
        Decimal("1.50"),
        Decimal("2.50"),
        None,
        Decimal("4.00"),
    ]


def test_merge_on_composite_keys_and_keys_only_tables(place: Place) -> None:
    target = place.target()
    data = pa.table({"region": ["eu", "eu", "us"], "id": [1, 2, 1], "qty": [10, 20, 30]})
    target.load(data, "merge", ["region", "id"], record("merge"))
    again = pa.table({"region": ["us", "us"], "id": [1, 2], "qty": [31, 40]})
    run = target.load(again, "merge", ["region", "id"], record("merge", T2))
    assert run.extra == {"inserted": 1, "updated": 1, "unchanged": 0}
    assert place.rows(order="region, id") == [("eu", 1, 10), ("eu", 2, 20), ("us", 1, 31), ("us", 2, 40)]
    keys_only = place.target(place.table + "_keys")
    keys_only.load(pa.table({"id": [1, 2]}), "merge", ["id"], record("merge"))
    run = keys_only.load(pa.table({"id": [2, 3]}), "merge", ["id"], record("merge", T2))
    assert run.extra == {"inserted": 1, "updated": 0, "unchanged": 1}
    assert place.rows(table=place.table + "_keys") == [(1,), (2,), (3,)]


def test_scd2_versions_over_three_runs(place: Place) -> None:
    target = place.target()
    run = target.load(orders([1, 2, 3], ["a", "b", "c"]), "scd2", ["id"], record("scd2", T1))
    assert run.extra == {"inserted": 3, "closed": 0, "unchanged": 0}
    first = scd2_rows(place)
    assert [(i, n, vf, vt, cur) for i, n, vf, vt, cur, _ in first] == [
        (1, "a", T1, None, True),
        (2, "b", T1, None, True),
        (3, "c", T1, None, True),
    ]
    hashes = {i: h for i, *_, h in first}
    assert hashes[1] == hash_of(amount="1.50", name="a")

    # key 1 unchanged, key 2 changed, key 3 absent, key 4 new
    run = target.load(orders([1, 2, 4], ["a", "B", "d"]), "scd2", ["id"], record("scd2", T2))
    assert run.extra == {"inserted": 2, "closed": 1, "unchanged": 1}
    assert run.rows_written == 3
    second = scd2_rows(place)
    assert [(i, n, vf, vt, cur) for i, n, vf, vt, cur, _ in second] == [
        (1, "a", T1, None, True),
        (2, "b", T1, T2, False),
        (2, "B", T2, None, True),
        (3, "c", T1, None, True),
        (4, "d", T2, None, True),
    ]
    assert second[0][5] == hashes[1] and second[1][5] == hashes[2] and second[2][5] != hashes[2]

    # key 2 goes back to its first values: a third version, hashing like the first
    run = target.load(orders([2], ["b"]), "scd2", ["id"], record("scd2", T3))
    assert run.extra == {"inserted": 1, "closed": 1, "unchanged": 0}
    versions = [row for row in scd2_rows(place) if row[0] == 2]
    assert [(n, vf, vt, cur) for _, n, vf, vt, cur, _ in versions] == [
        ("b", T1, T2, False),
        ("B", T2, T3, False),
        ("b", T3, None, True),
    ]
    assert versions[2][5] == versions[0][5] == hashes[2]

    # only the current version closes: the closed ones keep their valid_to
    target.load(orders([2], ["bee"]), "scd2", ["id"], record("scd2", T4))
    versions = [row for row in scd2_rows(place) if row[0] == 2]
    assert [(n, vf, vt, cur) for _, n, vf, vt, cur, _ in versions] == [
        ("b", T1, T2, False),
        ("B", T2, T3, False),
        ("b", T3, T4, False),
        ("bee", T4, None, True),
    ]
    assert len(place.rows()) == 7


def test_unchanged_rows_are_not_rewritten_in_postgres(postgres_db: str) -> None:
    """PostgreSQL's xmin is the transaction that last wrote a row: it must not move for unchanged rows."""
    place = Place("postgres", Path("/nonexistent"), postgres_db)
    for mode in ("merge", "scd2"):
        target = place.target(f"sales.{mode}")
        target.load(orders([1, 2], ["a", "b"]), mode, ["id"], record(mode, T1))
        before = place.rows("id, xmin::text", table=f"sales.{mode}")
        target.load(orders([1, 2], ["a", "B"]), mode, ["id"], record(mode, T2))
        after = place.rows("id, xmin::text", table=f"sales.{mode}", order="id, xmin::text::bigint")
        assert after[0] == before[0], mode  # key 1: untouched
        assert before[1] not in after, mode  # key 2: rewritten (merge) or closed (scd2)


def test_postgres_rewrites_wait_for_other_writers(postgres_db: str) -> None:
    """Truncate, merge and scd2 lock the table against concurrent writers; append does not need to."""
    target = PostgresTarget(postgres_db, "sales.orders")
    target.load(orders([1], ["a"]), "append", [], record("append"))
    impatient = PostgresTarget(postgres_db + " options='-c lock_timeout=200'", "sales.orders")
    with psycopg.connect(postgres_db) as other:
        other.execute("INSERT INTO sales.orders VALUES (99, 'uncommitted', NULL)")  # holds ROW EXCLUSIVE
        impatient.load(orders([2], ["b"]), "append", [], record("append"))
        for mode in ("truncate", "merge"):
            with pytest.raises(LoadError, match=r"lock timeout"):
                impatient.load(orders([3], ["c"]), mode, ["id"] if mode == "merge" else [], record(mode))
        other.rollback()
    impatient.load(orders([3], ["c"]), "merge", ["id"], record("merge"))
    assert [i for (i,) in Place("postgres", Path("/nonexistent"), postgres_db).rows("id")] == [1, 2, 3]


def test_row_hash_is_pinned_and_ignores_keys_and_column_order() -> None:
    data = pa.table(
        {
            "id": [1],
            "when": pa.array([datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))]),
            "day": pa.array([date(2024, 5, 1)]),
            "note": ['say "hi" — ü 雪'],
            "price": pa.array([Decimal("1.50")], pa.decimal128(10, 2)),
            "ok": [True],
            "score": [0.1],
            "missing": pa.array([None], pa.int64()),
        }
    )
    expected = hash_of(
        day="2024-05-01",
        missing=None,
        note='say "hi" — ü 雪',
        ok=True,
        price="1.50",
        score=0.1,
        when="2024-05-01T12:00:00+00:00",
    )
    assert row_hashes(data, ["id"]).to_pylist() == [expected]
    reordered = data.select(["score", "id", "note", "ok", "day", "price", "missing", "when"])
    assert row_hashes(reordered, ["id"]).to_pylist() == [expected]
    other_key = data.set_column(0, "id", pa.array([2]))
    assert row_hashes(other_key, ["id"]).to_pylist() == [expected]


# ---------------------------------------------------------------------------------- history, watermark
def test_history_and_last_watermark(place: Place) -> None:
    target = place.target()
    assert target.last_watermark("orders_daily", "id") is None
    if place.kind != "postgres":
        assert not place.path.exists()  # reading the watermark creates nothing
    target.load(orders([1], ["a"]), "append", [], record("append", T1))
    assert target.last_watermark("orders_daily", "id") is None  # runs without a watermark
    marked = record("append", T2, watermark_column="id", watermark="5", watermark_type="int64")
    target.load(orders([5], ["e"]), "append", [], marked)
    expected = Watermark(column="id", value="5", arrow_type="int64")
    assert target.last_watermark("orders_daily", "id") == expected
    empty = record("append", T2 + timedelta(hours=1), watermark_column="id")  # a run that read no rows
    target.load(orders([], []), "append", [], empty)
    assert target.last_watermark("orders_daily", "id") == expected
    assert target.last_watermark("orders_daily", "other") is None
    assert target.last_watermark("someone_else", "id") is None
    assert place.target(place.table + "_2").last_watermark("orders_daily", "id") is None
    failed = record("append", T3, watermark_column="id", watermark="9", watermark_type="int64")
    failed.error = "boom"
    target.record_failure(failed)
    assert target.last_watermark("orders_daily", "id") == expected  # failed runs do not count
    later = record("append", T3 + timedelta(hours=1), watermark_column="id", watermark="7")
    later.watermark_type = "int64"
    target.load(orders([7], ["g"]), "append", [], later)
    assert target.last_watermark("orders_daily", "id") == Watermark("id", "7", "int64")
    history = place.history_rows()
    assert [(h[3], h[5], h[6], h[8]) for h in history] == [
        ("success", 1, None, None),
        ("success", 1, None, "5"),
        ("success", 0, None, None),
        ("failed", 0, "boom", "9"),
        ("success", 1, None, "7"),
    ]


def test_history_table_is_not_created_by_last_watermark_in_postgres(postgres_db: str) -> None:
    target = PostgresTarget(postgres_db, "t")
    assert target.last_watermark("p", "id") is None
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT to_regnamespace('ematix_flow')").fetchone() == (None,)


# ---------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("mode", ["append", "truncate", "merge", "scd2"])
def test_a_failing_load_changes_nothing(place: Place, mode: LoadMode) -> None:
    """The rows are written, then the history insert fails (same run id twice): all rolled back."""
    target = place.target()
    keys = ["id"] if mode in ("merge", "scd2") else []
    first = record(mode, T1)
    target.load(orders([1, 2], ["a", "b"]), mode, keys, first)
    table, history = place.rows(), place.history_rows()
    again = record(mode, T2)
    again.run_id = first.run_id
    with pytest.raises(LoadError, match=r"load failed: .*nothing was written") as caught:
        target.load(orders([2, 3], ["B", "c"]), mode, keys, again)
    assert "\n" not in str(caught.value)
    assert place.rows() == table and place.history_rows() == history
    assert again.ended is None and again.rows_written == 0  # the record is only filled in on success


def test_duplicate_and_null_merge_keys_are_refused(place: Place) -> None:
    target = place.target()
    target.load(orders([1], ["a"]), "merge", ["id"], record("merge"))
    table, history = place.rows(), place.history_rows()
    for mode in ("merge", "scd2"):
        with pytest.raises(LoadError, match=r"key \(id=7\) appears 2 times .* make the keys unique"):
            target.load(orders([7, 7, 1], ["x", "y", "z"]), mode, ["id"], record(mode))
    nulls = pa.table({"id": pa.array([1, None], pa.int64()), "name": ["a", "b"]})
    with pytest.raises(LoadError, match=r"key column 'id' is NULL in 1 rows"):
        target.load(nulls, "merge", ["id"], record("merge"))
    assert place.rows() == table and place.history_rows() == history


@pytest.mark.parametrize("kind", ["duckdb", POSTGRES])
def test_a_type_mismatch_is_a_load_error(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("postgres_db") if kind == "postgres" else None
    place = Place(kind, tmp_path, dsn)
    target = place.target()
    target.load(pa.table({"id": [1], "qty": [5]}), "append", [], record("append"))
    with pytest.raises(LoadError, match=place.kind):
        target.load(pa.table({"id": [2], "qty": ["many"]}), "append", [], record("append"))
    assert place.rows() == [(1, 5)]
    assert len(place.history_rows()) == 1


def test_record_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a-folder.duckdb").mkdir()
    run = record("append", error="the source vanished")
    broken = [
        DuckDBTarget(tmp_path / "a-folder.duckdb", "t"),
        PostgresTarget("host=127.0.0.1 port=1 dbname=x connect_timeout=2", "t"),
    ]
    with caplog.at_level(logging.WARNING, logger="ematix_flow.pipelines.targets.sql"):
        for target in broken:
            target.record_failure(run)
    assert len([r for r in caplog.records if "could not record failed run" in r.getMessage()]) == 2


def test_columns_must_match_an_existing_table(place: Place) -> None:
    target = place.target()
    target.load(orders([1], ["a"]), "append", [], record("append"))
    renamed = orders([2], ["b"]).rename_columns(["id", "label", "amount"])
    with pytest.raises(ConfigError, match=r"the table lacks \[label\] and has extra \[name\]"):
        target.load(renamed, "append", [], record("append"))
    with pytest.raises(ConfigError, match=r"lacks \[valid_from, valid_to, is_current, row_hash\]"):
        target.load(orders([2], ["b"]), "scd2", ["id"], record("scd2"))
    assert place.rows("id") == [(1,)]


def test_keys_and_modes_are_checked(place: Place) -> None:
    target = place.target()
    with pytest.raises(ConfigError, match=r"mode 'merge' needs keys = \[\.\.\.\]"):
        target.check("merge", [])
    with pytest.raises(ConfigError, match=r"mode 'scd2' needs keys"):
        target.load(orders([1], ["a"]), "scd2", [], record("scd2"))
    target.check("append", [])
    target.check("scd2", ["id"])
    with pytest.raises(ConfigError, match=r"keys nope are not columns of the result \(id, name, amount\)"):
        target.load(orders([1], ["a"]), "merge", ["nope"], record("merge"))
    clash = pa.table({"id": [1], "valid_from": ["x"]})
    with pytest.raises(ConfigError, match=r"columns valid_from, which scd2 adds itself"):
        target.load(clash, "scd2", ["id"], record("scd2"))
    with pytest.raises(ConfigError, match=r"column 'tags' has type list<item: int64>.*cast it"):
        target.load(pa.table({"id": [1], "tags": [[1, 2]]}), "append", [], record("append"))
    assert target.last_watermark("orders_daily", "id") is None  # nothing ran


# ---------------------------------------------------------------------------------- names and types
def test_identifiers_are_quoted(place: Place) -> None:
    table = 'Order "Items" 100%' if place.kind == "sqlite" else 'My Schema.Order "Items" 100%'
    target = place.target(table)
    data = pa.table({"select": [1, 2], 'a "quoted" col': ["x", "y"], "Mixed Case": [True, False]})
    target.load(data, "merge", ["select"], record("merge"))
    changed = pa.table({"select": [2, 3], 'a "quoted" col': ["Y", "z"], "Mixed Case": [False, True]})
    run = target.load(changed, "merge", ["select"], record("merge", T2))
    assert run.extra == {"inserted": 1, "updated": 1, "unchanged": 0}
    assert [(k, v, bool(b)) for k, v, b in place.rows(table=table)] == [
        (1, "x", True),
        (2, "Y", False),
        (3, "z", True),
    ]
    history = place.target(table + " v2")
    history.load(data, "scd2", ["select"], record("scd2"))
    history.load(changed, "scd2", ["select"], record("scd2", T2))
    assert len(place.rows(table=table + " v2")) == 4


def test_types_round_trip(place: Place) -> None:
    wall = datetime(2024, 2, 29, 13, 14, 15, 123456)
    text = 'it\'s "quoted";\n -- ü 雪 \\ %s'
    data = pa.table(
        {
            "i8": pa.array([-8], pa.int8()),
            "i32": pa.array([2**31 - 1], pa.int32()),
            "i64": pa.array([2**62], pa.int64()),
            "u32": pa.array([2**32 - 1], pa.uint32()),
            "f64": pa.array([0.1], pa.float64()),
            "dec": pa.array([Decimal("-12345.678")], pa.decimal128(12, 3)),
            "txt": pa.array([text], pa.large_string()),
            "flag": [True],
            "day": pa.array([date(2024, 2, 29)], pa.date32()),
            "at": pa.array([wall], pa.timestamp("ns")),
            "at_tz": pa.array([wall.replace(tzinfo=UTC)], pa.timestamp("ms", tz="+01:00")),
            "clock": pa.array([time(23, 59, 58)], pa.time64("us")),
            "blob": pa.array([b"\x00\xff'"], pa.binary()),
            "cat": pa.array(["a"]).dictionary_encode(),
            "nothing": pa.array([None], pa.int32()),
        }
    )
    place.target().load(data, "append", [], record("append"))
    (row,) = place.rows()
    at_tz = datetime(2024, 2, 29, 13, 14, 15, 123000, tzinfo=UTC)
    if place.kind == "sqlite":
        expected: tuple[Any, ...] = (
            -8, 2**31 - 1, 2**62, 2**32 - 1, 0.1, "-12345.678", text, 1, "2024-02-29",
            "2024-02-29 13:14:15.123456", "2024-02-29 13:14:15.123000+00:00", "23:59:58",
            b"\x00\xff'", "a", None,
        )  # fmt: skip
        assert row == expected
        return
    expected = (
        -8, 2**31 - 1, 2**62, 2**32 - 1, 0.1, Decimal("-12345.678"), text, True, date(2024, 2, 29),
        wall, at_tz, time(23, 59, 58), b"\x00\xff'", "a", None,
    )  # fmt: skip
    assert row[:10] == expected[:10]
    assert moment(row[10]) == at_tz
    assert (row[11], bytes(row[12]), row[13], row[14]) == expected[11:]


def test_nanoseconds_that_would_be_lost_are_refused(place: Place) -> None:
    data = pa.table({"at": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))})
    with pytest.raises(LoadError, match=r"column 'at' cannot be stored as timestamp\[us\]"):
        place.target().load(data, "append", [], record("append"))


# ---------------------------------------------------------------------------------- construction
def test_open_target_resolves_paths_and_checks_settings(tmp_path: Path) -> None:
    duck = open_target("duckdb", path="out/w.duckdb", table="a.b", dsn=None, base_dir=tmp_path)
    assert isinstance(duck, DuckDBTarget) and duck.path == tmp_path / "out/w.duckdb"
    assert duck.describe() == f"duckdb {tmp_path / 'out/w.duckdb'} table a.b"
    lite = open_target("sqlite", path=str(tmp_path / "x.sqlite"), table="t", dsn=None, base_dir=Path("/"))
    assert isinstance(lite, SQLiteTarget) and lite.path == tmp_path / "x.sqlite"
    pg = open_target(
        "postgres", path=None, table="t", dsn="postgresql://etl:s3cret@db:5433/shop", base_dir=tmp_path
    )
    assert pg.describe() == "postgres host=db port=5433 dbname=shop user=etl table t"
    with pytest.raises(ConfigError, match=r'a postgres target needs dsn \(e.g. dsn = "postgresql://'):
        open_target("postgres", path=None, table="t", dsn=None, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"a sqlite target needs table"):
        open_target("sqlite", path="x.sqlite", table=None, dsn=None, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"'mysql' is not one of duckdb, sqlite, postgres, parquet"):
        open_target("mysql", path=None, table=None, dsn=None, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"sqlite has no schemas, use a bare table name"):
        SQLiteTarget(tmp_path / "x.sqlite", "a.b")
    with pytest.raises(ConfigError, match=r'use "table" or "schema.table"'):
        DuckDBTarget(tmp_path / "x.duckdb", "a.b.c")
    with pytest.raises(ConfigError, match=r"dsn is not a valid connection string"):
        PostgresTarget("host=db port", "t")
    assert not list(tmp_path.iterdir())  # constructing targets opens and creates nothing


def test_open_target_parquet(tmp_path: Path) -> None:
    parquet = pytest.importorskip("ematix_flow.pipelines.targets.parquet")
    target = open_target("parquet", path="out/orders", table=None, dsn=None, base_dir=tmp_path)
    assert isinstance(target, parquet.ParquetTarget)


@pytest.mark.parametrize("kind", ["duckdb", POSTGRES])
def test_values_that_do_not_fit_an_existing_column_are_refused(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    target: Any
    if kind == "postgres":
        target = PostgresTarget(request.getfixturevalue("postgres_db"), "fit")
    else:
        target = DuckDBTarget(tmp_path / "w.duckdb", "fit")
    first = pa.table({"id": pa.array([1, 2], pa.int64()), "v": pa.array([10, 20], pa.int64())})
    target.load(first, "append", [], record("append"))
    # whole floats fit the BIGINT column; 1.6 does not (a database would round it silently)
    target.load(pa.table({"id": [3], "v": [30.0]}), "append", [], record("append"))
    with pytest.raises(
        LoadError, match=r"column 'v': the result's double values do not fit the table's int64"
    ):
        target.load(pa.table({"id": [4], "v": [1.6]}), "merge", ["id"], record("merge"))
