"""``flow-worker --http``: health, readiness, Prometheus metrics, status and queries JSON, OpenAPI.

Three live workers over mTLS (each its own certificate, each listing the others with ``--peers``)
answer real TPC-H queries from a submitter named ``alice``; every endpoint is then read over HTTP.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from datafusion import udf
from prometheus_client.parser import text_string_to_metric_families
from support import HOSTS, READY, TASK_TIMEOUT, clean_env, executable, flow_worker, free_ports, wait_until

from ematix_flow import Mesh, TLSConfig
from ematix_flow.coordinator_lib.local import LocalWorker, spawn_worker
from ematix_flow.coordinator_lib.report import RunReport
from ematix_flow.transport.certs import init_certs, issue_cert
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import PeerInfo
from ematix_flow.worker.http import QueryView, merge_queries
from ematix_flow.worker.telemetry import RECENT_QUERIES, PeerBook, QueryLog, parse_stages
from ematix_flow.workloads import tpch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NAMES = ["w1", "w2", "w3"]
SHUFFLE = "SELECT l_returnflag, l_linestatus, count(*) AS n FROM lineitem GROUP BY 1, 2 ORDER BY 1, 2"
GATED = "SELECT l_returnflag, sum(gate(l_orderkey)) AS s FROM lineitem GROUP BY 1"  # see _gate
FAMILIES = {
    "flow_tasks_running": "gauge",
    "flow_tasks": "counter",
    "flow_task_seconds": "histogram",
    "flow_shuffle_bytes": "counter",
    "flow_memory_bytes": "gauge",
    "flow_cpu_percent": "gauge",
    "flow_peers_up": "gauge",
}


@dataclass
class Peer:
    """A worker of the test mesh: its process, Flight address and HTTP base URL."""

    process: LocalWorker
    address: str
    url: str
    name: str


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """GET ``url``: (status, parsed JSON or text)."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            status, body, kind = r.status, r.read().decode(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read().decode(), exc.headers.get("content-type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body


def ok(url: str) -> Any:
    status, body = get(url)
    assert status == 200, (url, status, body)
    return body


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA: workers w1..w3, the submitter alice, and an intruder no worker allows."""
    path = tmp_path_factory.mktemp("http-certs") / "certs"
    init_certs(path, HOSTS)
    for name in [*NAMES, "alice", "intruder"]:
        issue_cert(path, name, HOSTS)
    return path


@pytest.fixture(scope="module")
def peers(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Peer]]:
    """Three workers started together, each with the other two as --peers, serving HTTP on loopback."""
    work = tmp_path_factory.mktemp("http-work")
    ports = free_ports(3)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    allow = [f for n in [*NAMES, "alice"] for f in ("--allow-peer", n)]

    def start(i: int) -> LocalWorker:
        others = ",".join(a for a in addresses if a != addresses[i])
        extra = ["--tls-name", NAMES[i], "--peers", others, "--http", "127.0.0.1:0", "--allow-udfs", *allow]
        return spawn_worker(certs, work, port=ports[i], extra=extra)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(start, i) for i in range(3)]
    started = [f.result() for f in futures if f.exception() is None]
    client = ClientPool(TLSConfig.from_dir(certs, "alice"))
    try:
        for f in futures:
            f.result()
        infos = [PeerInfo.from_bytes(client.action(w.address, "hello", b"", 10.0)) for w in started]
        yield [Peer(w, w.address, i.http, i.name) for w, i in zip(started, infos, strict=True)]
    finally:
        client.close()
        for w in started:
            w.stop()


@pytest.fixture(scope="module")
def mesh(peers: list[Peer], certs: Path, tpch_data: Path) -> Iterator[Mesh]:
    """The submitter ``alice``: every stage spreads over the three workers."""
    tls = TLSConfig.from_dir(certs, "alice")
    with Mesh([p.address for p in peers], tls, min_task_bytes=1, task_timeout=TASK_TIMEOUT) as m:
        tpch.register_all(m, tpch_data)
        yield m


@pytest.fixture(scope="module")
def finished(mesh: Mesh) -> RunReport:
    """A shuffle query that ran on the mesh, and its report."""
    mesh.sql(SHUFFLE)
    assert mesh.last_run is not None and len(mesh.last_run.peers_used) == 3
    return mesh.last_run


def _query(url: str, query_id: str, scope: str = "mesh") -> dict[str, Any] | None:
    queries = ok(f"{url}/api/queries?scope={scope}")["queries"]
    return next((q for q in queries if q["id"] == query_id), None)


# ----------------------------------------------------------------------------------- health
def test_healthz_and_readyz_on_every_worker(peers: list[Peer]) -> None:
    for p in peers:
        assert p.url.startswith("http://127.0.0.1:")
        assert get(p.url + "/healthz") == (200, {"status": "ok"})
        assert get(p.url + "/readyz") == (200, {"ready": True})


def test_readyz_says_why_a_worker_is_not_ready(tpch_data: Path, tmp_path: Path) -> None:
    """Saturated (its one --max-tasks slot busy, a task queued), then over --max-disk."""
    args = ["--listen", "127.0.0.1:0", "--insecure", "--http", "127.0.0.1:0", "--allow-udfs"]
    args += ["--max-tasks", "1", "--max-disk", "1M", "--work-dir", str(tmp_path), "--log-level", "warning"]
    with flow_worker(args) as w, Mesh([w.address], insecure=True, min_task_bytes=1) as single:
        assert READY.search(w.ready_line), w.ready_line  # the extended line still matches the old regex
        url = w.ready_line.rsplit(" http ", 1)[1]
        assert get(url + "/readyz") == (200, {"ready": True})
        tpch.register_all(single, tpch_data)
        gate = tmp_path / "open"
        single.register_udf(_gate(gate))
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(single.sql, GATED) for _ in range(2)]
            try:
                wait_until(lambda: get(url + "/readyz")[0] == 503, 30, "readyz to turn 503 (saturated)")
                body = get(url + "/readyz")[1]
                assert body["ready"] is False and "--max-tasks" in body["reason"], body
            finally:
                gate.touch()
            for run in runs:
                run.result(TASK_TIMEOUT)
        wait_until(lambda: get(url + "/readyz")[0] == 200, 10, "readyz to turn 200 again")
        held = w.work_dir / ("ab" * 8) / "s0-t0" / "out"
        held.mkdir(parents=True)
        (held / "p00000.arrow").write_bytes(b"x" * (2 << 20))
        wait_until(lambda: get(url + "/readyz")[0] == 503, 10, "readyz to turn 503 (disk)")
        body = get(url + "/readyz")[1]
        assert body["ready"] is False and "--max-disk" in body["reason"], body
        (held / "p00000.arrow").unlink()
        wait_until(lambda: get(url + "/readyz")[0] == 200, 10, "readyz to turn 200 again")


# ----------------------------------------------------------------------------------- status
def test_status_shows_identity_load_and_the_other_two_peers_up(peers: list[Peer]) -> None:
    for p in peers:
        others = {q.address: q for q in peers if q is not p}

        def all_up(url: str = p.url, want: frozenset[str] = frozenset(others)) -> bool:
            seen = ok(url + "/api/status")["peers"]
            return {x["address"] for x in seen if x["state"] == "up"} == want

        wait_until(all_up, 15, f"{p.name} to see both peers up")
        status = ok(p.url + "/api/status")
        assert (status["name"], status["address"], status["http"]) == (p.name, p.address, p.url)
        assert status["version"] and status["datafusion_version"] and status["uptime_seconds"] > 0
        load = status["load"]
        assert load["max_tasks"] >= 1 and load["memory_bytes"] > 0 and load["cpu_percent"] >= 0
        assert {"tasks_running", "tasks_queued", "work_dir_bytes"} <= set(load)
        for peer in status["peers"]:
            assert peer["name"] == others[peer["address"]].name
            assert 0 <= peer["last_seen_seconds"] < 10 and peer["tasks_running"] >= 0


# ----------------------------------------------------------------------------------- queries
def test_finished_query_adds_up_across_the_mesh(peers: list[Peer], finished: RunReport) -> None:
    for p in peers:
        q = _query(p.url, finished.query_id)
        assert q is not None, f"{p.name} does not list the query"
        assert (q["sql"], q["submitter"], q["state"]) == (SHUFFLE, "alice", "done")
        assert q["peers_asked"] == [p.address, *(x.address for x in peers if x is not p)]
        assert q["peers_unreachable"] == [] and sorted(q["peers"]) == sorted(x.address for x in peers)
        assert 0 < q["elapsed_seconds"] < 60 and q["started"] <= time.time()
        stages = {s["id"]: s for s in q["stages"]}
        assert sorted(stages) == [s.stage for s in finished.stages]
        for s in finished.stages:
            got = stages[s.stage]
            assert (got["kind"], got["inputs"]) == (s.kind, s.inputs)
            if s.kind == "root":  # runs on the submitter: no worker saw a task of it
                assert got["tasks"] == {"done": 0, "running": 0, "failed": 0, "cancelled": 0}
                continue
            assert got["tasks"] == {"done": s.task_count, "running": 0, "failed": 0, "cancelled": 0}
            assert (got["rows"], got["bytes"]) == (s.rows, s.bytes_written)
            assert sorted(got["peers"]) == s.peers_used
        assert q["rows"] == sum(s.rows for s in finished.stages if s.kind != "root")
        assert ok(f"{p.url}/api/queries/{finished.query_id}") == {
            **q,
            "elapsed_seconds": q["elapsed_seconds"],
        }


def test_local_scope_is_this_workers_share(peers: list[Peer], finished: RunReport) -> None:
    shares = [_query(p.url, finished.query_id, "local") for p in peers]
    assert all(s is not None and s["peers_asked"] == [p.address] for s, p in zip(shares, peers, strict=True))
    for stage in finished.stages:
        if stage.kind != "root":
            done = sum(s["stages"][stage.stage]["tasks"]["done"] for s in shares if s is not None)
            assert done == stage.task_count


def test_unknown_query_is_a_404(peers: list[Peer]) -> None:
    status, body = get(f"{peers[0].url}/api/queries/{'0' * 32}")
    assert status == 404 and "no query" in body["detail"]
    assert get(f"{peers[0].url}/api/queries/not-an-id")[0] == 422


def _gate(path: Path) -> Any:
    """A UDF that holds every batch until ``path`` exists (at most a minute): a query we can keep running."""

    def hold(values: pa.Array) -> pa.Array:
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return values

    return udf(hold, [pa.int64()], pa.int64(), "volatile", name="gate")


def test_running_query_is_listed_as_running(peers: list[Peer], mesh: Mesh, tmp_path: Path) -> None:
    gate = tmp_path / "open"
    mesh.register_udf(_gate(gate))
    sql = GATED
    errors: list[BaseException] = []

    def run() -> None:
        try:
            mesh.sql(sql)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:

        def running() -> dict[str, Any] | None:
            queries = ok(peers[1].url + "/api/queries")["queries"]
            return next((q for q in queries if q["sql"] == sql and q["state"] == "running"), None)

        wait_until(lambda: running() is not None, 30, "the query to be listed as running")
        q = running()
        assert q is not None and q["stages"][0]["tasks"]["running"] >= 1 and q["ended"] is None
        wait_until(lambda: ok(peers[0].url + "/api/status")["load"]["tasks_running"] >= 1, 10, "a busy load")
    finally:
        gate.touch()
        thread.join(TASK_TIMEOUT)
    assert not errors, errors
    assert mesh.last_run is not None
    done = _query(peers[1].url, mesh.last_run.query_id)
    assert done is not None and done["state"] == "done" and done["sql"] == sql


# ----------------------------------------------------------------------------------- metrics
def _metrics(url: str) -> dict[str, Any]:
    status, text = get(url + "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(family: Any, **labels: str) -> float:
    return float(sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels == labels))


def test_metrics_parse_and_count_tasks_and_shuffle_bytes(
    peers: list[Peer], certs: Path, tpch_data: Path, finished: RunReport
) -> None:
    tls = TLSConfig.from_dir(certs, "alice")
    opts: dict[str, Any] = {"min_task_bytes": 1, "task_timeout": TASK_TIMEOUT, "local_reads": False}
    with Mesh([p.address for p in peers], tls, **opts) as flight_only:  # shuffle over Flight, not in place
        tpch.register_all(flight_only, tpch_data)
        flight_only.sql(SHUFFLE)
    scraped = [_metrics(p.url) for p in peers]
    for families in scraped:
        assert {n: f.type for n, f in families.items() if n in FAMILIES} == FAMILIES
        assert families["flow_memory_bytes"].samples[0].value > 0
        assert families["flow_cpu_percent"].samples[0].value >= 0
        assert families["flow_tasks_running"].samples[0].value == 0
        assert _sample(families["flow_tasks"], state="done") > 0
        kinds = {s.labels.get("stage_kind") for s in families["flow_task_seconds"].samples}
        assert {"shuffle", "gather"} <= kinds
    wait_until(
        lambda: all(_metrics(p.url)["flow_peers_up"].samples[0].value == 2 for p in peers), 15, "peers up"
    )
    fetched = sum(_sample(f["flow_shuffle_bytes"], direction="in") for f in scraped)
    served = sum(_sample(f["flow_shuffle_bytes"], direction="out") for f in scraped)
    assert 0 < fetched <= served  # the submitter's root stage fetched the rest
    total = sum(_sample(f["flow_tasks"], state="done") for f in scraped)
    assert total >= 2 * sum(s.task_count for s in finished.stages if s.kind != "root")


# ----------------------------------------------------------------------------------- OpenAPI
def test_openapi_schema_holds_under_schemathesis(
    peers: list[Peer], finished: RunReport, tmp_path: Path
) -> None:
    schema = ok(peers[0].url + "/openapi.json")
    assert {
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/status",
        "/api/queries",
        "/api/queries/{query_id}",
    } <= set(schema["paths"])
    cmd = [executable("st"), "run", peers[0].url + "/openapi.json", "--checks", "all", "--no-color"]
    cmd += ["--max-examples", "50", "--seed", "1", "--request-timeout", "10", "--generation-database", "none"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=clean_env(), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout, run.stdout[-2000:]


def test_static_page_is_served_at_the_root(peers: list[Peer]) -> None:
    status, body = get(peers[0].url + "/")
    assert status == 200 and "<html" in body.lower()


# ----------------------------------------------------------------------------------- TLS
def _tls_context(certs: Path, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if name:
        context.load_cert_chain(certs / f"{name}.pem", certs / f"{name}-key.pem")
    return context


def test_http_beyond_loopback_is_mutual_tls_for_allowed_names(certs: Path, tmp_path: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--tls-dir", str(certs), "--tls-name", "w1", "--http", "0.0.0.0:0"]
    args += ["--allow-peer", "w1", "--allow-peer", "alice", "--work-dir", str(tmp_path)]
    with flow_worker(args) as w:
        assert READY.search(w.ready_line) and " http https://0.0.0.0:" in w.ready_line, w.ready_line
        url = "https://127.0.0.1:" + w.ready_line.rsplit(":", 1)[1]
        assert get(url + "/healthz", _tls_context(certs, "alice")) == (200, {"status": "ok"})
        status, body = get(url + "/api/status", _tls_context(certs, "intruder"))
        assert status == 403 and "--allow-peer" in body["detail"], body
        with pytest.raises(OSError):
            get(
                url + "/healthz", _tls_context(certs, None)
            )  # no client certificate: refused at the handshake


def test_plaintext_http_beyond_loopback_needs_insecure_i_know(tmp_path: Path) -> None:
    args = ["--insecure", "--http", "0.0.0.0:0", "--listen", "127.0.0.1:0", "--work-dir", str(tmp_path)]
    run = subprocess.run(
        [executable("flow-worker"), *args], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert run.returncode == 2 and "--insecure-i-know" in run.stderr and "--http" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    "info",
    [None, 3, {"stages": "x"}, {"stages": [None, {"id": True}, {"id": -1}, {"id": 2**40}, {"kind": "root"}]}],
)
def test_malformed_stage_info_is_ignored_not_fatal(info: object) -> None:
    assert parse_stages(info) == {}


def test_query_log_keeps_running_queries_and_the_last_finished_ones() -> None:
    log = QueryLog("w:1")
    info = {
        "sql": "x" * 10_000,
        "stages": [{"id": 0, "kind": "shuffle", "inputs": []}, {"id": 1, "kind": "root"}],
    }
    for i in range(RECENT_QUERIES + 10):
        query_id = f"{i:016x}"
        log.task_started(query_id, 0, info, "alice")
        log.task_ended(query_id, 0, "done", rows=3, nbytes=7)
        log.finish(query_id, "release")
    log.task_started("f" * 16, 0, info, "alice")
    views = log.views()
    assert len(views) == RECENT_QUERIES + 1 and views[0]["state"] == "running"
    assert views[1]["id"] == f"{RECENT_QUERIES + 9:016x}" and len(views[1]["sql"]) == 4000
    assert views[1]["stages"][0]["tasks"] == {"done": 1, "running": 0, "failed": 0, "cancelled": 0}
    log.task_ended("f" * 16, 0, "failed", retried=True)  # a peer was lost: the submitter re-runs it
    log.finish("f" * 16, "release")
    assert log.views()[0]["state"] == "done"
    log.task_started("e" * 16, 5, {}, "bob")  # an older submitter: no info
    log.task_ended("e" * 16, 5, "failed")
    log.finish("e" * 16, "release")
    assert [(v["state"], v["stages"][0]["kind"]) for v in log.views() if v["id"] == "e" * 16] == [
        ("failed", "unknown")
    ]


def _view(address: str, state: str, rows: int) -> QueryView:
    """One worker's view of query ``aa..``: one done task of stage 0 with ``rows`` rows, as ``state``."""
    log = QueryLog(address)
    log.task_started("a" * 16, 0, {"sql": "q", "stages": [{"id": 0, "kind": "gather", "inputs": []}]}, "")
    log.task_ended("a" * 16, 0, "done", rows=rows, nbytes=1)
    return QueryView.model_validate({**log.views()[0], "state": state})


def test_merge_sums_counts_and_takes_the_worst_state() -> None:
    sources = [("a:1", [_view("a:1", "done", 2)]), ("b:1", [_view("b:1", "running", 3)])]
    (q,) = merge_queries(sources, ["a:1", "b:1"], [], 0.0)
    assert q.state == "running" and q.ended is None and q.rows == 5 and q.bytes == 2
    assert q.stages[0].tasks.done == 2 and q.stages[0].peers == ["a:1", "b:1"]
    for states, worst in [(("done", "cancelled"), "cancelled"), (("cancelled", "failed"), "failed")]:
        pair = [(a, [_view(a, s, 1)]) for a, s in zip("ab", states, strict=True)]
        assert merge_queries(pair, [], [], 0.0)[0].state == worst


def test_a_peer_on_a_wildcard_address_is_linked_at_the_address_we_dial() -> None:
    book = PeerBook(["10.0.0.6:50051"])
    info = PeerInfo("w2", "0.0.0.0:50051", "0", "55", "h", "d", http="https://0.0.0.0:8080")
    book.answered("10.0.0.6:50051", info)
    (peer,) = book.views()
    assert (peer["state"], peer["http"], peer["name"]) == ("up", "https://10.0.0.6:8080", "w2")


# ----------------------------------------------------------------------------------- last: a peer stops
def test_a_stopped_peer_turns_down_and_is_listed_unreachable(peers: list[Peer], finished: RunReport) -> None:
    watcher, gone = peers[0], peers[2]
    gone.process.stop()

    def state() -> str:
        seen = ok(watcher.url + "/api/status")["peers"]
        return str(next(p["state"] for p in seen if p["address"] == gone.address))

    wait_until(lambda: state() == "down", 12, "the stopped peer to turn down")
    listing = ok(watcher.url + "/api/queries")
    assert listing["peers_unreachable"] == [gone.address]
    q = next(q for q in listing["queries"] if q["id"] == finished.query_id)
    assert q["peers_unreachable"] == [gone.address] and gone.address not in q["peers"]
    assert _metrics(watcher.url)["flow_peers_up"].samples[0].value == 1
