"""The status page at ``/`` of ``flow-worker --http``, driven in headless Chromium (Debian's package).

A real 3-peer mesh over mTLS, each worker serving HTTP on 127.0.0.1; the page of one worker must list
the mesh, then follow a query while it runs (its row, its SQL, its stage graph with progress), then show
it done. The query is held open by a Python UDF that waits for a file the test creates, so the test
decides when it finishes instead of guessing how long it takes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import ScalarUDF, udf
from support import HOSTS, TASK_TIMEOUT, WorkerProcess, flow_worker

from ematix_flow import Mesh, TLSConfig
from ematix_flow.transport.certs import init_certs, issue_cert

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    pytest.skip("playwright is not importable: pip install -e '.[dev]'", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CHROMIUM = Path("/usr/bin/chromium")
#: Headless Chromium that talks to nothing but the page under test.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "build" / "screenshots" / "status-page.png"
HTTP_URL = re.compile(r" http (http://127\.0\.0\.1:\d+)$")
UI_TIMEOUT_MS = 30_000  # peers are checked every 5 s; the page polls every second
GATE_TIMEOUT = 90.0  # seconds a task waits for the gate at most: a failed test still lets the query end
NAMES = ["w1", "w2", "w3"]
ROWS = 20_000
SQL = "SELECT k, wait_for_gate(sum(v)) AS s FROM t GROUP BY k ORDER BY k"


def gate_udf(gate: Path) -> ScalarUDF:
    """A UDF that returns its input once ``gate`` exists: the query runs until the test opens it.

    A nested function, so it is pickled by value (the workers cannot import this test module).
    """
    path = str(gate)
    limit = GATE_TIMEOUT

    def wait_for_gate(values: pa.Array) -> pa.Array:
        import os
        import time

        deadline = time.monotonic() + limit
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)  # inside the worker: the workload of this query, not a test synchronisation
        return values

    return udf(wait_for_gate, [pa.int64()], pa.int64(), "volatile", name="wait_for_gate")


def http_url(worker: WorkerProcess) -> str:
    """The status server of ``worker``, from the end of its ready line."""
    m = HTTP_URL.search(worker.ready_line)
    assert m, f"no http URL in the ready line: {worker.ready_line!r}"
    return m.group(1)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """One CA: the workers w1, w2, w3 and the submitter alice (the page shows these names)."""
    path = tmp_path / "certs"
    init_certs(path, HOSTS)
    for name in [*NAMES, "alice"]:
        issue_cert(path, name, HOSTS)
    return path


@pytest.fixture
def mesh_workers(certs: Path, tmp_path: Path, table: Path) -> Iterator[list[WorkerProcess]]:
    """Three workers with ``--http 127.0.0.1:0`` and table ``t`` in their catalog, started in turn,
    each with the earlier ones as ``--peers``: the last one knows the whole mesh, with no port picked
    in advance."""
    with ExitStack() as stack:
        workers: list[WorkerProcess] = []
        for name in NAMES:
            args = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--tls-dir", str(certs)]
            args += ["--tls-name", name, "--work-dir", str(tmp_path / "work"), "--allow-udfs"]
            args += ["--table", f"t={table}"]
            if workers:
                args += ["--peers", ",".join(w.address for w in workers)]
            workers.append(stack.enter_context(flow_worker(args)))
        yield workers


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, through playwright (no browser download)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """``t``: ROWS rows, ``k`` = ``v`` mod 7, ``v`` = 0, 1, 2, ..."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": [i % 7 for i in range(ROWS)], "v": list(range(ROWS))}), path)
    return path


def run_in_thread(target: Callable[[], pa.Table]) -> tuple[threading.Thread, dict[str, object]]:
    """Run ``target`` in a thread; its result or exception lands in the returned dict."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # reported by the test, not lost in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="slow-query", daemon=True)
    thread.start()
    return thread, outcome


def test_status_page_shows_the_mesh_and_follows_a_query(
    browser: Browser, mesh_workers: list[WorkerProcess], certs: Path, table: Path, tmp_path: Path
) -> None:
    watched = mesh_workers[-1]  # knows the other two through --peers
    gate = tmp_path / "gate-open"
    page: Page = browser.new_page(viewport={"width": 1280, "height": 900})
    page_errors: list[str] = []  # uncaught exceptions, and console errors (a failed fetch, a 404)
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("console", lambda msg: page_errors.append(msg.text) if msg.type == "error" else None)

    # the page loads and shows this worker and the mesh: itself and two peers, all up
    page.goto(http_url(watched) + "/")
    expect(page.locator("#worker-address")).to_have_text(watched.address, timeout=UI_TIMEOUT_MS)
    expect(page.locator("#worker-name")).to_have_text("w3")
    expect(page.locator("#worker-tables")).to_have_text("t")  # its catalog
    expect(page.locator("#peers tr")).to_have_count(3, timeout=UI_TIMEOUT_MS)
    for name, worker in zip(NAMES, mesh_workers, strict=True):
        row = page.locator(f'#peers tr[data-address="{worker.address}"]')
        expect(row).to_have_attribute("data-state", "up", timeout=UI_TIMEOUT_MS)
        expect(row.locator("td").first).to_contain_text(name)
    expect(page.locator("#peers tr.self")).to_have_attribute("data-address", watched.address)

    addresses = [w.address for w in mesh_workers]
    tls = TLSConfig.from_dir(certs, "alice")
    with Mesh(addresses, tls, min_task_bytes=1, task_timeout=TASK_TIMEOUT) as mesh:
        mesh.register_parquet("t", str(table))
        mesh.register_udf(gate_udf(gate))
        thread, outcome = run_in_thread(lambda: mesh.sql(SQL))
        try:
            # the query shows up running, with its SQL, and its stage graph is drawn with progress:
            # the first stage done (its bar full), the stage of the UDF running
            running = page.locator('#queries tr[data-state="running"]')
            expect(running).to_have_count(1, timeout=UI_TIMEOUT_MS)
            expect(running.locator("td.sql")).to_contain_text("wait_for_gate(sum(v))")
            query_id = running.get_attribute("data-query-id")
            assert query_id
            graph = page.locator(f'#graph[data-query-id="{query_id}"]')
            expect(graph).to_have_attribute("data-state", "running", timeout=UI_TIMEOUT_MS)
            done_stage = graph.locator('.stage.is-done .progress[aria-valuenow="100"]')
            expect(done_stage.first).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(graph.locator(".stage.is-running").first).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.locator("#api-error")).to_be_hidden()

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            print(f"status page screenshot: {SCREENSHOT}")
        finally:
            gate.touch()  # let the query finish, whatever happened above
            thread.join(TASK_TIMEOUT)
        assert not thread.is_alive(), "the query did not finish once the gate was open"
        assert "error" not in outcome, f"the query failed: {outcome.get('error')!r}"
        result = outcome["result"]
        assert isinstance(result, pa.Table)
        assert result.column("s").to_pylist() == [sum(range(k, ROWS, 7)) for k in range(7)]

        # once it has finished, the page shows it done
        row = page.locator(f'#queries tr[data-query-id="{query_id}"]')
        expect(row).to_have_attribute("data-state", "done", timeout=UI_TIMEOUT_MS)
        expect(graph).to_have_attribute("data-state", "done", timeout=UI_TIMEOUT_MS)
        expect(graph.locator(".stage.is-running")).to_have_count(0)

        # a newer query takes the graph over; clicking the first one's row brings it back
        mesh.sql("SELECT count(*) AS n FROM t WHERE v % 2 = 0")
        newer = page.locator(f'#queries tr[data-state="done"]:not([data-query-id="{query_id}"])')
        expect(newer).to_have_count(1, timeout=UI_TIMEOUT_MS)
        newer_id = newer.get_attribute("data-query-id")
        expect(page.locator("#graph")).to_have_attribute(
            "data-query-id", str(newer_id), timeout=UI_TIMEOUT_MS
        )
        row.click()
        expect(page.locator("#graph")).to_have_attribute("data-query-id", query_id)
        expect(row).to_have_class("selected")
    assert page_errors == []

    # the worker goes away: the page says so instead of showing stale data as live
    watched.process.terminate()
    expect(page.locator("#api-error")).to_contain_text("API unreachable", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#peers tr")).to_have_count(3)  # the last data stays, dimmed
