"""The result tables of Flight SQL's metadata commands, with the exact schemas of the specification.

The mesh has one catalog, DataFusion's default ``datafusion``, with one schema, ``public``, holding the
worker's tables (and a session's own): fully qualified names (``datafusion.public.lineitem``) then work
in SQL too. Every table is of type ``TABLE`` and has no keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from ematix_flow.errors import ProtocolError
from ematix_flow.flightsql.protocol import CommandGetDbSchemas, CommandGetTables

CATALOG = "datafusion"
SCHEMA = "public"
TABLE_TYPE = "TABLE"

CATALOGS_SCHEMA = pa.schema([pa.field("catalog_name", pa.utf8(), False)])
DB_SCHEMAS_SCHEMA = pa.schema(
    [pa.field("catalog_name", pa.utf8()), pa.field("db_schema_name", pa.utf8(), False)]
)
TABLES_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", pa.utf8()),
        pa.field("db_schema_name", pa.utf8()),
        pa.field("table_name", pa.utf8(), False),
        pa.field("table_type", pa.utf8(), False),
    ]
)
TABLES_WITH_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), False))
TABLE_TYPES_SCHEMA = pa.schema([pa.field("table_type", pa.utf8(), False)])
PRIMARY_KEYS_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", pa.utf8()),
        pa.field("db_schema_name", pa.utf8()),
        pa.field("table_name", pa.utf8(), False),
        pa.field("column_name", pa.utf8(), False),
        pa.field("key_name", pa.utf8()),
        pa.field("key_sequence", pa.int32(), False),
    ]
)
FOREIGN_KEYS_SCHEMA = pa.schema(
    [
        pa.field(f"{side}_{part}", pa.utf8(), part not in ("table_name", "column_name"))  # nullable
        for side in ("pk", "fk")
        for part in ("catalog_name", "db_schema_name", "table_name", "column_name")
    ]
    + [
        pa.field("key_sequence", pa.int32(), False),
        pa.field("fk_key_name", pa.utf8()),
        pa.field("pk_key_name", pa.utf8()),
        pa.field("update_rule", pa.uint8(), False),
        pa.field("delete_rule", pa.uint8(), False),
    ]
)

# ------------------------------------------------------------------------------- SqlInfo
_INFO_FIELDS = [
    pa.field("string_value", pa.utf8()),
    pa.field("bool_value", pa.bool_()),
    pa.field("bigint_value", pa.int64()),
    pa.field("int32_bitmask", pa.int32()),
    pa.field("string_list", pa.list_(pa.field("string_data", pa.utf8()))),
    pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.field("$data$", pa.int32())))),
]
_STRING, _BOOL, _BIGINT, _INT32, _STRINGS = 0, 1, 2, 3, 4  # union type codes, in field order
SQL_INFO_SCHEMA = pa.schema(
    [
        pa.field("info_name", pa.uint32(), False),
        pa.field("value", pa.dense_union(_INFO_FIELDS, list(range(len(_INFO_FIELDS)))), False),
    ]
)


def sql_info(version: str, statement_timeout_ms: int) -> dict[int, tuple[int, object]]:
    """What this server answers to ``CommandGetSqlInfo``: SqlInfo id -> (union type code, value)."""
    return {
        0: (_STRING, "ematix-flow"),  # FLIGHT_SQL_SERVER_NAME
        1: (_STRING, version),  # FLIGHT_SQL_SERVER_VERSION
        2: (_STRING, pa.__version__),  # FLIGHT_SQL_SERVER_ARROW_VERSION
        3: (_BOOL, True),  # FLIGHT_SQL_SERVER_READ_ONLY: queries only (and CREATE EXTERNAL TABLE)
        4: (_BOOL, True),  # FLIGHT_SQL_SERVER_SQL
        5: (_BOOL, False),  # FLIGHT_SQL_SERVER_SUBSTRAIT
        8: (_INT32, 0),  # FLIGHT_SQL_SERVER_TRANSACTION: SQL_SUPPORTED_TRANSACTION_NONE
        9: (_BOOL, False),  # FLIGHT_SQL_SERVER_CANCEL: no CancelQuery action (close the stream instead)
        100: (_INT32, statement_timeout_ms),  # FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT
        101: (_INT32, 0),  # FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT
        500: (_BOOL, False),  # SQL_DDL_CATALOG
        501: (_BOOL, False),  # SQL_DDL_SCHEMA
        502: (_BOOL, True),  # SQL_DDL_TABLE: CREATE EXTERNAL TABLE, for the session
        503: (_INT32, 3),  # SQL_IDENTIFIER_CASE: SQL_CASE_SENSITIVITY_LOWERCASE (unquoted names)
        504: (_STRING, '"'),  # SQL_IDENTIFIER_QUOTE_CHAR
        506: (_BOOL, True),  # SQL_ALL_TABLES_ARE_SELECTABLE
        507: (_INT32, 0),  # SQL_NULL_ORDERING: SQL_NULLS_SORTED_HIGH (ASC: last, DESC: first)
        515: (_BOOL, True),  # SQL_SUPPORTS_COLUMN_ALIASING
        529: (_STRING, "schema"),  # SQL_SCHEMA_TERM
        531: (_STRING, "catalog"),  # SQL_CATALOG_TERM
        532: (_BOOL, True),  # SQL_CATALOG_AT_START
    }


def sql_info_table(known: Mapping[int, tuple[int, object]], asked: Sequence[int]) -> pa.Table:
    """The rows of the asked SqlInfo ids this server knows (every known one when none are asked)."""
    ids = [i for i in (asked or sorted(known)) if i in known]
    children: list[list[object]] = [[] for _ in _INFO_FIELDS]
    types, offsets = [], []
    for i in ids:
        code, value = known[i]
        types.append(code)
        offsets.append(len(children[code]))
        children[code].append(value)
    value_array = pa.UnionArray.from_dense(
        pa.array(types, pa.int8()),
        pa.array(offsets, pa.int32()),
        [pa.array(c, f.type) for c, f in zip(children, _INFO_FIELDS, strict=True)],
        [f.name for f in _INFO_FIELDS],
        list(range(len(_INFO_FIELDS))),
    )
    return pa.Table.from_arrays([pa.array(ids, pa.uint32()), value_array], schema=SQL_INFO_SCHEMA)


# ------------------------------------------------------------------------------- catalog
#: The longest filter pattern taken (names are short; this bounds the matcher's work).
MAX_PATTERN_CHARS = 256


def like(pattern: str | None, value: str) -> bool:
    """Whether ``value`` matches a Flight SQL filter pattern (``%``: any text, ``_``: one character).

    None matches everything. A greedy two-pointer match, linear in practice and never worse than
    ``len(pattern) * len(value)``: a regex would backtrack exponentially on patterns like ``%%%...z``.
    """
    if pattern is None:
        return True
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ProtocolError(
            f"a filter pattern of {len(pattern)} characters (the limit is {MAX_PATTERN_CHARS})"
        )
    p = v = 0
    star, resume = -1, 0  # the last % seen, and where in value its match ends for now
    while v < len(value):
        if p < len(pattern) and pattern[p] != "%" and (pattern[p] == "_" or pattern[p] == value[v]):
            p, v = p + 1, v + 1
        elif p < len(pattern) and pattern[p] == "%":
            star, resume, p = p, v, p + 1
        elif star >= 0:  # let the last % take one more character
            resume += 1
            p, v = star + 1, resume
        else:
            return False
    return all(c == "%" for c in pattern[p:])


def catalogs() -> pa.Table:
    """``CommandGetCatalogs``: the one catalog."""
    return pa.table({"catalog_name": [CATALOG]}, schema=CATALOGS_SCHEMA)


def db_schemas(cmd: CommandGetDbSchemas) -> pa.Table:
    """``CommandGetDbSchemas``: the one schema, if the filters let it through."""
    n = 1 if cmd.catalog in (None, CATALOG) and like(cmd.db_schema_filter_pattern, SCHEMA) else 0
    return pa.table({"catalog_name": [CATALOG] * n, "db_schema_name": [SCHEMA] * n}, schema=DB_SCHEMAS_SCHEMA)


def tables(cmd: CommandGetTables, found: Mapping[str, pa.Schema]) -> pa.Table:
    """``CommandGetTables``: the tables that pass the filters, by name, with schemas when asked."""
    ok = (
        cmd.catalog in (None, CATALOG)
        and like(cmd.db_schema_filter_pattern, SCHEMA)
        and (not cmd.table_types or TABLE_TYPE in cmd.table_types)
    )
    names = sorted(n for n in found if like(cmd.table_name_filter_pattern, n)) if ok else []
    columns: dict[str, list[object]] = {
        "catalog_name": [CATALOG] * len(names),
        "db_schema_name": [SCHEMA] * len(names),
        "table_name": list(names),
        "table_type": [TABLE_TYPE] * len(names),
    }
    if not cmd.include_schema:
        return pa.table(columns, schema=TABLES_SCHEMA)
    columns["table_schema"] = [found[n].serialize().to_pybytes() for n in names]
    return pa.table(columns, schema=TABLES_WITH_SCHEMA)


def table_types() -> pa.Table:
    """``CommandGetTableTypes``: every table is a ``TABLE``."""
    return pa.table({"table_type": [TABLE_TYPE]}, schema=TABLE_TYPES_SCHEMA)


def schemas_from_tables(result: pa.Table) -> dict[str, pa.Schema]:
    """Table name -> Arrow schema, from a ``CommandGetTables`` result with ``include_schema``."""
    names = result.column("table_name").to_pylist()
    blobs = result.column("table_schema").to_pylist()
    return {n: pa.ipc.read_schema(pa.py_buffer(b)) for n, b in zip(names, blobs, strict=True)}
