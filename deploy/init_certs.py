#!/usr/bin/env python3
"""One-shot certificate set-up of the compose mesh: a private CA, one certificate per identity.

Installed in the image as ``flow-init-certs``; the compose file's ``certs`` service runs::

    flow-init-certs --ca-dir /ca --out-dir /certs worker1 worker2 worker3 client

* ``--ca-dir`` keeps the CA (``ca.pem``, ``ca-key.pem``, made by ``flow certs init`` once) and the
  certificates it issues. Only this service mounts it: whoever holds ``ca-key.pem`` can add peers.
* ``--out-dir`` receives what the peers need: ``ca.pem`` and ``NAME.pem`` / ``NAME-key.pem`` for each
  NAME (keys mode 0600), issued for the hosts ``NAME`` (its compose service name) and ``localhost``.

Running it again changes nothing: an existing CA is never replaced, and a certificate is issued only
when it is missing from ``--out-dir`` or was signed by another CA (the CA volume was deleted alone).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ematix_flow.errors import FlowError
from ematix_flow.transport.certs import init_certs, issue_cert

CA_FILE = "ca.pem"
EXTRA_HOSTS = ("localhost",)  # the healthcheck reaches its own worker as localhost


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: where the CA lives, where the peers' material goes, which names."""
    parser = argparse.ArgumentParser(
        prog="flow-init-certs", description="Create the mesh CA once and a certificate per NAME."
    )
    parser.add_argument("--ca-dir", type=Path, required=True, help="Private: the CA and what it issued.")
    parser.add_argument("--out-dir", type=Path, required=True, help="Shared with peers: ca.pem, NAME.pem.")
    parser.add_argument("names", nargs="+", metavar="NAME", help="Certificate names (compose services).")
    return parser.parse_args(argv)


def signed_by(cert_path: Path, ca_pem: bytes) -> bool:
    """Whether the certificate at ``cert_path`` exists and was issued by the CA ``ca_pem``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):  # missing, unparsable, another CA's
        return False
    return True


def copy_file(src: Path, dest: Path, mode: int) -> None:
    """Copy ``src`` to ``dest`` with ``mode`` from creation, replacing ``dest`` in one rename."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, src.read_bytes())
    finally:
        os.close(fd)
    os.replace(tmp, dest)


def run(ca_dir: Path, out_dir: Path, names: list[str]) -> list[str]:
    """Make sure ``out_dir`` holds ``ca.pem`` and a certificate of that CA for each name.

    Returns:
        One line per action taken (empty when everything was already in place).

    Raises:
        FlowError: a name or host is invalid, or a file cannot be written.
    """
    done: list[str] = []
    if not (ca_dir / CA_FILE).is_file():
        init_certs(ca_dir, list(EXTRA_HOSTS))
        done.append(f"created a new CA in {ca_dir}")
    ca_pem = (ca_dir / CA_FILE).read_bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        cert, key = out_dir / f"{name}.pem", out_dir / f"{name}-key.pem"
        if key.is_file() and signed_by(cert, ca_pem):
            continue
        issue_cert(ca_dir, name, [name, *EXTRA_HOSTS])
        copy_file(ca_dir / f"{name}-key.pem", key, 0o600)
        copy_file(ca_dir / f"{name}.pem", cert, 0o644)
        done.append(f"issued {name} (hosts {', '.join([name, *EXTRA_HOSTS])})")
    if not (out_dir / CA_FILE).is_file() or (out_dir / CA_FILE).read_bytes() != ca_pem:
        copy_file(ca_dir / CA_FILE, out_dir / CA_FILE, 0o644)  # last: the others are in place already
        done.append(f"copied {CA_FILE} to {out_dir}")
    return done


def main(argv: list[str] | None = None) -> int:
    """Run the set-up and print what was done; the process exit status."""
    args = parse_args(argv)
    try:
        done = run(args.ca_dir, args.out_dir, args.names)
    except (FlowError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in done or [f"certificates in {args.out_dir} are up to date: nothing to do"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
