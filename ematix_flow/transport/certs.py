"""Minting the mesh's mutual-TLS material: a private CA and the peer certificates it signs.

``flow certs init`` writes the CA and a ``peer`` certificate; ``flow certs issue --name NAME`` adds
``NAME.pem`` and ``NAME-key.pem``. Every leaf has both ``serverAuth`` and ``clientAuth`` (a peer is a
Flight server and a client of the other peers), and its name as its first subjectAltName (gRPC
reports that as the caller's identity, which ``--allow-peer`` matches). Keys are EC P-256,
PEM/PKCS8, unencrypted, written with mode 0600 from creation. Loading them is ``transport/tls.py``.

Example:
    >>> init_certs("certs", ["127.0.0.1", "localhost"])  # doctest: +SKIP
    >>> issue_cert("certs", "w2", ["10.0.0.2", "w2.internal"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ematix_flow.errors import ConfigError, TLSError
from ematix_flow.transport.tls import (
    CA_CERT_FILE,
    DEFAULT_CERT_NAME,
    check_cert_name,
    parse_cert,
    parse_key,
    public_der,
)

__all__ = ["DEFAULT_DAYS", "init_certs", "issue_cert"]

DEFAULT_DAYS = 825
"""Validity of new certificates, in days (the longest most TLS clients accept for a leaf)."""

_CA_KEY = "ca-key.pem"
_BACKDATE = dt.timedelta(minutes=5)
_DNS_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*"
)


def init_certs(
    directory: str | os.PathLike[str],
    hosts: Sequence[str],
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> list[Path]:
    """Create a new mesh CA and a ``peer`` certificate signed by it.

    Args:
        directory: Where to write (created if missing).
        hosts: Host names and IP literals the ``peer`` certificate is valid for (its SANs).
        days: Validity of both certificates, in days.
        force: Replace an existing CA (every certificate it signed stops being trusted).

    Returns:
        The files written, in order: ``ca-key.pem``, ``ca.pem``, ``peer.pem``, ``peer-key.pem``.

    Raises:
        ConfigError: A CA already exists (and not ``force``), a host or ``days`` is invalid, or a
            file cannot be written.
    """
    root = Path(directory)
    sans = _sans(hosts)
    _check_days(days)
    ca_path = root / CA_CERT_FILE
    if ca_path.exists() and not force:
        raise ConfigError(
            f"CA already exists: {ca_path} (use it with: flow certs issue --dir {root} --name NAME, "
            "or replace it and everything it signed with --force)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create certificate directory {root}: {exc.strerror or exc}") from exc
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ematix-flow"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ematix-flow CA {secrets.token_hex(4)}"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    written = [
        _write_key(root / _CA_KEY, ca_key),
        _write_cert(ca_path, ca_cert),
    ]
    written += _issue(root, DEFAULT_CERT_NAME, sans, days, ca_cert, ca_key, now)
    return written


def issue_cert(
    directory: str | os.PathLike[str],
    name: str,
    hosts: Sequence[str],
    *,
    days: int = DEFAULT_DAYS,
) -> list[Path]:
    """Write ``{name}.pem`` and ``{name}-key.pem`` signed by the CA in ``directory``.

    An existing certificate of the same name is replaced (this is how a certificate is renewed).

    Args:
        directory: A directory made by :func:`init_certs` (holds ``ca.pem`` and ``ca-key.pem``).
        name: The certificate's common name and file stem (letters, digits, ``.``, ``_``, ``-``).
        hosts: Host names and IP literals the certificate is valid for (its SANs).
        days: Validity in days (capped at the CA's own expiry).

    Returns:
        The files written: ``{name}.pem`` and ``{name}-key.pem``.

    Raises:
        ConfigError: The CA is missing or unusable, ``name``/``hosts``/``days`` is invalid, or a
            file cannot be written.
    """
    root = Path(directory)
    check_cert_name(name)
    sans = _sans(hosts)
    _check_days(days)
    ca_path, ca_key_path = root / CA_CERT_FILE, root / _CA_KEY
    for path in (ca_path, ca_key_path):
        if not path.is_file():
            raise ConfigError(
                f"CA not found: {path} "
                f"(create it with: flow certs init --dir {root} --hosts 127.0.0.1,localhost)"
            )
    try:
        ca_cert = parse_cert(ca_path.read_bytes(), ca_path)
        ca_key = parse_key(ca_key_path.read_bytes(), ca_key_path)
    except OSError as exc:
        raise ConfigError(f"cannot read CA: {exc.filename}: {exc.strerror or exc}") from exc
    except TLSError as exc:
        raise ConfigError(str(exc)) from exc
    if public_der(ca_key) != public_der(ca_cert):
        raise ConfigError(
            f"CA key does not match the CA certificate: {ca_key_path} (re-run flow certs init --force)"
        )
    return _issue(root, name, sans, days, ca_cert, ca_key, _now())


def _issue(
    root: Path,
    name: str,
    sans: list[x509.GeneralName],
    days: int,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> list[Path]:
    """Sign a serverAuth+clientAuth leaf for ``name`` and write it and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ematix-flow"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_identity_first(name, sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return [_write_cert(root / f"{name}.pem", cert), _write_key(root / f"{name}-key.pem", key)]


def _identity_first(name: str, sans: list[x509.GeneralName]) -> list[x509.GeneralName]:
    """The SANs with the certificate's name first.

    gRPC reports a caller's first SAN as its identity: what a worker's ``--allow-peer`` matches.
    """
    identity = x509.DNSName(name.lower())
    return [identity, *(s for s in sans if s != identity)]


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Turn host names / IP literals into SAN entries (IP literals as IPAddress, others as DNSName)."""
    if isinstance(hosts, str):
        hosts = hosts.split(",")
    seen: set[str] = set()
    sans: list[x509.GeneralName] = []
    for raw in hosts:
        host = raw.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(literal)))
            continue
        except ValueError:
            pass
        if len(host) > 253 or not _DNS_RE.fullmatch(host):
            raise ConfigError(f"invalid host for a certificate: {host!r} (use a DNS name or an IP address)")
        sans.append(x509.DNSName(host.lower()))
    if not sans:
        raise ConfigError("no hosts given for the certificate (e.g. --hosts 127.0.0.1,localhost)")
    return sans


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"invalid validity: {days} days (must be at least 1)")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _write(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    return _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` with ``mode`` from creation (fchmod too: the file may pre-exist)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
