"""A worker's background loops: asking its ``--peers`` whether they are alive, expiring forgotten queries.

Each loop runs on a daemon thread of its own until the worker's ``stop`` event is set.
"""

from __future__ import annotations

import logging
import threading
import time

from ematix_flow.errors import FlowError
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import PeerInfo
from ematix_flow.worker.admission import Admission
from ematix_flow.worker.store import WorkStore
from ematix_flow.worker.telemetry import PeerBook, QueryLog

log = logging.getLogger(__name__)

#: How often a worker asks its --peers whether they are alive, and how long it waits for an answer.
PEER_CHECK_SECONDS = 5.0
PEER_CHECK_TIMEOUT = 2.0
#: For this long after start, peers that never answered are asked every second (they may be starting too).
PEER_FIRST_CONTACT_SECONDS = 30.0


def watch_peers(
    peers: list[str], pool: ClientPool, book: PeerBook, stop: threading.Event, started: float
) -> None:
    """Ask every ``--peers`` entry ``hello`` now and every few seconds; remember what each answered.

    Args:
        peers: The addresses to ask.
        pool: The Flight clients to ask them with.
        book: Where each answer (or its absence) is recorded.
        stop: Ends the loop when set.
        started: ``time.monotonic()`` when the worker started.
    """
    while True:
        for peer in peers:
            try:
                info = PeerInfo.from_bytes(pool.action(peer, "hello", b"", PEER_CHECK_TIMEOUT))
            except FlowError as exc:
                before = book.failed(peer)
                if before == "up":
                    log.warning("peer %s is down: %s", peer, exc)
                elif before == "unknown":
                    log.info("peer %s does not answer yet: %s", peer, exc)
            else:
                if book.answered(peer, info) == "down":
                    log.info("peer %s is back", peer)
        starting = time.monotonic() - started < PEER_FIRST_CONTACT_SECONDS
        if stop.wait(1.0 if starting and book.unseen() else PEER_CHECK_SECONDS):
            return


def expire_queries(
    store: WorkStore, admission: Admission, queries: QueryLog, ttl: float, stop: threading.Event
) -> None:
    """Remove files of queries nobody released (their submitter vanished) once idle for ``ttl`` seconds.

    Args:
        store: The work dir.
        admission: Tells which queries have tasks queued or running (never expired).
        queries: The query log, whose entries expire too.
        ttl: Seconds of idleness after which a query is expired (``--query-ttl``).
        stop: Ends the loop when set.
    """
    period = max(0.5, min(60.0, ttl / 4))
    while not stop.wait(period):
        for query_id in store.queries():
            busy = admission.busy(query_id)
            idle = store.idle_seconds(query_id)
            if not busy and idle > ttl:
                log.info("query=%s: expired after %.0fs without a release", query_id, idle)
                store.release(query_id)
                queries.finish(query_id, "expire")
        queries.expire(ttl)
