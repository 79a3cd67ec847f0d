"""The Flight SQL codec, DDL parsing, metadata tables and statement handles, without processes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from ematix_flow import protobuf
from ematix_flow.errors import AccessDeniedError, ProtocolError, QueryError
from ematix_flow.flightsql import metadata
from ematix_flow.flightsql.ddl import CreateTable
from ematix_flow.flightsql.protocol import (
    MESSAGES,
    ActionCreatePreparedStatementResult,
    CommandGetCrossReference,
    CommandGetDbSchemas,
    CommandGetSqlInfo,
    CommandGetTables,
    CommandStatementQuery,
    TicketStatementQuery,
    is_flight_sql,
    pack,
    session_from_cookies,
    unpack,
)
from ematix_flow.transport.messages import OutputRef
from ematix_flow.worker.catalog import Catalog
from ematix_flow.worker.gateway import EMPTY, MAX_HANDLES, Gateway, Statement
from ematix_flow.worker.policy import AccessPolicy

SAMPLES = [
    CommandStatementQuery(query="SELECT 'é'", transaction_id=b""),
    TicketStatementQuery(statement_handle=b"\x00\xff" * 8),
    CommandGetSqlInfo(info=(0, 1, 504, 100000)),
    CommandGetDbSchemas(catalog="", db_schema_filter_pattern="p%"),
    CommandGetTables(catalog="datafusion", table_types=("TABLE", "VIEW"), include_schema=True),
    CommandGetCrossReference(pk_table="a", fk_catalog="c", fk_table="b"),
    ActionCreatePreparedStatementResult(prepared_statement_handle=b"h", dataset_schema=b"s"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_any(message: object) -> None:
    name, payload = unpack(message.pack())  # type: ignore[attr-defined]
    assert name == type(message).__name__
    assert MESSAGES[name].from_bytes(payload) == message


def test_proto3_presence_and_repeated_fields() -> None:
    assert CommandGetDbSchemas.from_bytes(b"") == CommandGetDbSchemas(None, None)  # optional: absent is None
    assert CommandGetDbSchemas(catalog="").to_bytes() == b"\x0a\x00"  # present, though empty
    assert CommandGetTables().to_bytes() == b""  # plain scalars at their default are left out
    assert CommandGetSqlInfo.from_bytes(b"\x08\x05\x08\x07").info == (5, 7)  # unpacked repeated uint32
    assert CommandGetSqlInfo.from_bytes(b"\x0a\x03\x00\xf8\x03").info == (0, 504)  # packed
    assert (
        CommandStatementQuery.from_bytes(b"\x0a\x01x\x18\x07\x22\x01y").query == "x"
    )  # unknown fields skipped


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x0a\x05ab", "truncated"),
        (b"\x0a\x02\xff\xfe", "not UTF-8"),
        (b"\x08\x01", "not length-delimited"),
        (b"\x0b", "unsupported wire type"),
    ],
)
def test_malformed_messages_are_protocol_errors(data: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        CommandStatementQuery.from_bytes(data)


def test_only_flight_sql_any_messages_unpack() -> None:
    with pytest.raises(ProtocolError, match="not a Flight SQL message"):
        unpack(protobuf.encode([protobuf.message(1, b"type.googleapis.com/other.Thing")]))
    with pytest.raises(ProtocolError, match="not a Flight SQL message"):
        unpack(pack("Command With Spaces", b""))
    with pytest.raises(ProtocolError, match="not a Flight SQL message"):
        unpack(b"")


def test_flight_sql_tickets_are_never_mistaken_for_shuffle_tickets() -> None:
    assert is_flight_sql(TicketStatementQuery(statement_handle=b"x" * 16).pack())
    assert is_flight_sql(CommandGetTables().pack())
    assert not is_flight_sql(OutputRef("ab" * 8, 0, 1, 2).to_bytes())


def test_session_cookies() -> None:
    sid = "0123456789abcdef" * 2
    assert session_from_cookies([f"a=b; arrow_flight_session_id={sid}"]) == sid
    assert session_from_cookies(["arrow_flight_session_id=../../x"]) == ""
    assert session_from_cookies([]) == ""


# ----------------------------------------------------------------------------- DDL
def test_create_external_table_parses_like_datafusion_names_tables() -> None:
    assert CreateTable.parse(
        "create external table Lineitem stored as parquet location '/d/l'"
    ) == CreateTable("lineitem", "parquet", "/d/l")
    sql = """CREATE OR REPLACE EXTERNAL TABLE IF NOT EXISTS "My ""T"" "
        STORED AS CSV LOCATION '/it''s/x.csv';"""
    got = CreateTable.parse(sql)
    assert got == CreateTable('My "T" ', "csv", "/it's/x.csv", replace=True, if_not_exists=True)
    assert got is not None and CreateTable.parse(got.to_sql()) == got
    assert CreateTable.parse("SELECT 1") is None
    assert CreateTable.parse("CREATE VIEW v AS SELECT 1") is None


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("CREATE EXTERNAL TABLE t STORED AS ORC LOCATION '/d'", "use PARQUET, CSV, JSON, DELTA or ICEBERG"),
        ("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'rel/t'", "must be an absolute path"),
        ("CREATE EXTERNAL TABLE t (a INT) STORED AS CSV LOCATION '/d'", "the form served is"),
        ("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/d' OPTIONS ('x' 'y')", "the form served is"),
    ],
)
def test_unsupported_create_external_tables_are_query_errors(sql: str, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        CreateTable.parse(sql)


# ----------------------------------------------------------------------------- metadata
@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("p_rt%", "partsupp", True),
        ("p_rt%", "xpart", False),
        ("a.b", "a.b", True),
        ("a.b", "axb", False),  # not a regex
        ("%", "", True),
        ("_", "", False),
        ("%a%b%", "xxaxxbxx", True),
        ("%a%b", "xxaxxbxx", False),
        ("n%n", "nation", True),
        ("n%n", "nations", False),
        ("%%_", "x", True),
        (None, "anything", True),
        ("%" * 200 + "z", "lineitem_" * 20, False),  # a regex would backtrack for hours on this
    ],
)
def test_like_patterns(pattern: str | None, value: str, expected: bool) -> None:
    assert metadata.like(pattern, value) is expected


def test_like_refuses_overlong_patterns() -> None:
    with pytest.raises(ProtocolError, match="the limit is 256"):
        metadata.like("%" * 300, "x")


def test_get_tables_filters_and_schemas() -> None:
    found = {"nation": pa.schema([("n", pa.int64())]), "region": pa.schema([("r", pa.string_view())])}
    everything = metadata.tables(CommandGetTables(include_schema=True), found)
    assert everything.schema == metadata.TABLES_WITH_SCHEMA
    assert metadata.schemas_from_tables(everything) == found
    assert metadata.tables(CommandGetTables(table_name_filter_pattern="r%"), found)[
        "table_name"
    ].to_pylist() == ["region"]
    for nothing in [
        CommandGetTables(catalog="other"),
        CommandGetTables(db_schema_filter_pattern="information_schema"),
        CommandGetTables(table_types=("VIEW",)),
    ]:
        assert metadata.tables(nothing, found).num_rows == 0
    assert metadata.db_schemas(CommandGetDbSchemas(catalog="")).num_rows == 0
    assert metadata.db_schemas(CommandGetDbSchemas()).to_pylist() == [
        {"catalog_name": "datafusion", "db_schema_name": "public"}
    ]


def test_sql_info_has_the_dense_union_of_the_specification() -> None:
    known = metadata.sql_info("9.9", 1000)
    table = metadata.sql_info_table(known, [0, 3, 8, 4242])
    assert table.schema == metadata.SQL_INFO_SCHEMA
    value = table.schema.field("value").type
    assert value.mode == "dense" and [f.name for f in value] == [
        "string_value",
        "bool_value",
        "bigint_value",
        "int32_bitmask",
        "string_list",
        "int32_to_int32_list_map",
    ]
    assert table.to_pylist() == [
        {"info_name": 0, "value": "ematix-flow"},
        {"info_name": 3, "value": True},
        {"info_name": 8, "value": 0},
    ]
    assert metadata.sql_info_table(known, []).num_rows == len(known)


# ----------------------------------------------------------------------------- handles
def test_statement_handles_are_bound_single_use_and_bounded() -> None:
    gateway = Gateway([], None, Catalog(), AccessPolicy())
    handle = gateway.hold(Statement(("alice", ""), "SELECT 1", EMPTY, None))
    assert len(handle) == 16
    with pytest.raises(QueryError, match="unknown statement handle"):
        gateway.lookup("bob", handle, take=True)
    assert gateway.lookup("alice", handle, take=True).sql == "SELECT 1"
    with pytest.raises(QueryError, match="unknown statement handle"):
        gateway.lookup("alice", handle, take=True)
    for _ in range(MAX_HANDLES):
        gateway.hold(Statement(("alice", "s1"), "SELECT 1", EMPTY, None))
    with pytest.raises(QueryError, match="open statements for alice"):
        gateway.hold(Statement(("alice", "s2"), "SELECT 1", EMPTY, None))
    gateway.hold(Statement(("bob", ""), "SELECT 1", EMPTY, None))  # others are not affected


def test_stale_handles_expire() -> None:
    gateway = Gateway([], None, Catalog(), AccessPolicy(), statement_ttl=0.0)
    handle = gateway.hold(Statement(("alice", ""), "SELECT 1", EMPTY, None))
    with pytest.raises(QueryError, match="unknown statement handle"):
        gateway.lookup("alice", handle, take=False)


def test_create_external_table_locations_are_checked_against_the_data_roots(tmp_path: Path) -> None:
    gateway = Gateway([], None, Catalog(), AccessPolicy.create(data_roots=[str(tmp_path)]))
    with pytest.raises(AccessDeniedError, match="outside this worker's --data-root"):
        gateway.describe(("alice", ""), "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/passwd'")
    inside = f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{tmp_path / 't.parquet'}'"
    assert gateway.describe(("alice", ""), inside) == (
        EMPTY,
        CreateTable("t", "parquet", str(tmp_path / "t.parquet")),
    )
