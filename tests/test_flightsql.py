"""Arrow Flight SQL on every worker, checked with a driver nobody here wrote: ADBC's, over mutual TLS.

Three workers started with the TPC-H SF 0.1 catalog (``--tables-dir``), each listing the others in
``--peers``; the ADBC Flight SQL driver connects to one of them as ``alice`` and runs all 22 TPC-H
queries (answers equal to single-process DataFusion, tasks on the other peers too), lists the
tables, and meets refusals: no or foreign certificates, an unlisted identity, bad SQL, DDL,
locations outside ``--data-root``, commands that are not served. The Flight SQL commands the
driver sent are counted by the worker's metrics and written to ``build/flightsql-calls.txt``.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as adbc
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from adbc_driver_flightsql import DatabaseOptions
from prometheus_client.parser import text_string_to_metric_families
from support import HOSTS, TASK_TIMEOUT, peer_mesh, ran_tasks, wait_until, worker_action

from ematix_flow import TLSConfig
from ematix_flow.coordinator_lib.local import LocalWorker
from ematix_flow.flightsql.protocol import (
    CommandGetPrimaryKeys,
    CommandGetSqlInfo,
    CommandGetTables,
    CommandStatementQuery,
    pack,
)
from ematix_flow.transport.certs import init_certs, issue_cert
from ematix_flow.transport.messages import PeerInfo
from ematix_flow.transport.tls import flight_client_kwargs
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NAMES = ["w1", "w2", "w3"]
QUERIES = [f"q{n:02d}" for n in range(1, 23)]
CALLS_FILE = Path(__file__).resolve().parents[1] / "build" / "flightsql-calls.txt"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA: workers w1..w3, clients alice and bob, and an intruder no worker allows."""
    path = tmp_path_factory.mktemp("fsql-certs") / "certs"
    init_certs(path, HOSTS)
    for name in [*NAMES, "alice", "bob", "intruder"]:
        issue_cert(path, name, HOSTS)
    return path


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory, tpch_data: Path) -> Path:
    """A copy of the region table outside every --data-root."""
    path = tmp_path_factory.mktemp("outside") / "region.parquet"
    path.write_bytes((tpch_data / "region.parquet").read_bytes())
    return path


@pytest.fixture(scope="module")
def workers(
    certs: Path, tpch_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LocalWorker]]:
    allow = [f for n in [*NAMES, "alice", "bob"] for f in ("--allow-peer", n)]

    def flags(i: int) -> list[str]:
        http = ["--http", "127.0.0.1:0"] if i == 0 else []  # w1's metrics count what clients call
        return [
            "--tls-name",
            NAMES[i],
            *allow,
            "--tables-dir",
            str(tpch_data),
            "--data-root",
            str(tpch_data),
            *http,
        ]

    with peer_mesh(3, certs, tmp_path_factory.mktemp("fsql-work"), flags) as started:
        yield started


def options(certs: Path, name: str, **extra: str) -> dict[str, str]:
    """ADBC database options: mutual TLS with certificate ``name``, every call bounded."""
    return {
        DatabaseOptions.TLS_ROOT_CERTS.value: (certs / "ca.pem").read_text(),
        DatabaseOptions.MTLS_CERT_CHAIN.value: (certs / f"{name}.pem").read_text(),
        DatabaseOptions.MTLS_PRIVATE_KEY.value: (certs / f"{name}-key.pem").read_text(),
        DatabaseOptions.TIMEOUT_QUERY.value: str(TASK_TIMEOUT),
        DatabaseOptions.TIMEOUT_FETCH.value: str(TASK_TIMEOUT),
        **extra,
    }


def connect(worker: LocalWorker, db_kwargs: dict[str, str]) -> Any:
    return adbc.connect(f"grpc+tls://{worker.address}", db_kwargs=db_kwargs, autocommit=True)


@pytest.fixture(scope="module")
def conn(workers: list[LocalWorker], certs: Path) -> Iterator[Any]:
    """``alice`` connected to w1 with the ADBC driver."""
    with connect(workers[0], options(certs, "alice")) as c:
        yield c


def query(conn: Any, sql: str) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def http_url(worker: LocalWorker, certs: Path) -> str:
    return PeerInfo.from_bytes(worker_action(worker.address, certs, "hello")).http


@pytest.mark.slow
@pytest.mark.parametrize("name", QUERIES)
def test_tpch_query_through_adbc(
    conn: Any, workers: list[LocalWorker], certs: Path, reference: Callable[[str], pa.Table], name: str
) -> None:
    sql = tpch.query(int(name[1:]))
    got = query(conn, sql)
    diff = compare_tables(got, reference(sql), ordered=query_is_ordered(sql))
    assert diff is None, f"{name}: {diff}"
    spread = ran_tasks([w.address for w in workers], certs, sql)
    assert len(spread) >= 2, f"{name} ran tasks on {spread} only"


def test_a_query_runs_across_the_whole_mesh(conn: Any, workers: list[LocalWorker], certs: Path) -> None:
    sql = "SELECT l_shipmode, count(*) AS n, sum(l_quantity) AS q FROM lineitem GROUP BY l_shipmode"
    got = query(conn, sql)
    assert got.num_rows == 7
    assert ran_tasks([w.address for w in workers], certs, sql) == {w.address for w in workers}


def test_get_objects_lists_the_catalog_with_columns(conn: Any, tpch_data: Path) -> None:
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["datafusion"]
    schemas = objects[0]["catalog_db_schemas"]
    assert [s["db_schema_name"] for s in schemas] == ["public"]
    tables = {t["table_name"]: t for t in schemas[0]["db_schema_tables"]}
    assert sorted(tables) == sorted(tpch.TABLES)
    assert {t["table_type"] for t in tables.values()} == {"TABLE"}
    lineitem = pq.read_schema(tpch_data / "lineitem.parquet")
    assert [c["column_name"] for c in tables["lineitem"]["table_columns"]] == lineitem.names
    only = conn.adbc_get_objects(depth="tables", table_name_filter="p%").read_all().to_pylist()
    assert sorted(t["table_name"] for t in only[0]["catalog_db_schemas"][0]["db_schema_tables"]) == [
        "part",
        "partsupp",
    ]


def test_table_schema_types_and_info(conn: Any, reference_ctx: Any) -> None:
    assert conn.adbc_get_table_schema("orders") == reference_ctx.table("orders").schema()
    assert conn.adbc_get_table_types() == ["TABLE"]
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "ematix-flow"
    assert info["vendor_arrow_version"] == pa.__version__


def test_status_lists_the_catalog(workers: list[LocalWorker], certs: Path) -> None:
    for w in workers:
        assert json.loads(worker_action(w.address, certs, "status"))["status"]["tables"] == sorted(
            tpch.TABLES
        )
    with urllib.request.urlopen(http_url(workers[0], certs) + "/api/status", timeout=10) as r:
        assert json.loads(r.read())["tables"] == sorted(tpch.TABLES)


def test_prepared_statement_runs_twice_and_takes_no_parameters(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.adbc_prepare("SELECT count(*) AS n FROM nation")
        for _ in range(2):
            cur.execute("SELECT count(*) AS n FROM nation")
            assert cur.fetch_arrow_table().to_pylist() == [{"n": 25}]
        with pytest.raises(adbc.NotSupportedError, match="no updates, ingestion or statement parameters"):
            cur.execute("SELECT count(*) AS n FROM nation WHERE n_regionkey = ?", (1,))


def test_bad_sql_is_one_clear_error_and_the_worker_keeps_serving(conn: Any) -> None:
    with pytest.raises(adbc.Error) as info:
        query(conn, "SELECT no_such_column FROM lineitem")
    text = str(info.value)
    assert "QueryError: invalid query" in text and "no_such_column" in text
    assert "Traceback" not in text
    with pytest.raises(adbc.Error, match=r"table 'datafusion\.public\.nope' not found"):
        query(conn, "SELECT * FROM nope")
    assert query(conn, "SELECT count(*) AS n FROM region").to_pylist() == [{"n": 5}]


def test_ddl_and_writes_are_refused_not_run(conn: Any) -> None:
    for sql, why in [
        ("DROP TABLE lineitem", "DDL not supported"),
        ("CREATE VIEW v AS SELECT 1", "DDL not supported"),
        ("SET datafusion.execution.batch_size = 1", "Statement not supported"),
        ("COPY region TO '/tmp/region-copy.parquet'", "DML not supported"),
    ]:
        with pytest.raises(adbc.Error, match=why):
            query(conn, sql)
    assert query(conn, "SELECT count(*) AS n FROM lineitem").to_pylist() == [{"n": 600572}]


def test_create_external_table_is_visible_in_its_session_only(
    workers: list[LocalWorker], certs: Path, tpch_data: Path
) -> None:
    cookies = {DatabaseOptions.WITH_COOKIE_MIDDLEWARE.value: "true"}
    location = tpch_data / "nation.parquet"
    with (
        connect(workers[0], options(certs, "alice", **cookies)) as mine,
        connect(workers[0], options(certs, "alice", **cookies)) as other,
        connect(workers[0], options(certs, "bob")) as bob,
    ):
        query(mine, "SELECT 1")  # (the session cookie came with the answer to the connect call)
        query(mine, f"CREATE EXTERNAL TABLE my_nations STORED AS PARQUET LOCATION '{location}'")
        assert query(mine, "SELECT count(*) AS n FROM my_nations").to_pylist() == [{"n": 25}]
        assert "my_nations" in [t["table_name"] for t in _tables(mine)]
        for conn in (other, bob):
            with pytest.raises(adbc.Error, match="my_nations"):
                query(conn, "SELECT count(*) FROM my_nations")
            assert "my_nations" not in [t["table_name"] for t in _tables(conn)]
        with pytest.raises(adbc.Error, match="already exists"):
            query(mine, f"CREATE EXTERNAL TABLE my_nations STORED AS PARQUET LOCATION '{location}'")


def _tables(conn: Any) -> list[dict[str, Any]]:
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    return list(objects[0]["catalog_db_schemas"][0]["db_schema_tables"])


def test_create_external_table_outside_the_data_root_is_refused(conn: Any, outside: Path) -> None:
    with pytest.raises(adbc.Error, match="outside this worker's --data-root"):
        query(conn, f"CREATE EXTERNAL TABLE stolen STORED AS PARQUET LOCATION '{outside}'")
    with pytest.raises(adbc.Error, match="must be an absolute path"):
        query(conn, "CREATE EXTERNAL TABLE rel STORED AS PARQUET LOCATION 'region.parquet'")


@pytest.mark.parametrize(
    "who", ["no client certificate", "a certificate of another CA", "an identity not in --allow-peer"]
)
def test_refused_clients(workers: list[LocalWorker], certs: Path, foreign_certs_dir: Path, who: str) -> None:
    db_kwargs = options(certs, "alice")
    if who == "no client certificate":
        del (
            db_kwargs[DatabaseOptions.MTLS_CERT_CHAIN.value],
            db_kwargs[DatabaseOptions.MTLS_PRIVATE_KEY.value],
        )
    elif who == "a certificate of another CA":
        db_kwargs[DatabaseOptions.MTLS_CERT_CHAIN.value] = (foreign_certs_dir / "peer.pem").read_text()
        db_kwargs[DatabaseOptions.MTLS_PRIVATE_KEY.value] = (foreign_certs_dir / "peer-key.pem").read_text()
    else:
        db_kwargs = options(certs, "intruder")
    with pytest.raises(adbc.Error) as info:  # the driver connects lazily: the first call fails
        with connect(workers[0], db_kwargs) as conn:
            query(conn, "SELECT count(*) FROM region")
    if who == "an identity not in --allow-peer":
        assert "not in this worker's --allow-peer list" in str(info.value)


@pytest.fixture(scope="module")
def client(workers: list[LocalWorker], certs: Path) -> Iterator[flight.FlightClient]:
    """A plain pyarrow Flight client as ``alice``, for messages the ADBC driver never sends."""
    tls = TLSConfig.from_dir(certs, "alice")
    with flight.FlightClient(f"grpc+tls://{workers[0].address}", **flight_client_kwargs(tls)) as c:
        yield c


CALL = flight.FlightCallOptions(timeout=30)


def test_unsupported_commands_are_unimplemented_and_named(client: flight.FlightClient) -> None:
    xdbc = flight.FlightDescriptor.for_command(pack("CommandGetXdbcTypeInfo", b""))
    with pytest.raises(
        pa.ArrowNotImplementedError, match="Flight SQL command CommandGetXdbcTypeInfo is not supported"
    ):
        client.get_flight_info(xdbc, CALL)
    with pytest.raises(
        pa.ArrowNotImplementedError, match="Flight SQL action BeginTransaction is not supported"
    ):
        list(client.do_action(flight.Action("BeginTransaction", b""), CALL))
    update = flight.FlightDescriptor.for_command(pack("CommandStatementUpdate", b"\x0a\x08DELETE x"))
    writer, _ = client.do_put(update, pa.schema([]), CALL)
    with pytest.raises(
        pa.ArrowNotImplementedError, match="CommandStatementUpdate over DoPut is not supported"
    ):
        writer.close()
    with pytest.raises(flight.FlightServerError, match="ProtocolError: not a Flight SQL message"):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"\x0a\x03abc"), CALL)
    with pytest.raises(flight.FlightServerError, match="ProtocolError: Flight SQL takes command descriptors"):
        client.get_flight_info(flight.FlightDescriptor.for_path("lineitem"), CALL)


def test_statement_tickets_are_single_use_and_bound_to_their_client(
    client: flight.FlightClient, workers: list[LocalWorker], certs: Path
) -> None:
    command = CommandStatementQuery(query="SELECT r_name FROM region ORDER BY r_name").pack()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command), CALL)
    ticket = info.endpoints[0].ticket
    bob_tls = TLSConfig.from_dir(certs, "bob")
    with flight.FlightClient(f"grpc+tls://{workers[0].address}", **flight_client_kwargs(bob_tls)) as bob:
        with pytest.raises(flight.FlightServerError, match="QueryError: unknown statement handle"):
            bob.do_get(ticket, CALL).read_all()
    assert client.do_get(ticket, CALL).read_all().column("r_name").to_pylist()[0] == "AFRICA"
    with pytest.raises(flight.FlightServerError, match="QueryError: unknown statement handle"):
        client.do_get(ticket, CALL).read_all()


def test_metadata_through_plain_flight(client: flight.FlightClient) -> None:
    keys = flight.FlightDescriptor.for_command(CommandGetPrimaryKeys(table="orders").pack())
    info = client.get_flight_info(keys, CALL)
    table = client.do_get(info.endpoints[0].ticket, CALL).read_all()
    assert table.num_rows == 0 and table.schema.names[-1] == "key_sequence"
    tables = flight.FlightDescriptor.for_command(CommandGetTables(table_name_filter_pattern="_egion").pack())
    schema = client.get_schema(tables, CALL).schema
    assert schema.names == ["catalog_name", "db_schema_name", "table_name", "table_type"]
    info = client.get_flight_info(tables, CALL)
    assert client.do_get(info.endpoints[0].ticket, CALL).read_all().column("table_name").to_pylist() == [
        "region"
    ]


def test_hostile_metadata_filters_are_answered_at_once(client: flight.FlightClient) -> None:
    # a regex would backtrack for hours on this pattern, holding the GIL: the whole worker would stall
    slow = CommandGetTables(table_name_filter_pattern="%" * 200 + "z").pack()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(slow), CALL)
    assert client.do_get(info.endpoints[0].ticket, CALL).read_all().num_rows == 0
    too_long = CommandGetTables(table_name_filter_pattern="%" * 300).pack()
    with pytest.raises(flight.FlightError, match="the limit is 256"):
        client.get_flight_info(flight.FlightDescriptor.for_command(too_long), CALL)
    # a command over the 1 KiB shuffle-ticket bound still makes a valid ticket of itself
    many = CommandGetSqlInfo(info=tuple(range(1000, 1700))).pack()
    assert len(many) > 1024
    info = client.get_flight_info(flight.FlightDescriptor.for_command(many), CALL)
    assert client.do_get(info.endpoints[0].ticket, CALL).read_all().num_rows >= 0


def test_dictionary_columns_arrive_decoded(conn: Any) -> None:
    table = query(conn, "SELECT arrow_cast(r_name, 'Dictionary(Int32, Utf8)') AS d FROM region ORDER BY 1")
    assert table.column("d").to_pylist() == ["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"]
    assert pa.types.is_string(table.schema.field("d").type) or pa.types.is_string_view(
        table.schema.field("d").type
    )


def test_a_client_that_goes_away_stops_its_query_on_every_peer(
    client: flight.FlightClient, workers: list[LocalWorker], certs: Path
) -> None:
    # a nested-loop join that streams batches for hours: the client gives up after 2 s
    slow = (
        "SELECT a.l_orderkey FROM lineitem a JOIN lineitem b "
        "ON (a.l_orderkey * 7 + b.l_orderkey) % 100000 = 0"
    )
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(CommandStatementQuery(query=slow).pack()), CALL
    )
    with pytest.raises(flight.FlightTimedOutError):
        client.do_get(info.endpoints[0].ticket, flight.FlightCallOptions(timeout=2)).read_all()

    def idle() -> bool:
        return all(
            PeerInfo.from_bytes(worker_action(w.address, certs, "hello")).tasks_running == 0 for w in workers
        )

    wait_until(idle, 20, "every peer stopped the abandoned query's tasks")


def test_zz_flight_sql_calls_are_counted(workers: list[LocalWorker], certs: Path) -> None:
    """w1's metrics count the Flight SQL calls it gets; runs last, so the file lists this module's calls."""
    with connect(workers[0], options(certs, "alice")) as c:
        assert query(c, "SELECT 1 AS one").to_pylist() == [{"one": 1}]
        c.adbc_get_objects(depth="all").read_all()
    with urllib.request.urlopen(http_url(workers[0], certs) + "/metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    calls = {
        (s.labels["rpc"], s.labels["command"]): int(s.value)
        for s in families["flow_flight_sql_requests"].samples
        if s.name.endswith("_total")
    }
    CALLS_FILE.parent.mkdir(exist_ok=True)
    CALLS_FILE.write_text("".join(f"{rpc} {cmd} {n}\n" for (rpc, cmd), n in sorted(calls.items())))
    for seen in [
        ("GetFlightInfo", "CommandGetSqlInfo"),
        ("DoAction", "CreatePreparedStatement"),
        ("GetFlightInfo", "CommandPreparedStatementQuery"),
        ("DoGet", "TicketStatementQuery"),
        ("GetFlightInfo", "CommandGetTables"),
        ("DoGet", "CommandGetTables"),
        ("GetFlightInfo", "CommandGetDbSchemas"),
        ("GetFlightInfo", "CommandGetCatalogs"),
        ("DoAction", "ClosePreparedStatement"),
        ("DoAction", "CloseSession"),
    ]:
        assert calls.get(seen, 0) > 0, (seen, calls)
