#!/usr/bin/env python3
"""Container healthcheck of a ``flow-worker``: does it answer ``hello`` over mutual TLS?

Installed in the image as ``flow-healthcheck``; the compose file runs, in each worker's container::

    flow-healthcheck --tls-dir /certs --tls-name worker1 localhost:50051

It presents the worker's own certificate (so a worker started with ``--allow-peer`` for its mesh
accepts it), checks the worker's certificate against the mesh CA and the host name, and calls the
``hello`` action. Exit status 0 with one line on stdout when the worker answered, 1 with one line on
stderr otherwise (Docker keeps both in ``docker inspect``).
"""

from __future__ import annotations

import argparse
import os
import sys

from ematix_flow.errors import FlowError
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.messages import PeerInfo
from ematix_flow.transport.tls import TLSConfig

DEFAULT_ADDRESS = "localhost:50051"
DEFAULT_TIMEOUT = 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the worker's address, the TLS material to present, the time allowed."""
    parser = argparse.ArgumentParser(
        prog="flow-healthcheck", description="Exit 0 if the flow-worker at ADDRESS answers hello."
    )
    parser.add_argument(
        "address", nargs="?", default=DEFAULT_ADDRESS, help=f"HOST:PORT [default: {DEFAULT_ADDRESS}]"
    )
    parser.add_argument(
        "--tls-dir",
        default=os.environ.get("FLOW_TLS_DIR"),
        help="Dir with ca.pem and NAME.pem [$FLOW_TLS_DIR]; without it: plaintext (--insecure workers).",
    )
    parser.add_argument("--tls-name", default="peer", help="Certificate to present [default: peer].")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"Seconds [default: {DEFAULT_TIMEOUT:g}]."
    )
    return parser.parse_args(argv)


def check(address: str, tls_dir: str | None, tls_name: str, timeout: float) -> str:
    """Call ``hello`` on ``address``; return a one-line description of the worker that answered.

    Raises:
        FlowError: the TLS material is missing or bad, or the worker did not answer in time.
    """
    tls = TLSConfig.from_dir(tls_dir, tls_name) if tls_dir else None
    pool = ClientPool(tls)
    try:
        info = PeerInfo.from_bytes(pool.action(address, "hello", b"", timeout))
    finally:
        pool.close()
    down = f", peers down: {', '.join(info.peers_down)}" if info.peers_down else ""
    return f"ok: {info.name} at {address} answered (ematix-flow {info.version}){down}"


def main(argv: list[str] | None = None) -> int:
    """Run the check; the process exit status."""
    args = parse_args(argv)
    try:
        print(check(args.address, args.tls_dir, args.tls_name, args.timeout))
    except FlowError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
