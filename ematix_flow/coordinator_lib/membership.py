"""The peers of a ``Mesh``: who they are (hello), which are down, and when a down one is asked again."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import datafusion

from ematix_flow.engine.digest import hash_digest
from ematix_flow.errors import PeerMismatchError, PeerUnreachableError
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import PeerInfo

log = logging.getLogger(__name__)

#: A peer found down is asked again (with a short hello) after this many seconds.
RECHECK_SECONDS = 5.0
#: The timeout of that hello, and of other best-effort calls to peers (cancel).
RECHECK_TIMEOUT = 2.0


class Membership:
    """The peers a Mesh was given and which of them are down (since when).

    Args:
        peers: Every peer's "host:port", as the Mesh was given them.
        pool: The Flight clients to reach them.
        executor: Threads to ask them in parallel.
    """

    def __init__(self, peers: list[str], pool: ClientPool, executor: ThreadPoolExecutor) -> None:
        self.peers = peers
        self.down: dict[str, float] = {}  # peer -> when it was last found down
        self._pool = pool
        self._executor = executor

    @property
    def alive(self) -> list[str]:
        """Peers not known to be down (a down peer is asked again every few seconds)."""
        return [p for p in self.peers if p not in self.down]

    def is_down(self, peer: str) -> bool:
        """True when ``peer`` was found down (and has not answered since)."""
        return peer in self.down

    def mark_down(self, peer: str) -> None:
        """Note that ``peer`` was found down just now."""
        self.down[peer] = time.monotonic()

    def hello(self, timeout: float, peers: Sequence[str] | None = None) -> dict[str, PeerInfo]:
        """Ask peers who they are; unreachable ones are marked down (all of them down: an error).

        Args:
            timeout: Seconds each peer gets to answer.
            peers: The peers to ask (None: all of them; then none answering raises).

        Returns:
            What each peer that answered said about itself.

        Raises:
            PeerUnreachableError: No peer answered (when all were asked).
            PeerMismatchError: A peer partitions data differently from this process.
        """
        mine = hash_digest()
        asked = list(self.peers if peers is None else peers)
        futures = {p: self._executor.submit(self._pool.action, p, "hello", b"", timeout) for p in asked}
        infos: dict[str, PeerInfo] = {}
        failures: list[PeerUnreachableError] = []
        for p, f in futures.items():
            try:
                infos[p] = PeerInfo.from_bytes(f.result())
                self.down.pop(p, None)
            except PeerUnreachableError as exc:
                self.down[p] = time.monotonic()
                failures.append(exc)
        if peers is None and not infos:
            raise failures[0]
        for failure in failures:  # the mesh goes on without them
            log.warning("peer %s is down, continuing without it: %s", failure.peer, failure)
        for p, info in infos.items():
            if info.hash_digest != mine or info.datafusion_version != datafusion.__version__:
                raise PeerMismatchError(
                    f"peer {p} partitions data differently (datafusion {info.datafusion_version}, digest "
                    f"{info.hash_digest}; here {datafusion.__version__}, {mine}): "
                    "install the same ematix-flow and datafusion on every peer"
                )
        return infos

    def recheck(self) -> None:
        """Peers found down a while ago get a quick hello: one that answers rejoins."""
        due = [p for p, when in self.down.items() if time.monotonic() - when >= RECHECK_SECONDS]
        if due:
            self.hello(RECHECK_TIMEOUT, due)
