"""Mutual-TLS material for the peer mesh: generation, loading and Flight keyword arguments.

Every peer is both a Flight server and a client of the other peers, so one leaf certificate (with
both ``serverAuth`` and ``clientAuth``) signed by the mesh's own CA serves both roles. A directory
made by ``flow certs init`` holds::

    ca.pem  ca-key.pem  peer.pem  peer-key.pem

and ``flow certs issue --name NAME`` adds ``NAME.pem`` and ``NAME-key.pem``. Keys are EC P-256,
PEM/PKCS8, unencrypted, written with mode 0600 from creation.

Example:
    >>> tls = TLSConfig.from_dir("certs")  # doctest: +SKIP
    >>> server = MyFlightServer(location("127.0.0.1:0", tls), **flight_server_kwargs(tls))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.flight as flight
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ematix_flow.errors import ConfigError, TLSError

__all__ = [
    "DEFAULT_DAYS",
    "TLSConfig",
    "flight_client_kwargs",
    "flight_server_kwargs",
    "init_certs",
    "issue_cert",
    "location",
]

DEFAULT_DAYS = 825
"""Validity of new certificates, in days (the longest most TLS clients accept for a leaf)."""

_CA_CERT = "ca.pem"
_CA_KEY = "ca-key.pem"
_INIT_NAME = "peer"
_BACKDATE = dt.timedelta(minutes=5)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*"
)
_RESERVED_NAMES = frozenset({"ca", "ca-key"})
_SCHEME_TLS = "grpc+tls"
_SCHEME_PLAIN = "grpc"
_PLAIN_SCHEMES = frozenset({"grpc", "grpc+tcp"})


@dataclass(frozen=True, repr=False)
class TLSConfig:
    """The PEM material one peer needs: the mesh CA, its own certificate and its private key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], name: str = _INIT_NAME) -> TLSConfig:
        """Load ``ca.pem``, ``{name}.pem`` and ``{name}-key.pem`` from a ``flow certs`` directory.

        Args:
            directory: The directory written by ``flow certs init`` / ``flow certs issue``.
            name: The certificate's name (``peer`` for the one made by ``init``).

        Returns:
            The loaded material, checked to parse and to belong together.

        Raises:
            TLSError: A file is missing, unreadable, not PEM, or the key does not match the cert.
            ConfigError: ``name`` is not a simple file-name-safe identifier.
        """
        root = Path(directory)
        _check_name(name)
        if name == _INIT_NAME:
            fix = f"flow certs init --dir {root} --hosts 127.0.0.1,localhost"
        else:
            fix = f"flow certs issue --dir {root} --name {name} --hosts 127.0.0.1,localhost"
        ca_pem = _read_material(root / _CA_CERT, fix)
        cert_pem = _read_material(root / f"{name}.pem", fix)
        key_pem = _read_material(root / f"{name}-key.pem", fix)
        _parse_cert(ca_pem, root / _CA_CERT)
        cert = _parse_cert(cert_pem, root / f"{name}.pem")
        key = _parse_key(key_pem, root / f"{name}-key.pem")
        if _public_der(key) != _public_der(cert):
            raise TLSError(
                f"TLS key does not match its certificate: {root / f'{name}-key.pem'} (re-issue both)"
            )
        return cls(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)

    def common_name(self) -> str:
        """Return the subject common name (CN) of :attr:`cert_pem`.

        Raises:
            TLSError: The certificate does not parse or has no CN.
        """
        cert = _parse_cert(self.cert_pem, Path("<cert_pem>"))
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not attrs:
            raise TLSError("TLS certificate has no common name (re-issue it with: flow certs issue)")
        value = attrs[0].value
        return value.decode() if isinstance(value, bytes) else value

    def __repr__(self) -> str:
        try:
            cn = repr(self.common_name())
        except TLSError:
            cn = "<unparsable>"
        return (
            f"TLSConfig(cn={cn}, ca_pem=<{len(self.ca_pem)} bytes>, "
            f"cert_pem=<{len(self.cert_pem)} bytes>, key_pem=<redacted>)"
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
    ca_path = root / _CA_CERT
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
    written += _issue(root, _INIT_NAME, sans, days, ca_cert, ca_key, now)
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
    _check_name(name)
    sans = _sans(hosts)
    _check_days(days)
    ca_path, ca_key_path = root / _CA_CERT, root / _CA_KEY
    for path in (ca_path, ca_key_path):
        if not path.is_file():
            raise ConfigError(
                f"CA not found: {path} "
                f"(create it with: flow certs init --dir {root} --hosts 127.0.0.1,localhost)"
            )
    try:
        ca_cert = _parse_cert(ca_path.read_bytes(), ca_path)
        ca_key = _parse_key(ca_key_path.read_bytes(), ca_key_path)
    except OSError as exc:
        raise ConfigError(f"cannot read CA: {exc.filename}: {exc.strerror or exc}") from exc
    except TLSError as exc:
        raise ConfigError(str(exc)) from exc
    if _public_der(ca_key) != _public_der(ca_cert):
        raise ConfigError(
            f"CA key does not match the CA certificate: {ca_key_path} (re-run flow certs init --force)"
        )
    return _issue(root, name, sans, days, ca_cert, ca_key, _now())


def flight_server_kwargs(tls: TLSConfig) -> dict[str, Any]:
    """Keyword arguments for ``pyarrow.flight.FlightServerBase.__init__`` enforcing mutual TLS.

    The server presents ``tls``'s certificate and requires every client to present one signed by
    the same CA.
    """
    return {
        "tls_certificates": [flight.CertKeyPair(cert=tls.cert_pem, key=tls.key_pem)],
        "verify_client": True,
        "root_certificates": tls.ca_pem,
    }


def flight_client_kwargs(tls: TLSConfig) -> dict[str, Any]:
    """Keyword arguments for ``pyarrow.flight.FlightClient`` for a mutual-TLS connection.

    The client trusts only the mesh CA and presents ``tls``'s certificate as its identity.
    """
    return {
        "tls_root_certs": tls.ca_pem,
        "cert_chain": tls.cert_pem,
        "private_key": tls.key_pem,
    }


def location(address: str, tls: TLSConfig | None) -> str:
    """Return the Flight URI of ``address``: ``grpc+tls://host:port`` with TLS, else ``grpc://host:port``.

    Args:
        address: ``host:port``, ``[ipv6]:port``, or either with a ``grpc://``, ``grpc+tcp://`` or
            ``grpc+tls://`` scheme (which must agree with ``tls``).
        tls: The peer's TLS material, or ``None`` for plaintext.

    Raises:
        ConfigError: The address is malformed or its scheme contradicts ``tls``.
    """
    rest = address.strip()
    scheme, sep, hostport = rest.partition("://")
    if not sep:
        scheme, hostport = "", rest
    else:
        scheme = scheme.lower()
        if scheme == _SCHEME_TLS and tls is None:
            raise ConfigError(f"address {address!r} asks for TLS but no TLS material is configured")
        if scheme in _PLAIN_SCHEMES and tls is not None:
            raise ConfigError(
                f"address {address!r} is plaintext but TLS is configured (use grpc+tls:// or host:port)"
            )
        if scheme != _SCHEME_TLS and scheme not in _PLAIN_SCHEMES:
            raise ConfigError(f"unsupported address scheme {scheme!r} in {address!r} (use host:port)")
    host, port = _split_host_port(hostport.rstrip("/"), address)
    return f"{_SCHEME_TLS if tls is not None else _SCHEME_PLAIN}://{host}:{port}"


def _split_host_port(hostport: str, address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; return the host as it goes in a URI (v6 bracketed)."""
    bad = f"invalid peer address {address!r} (expected host:port or [ipv6]:port)"
    if hostport.startswith("["):
        host, sep, port_text = hostport[1:].partition("]:")
        if not sep:
            raise ConfigError(bad)
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigError(bad) from exc
        host = f"[{host}]"
    else:
        host, sep, port_text = hostport.rpartition(":")
        if not sep or not host or ":" in host or "/" in host:
            raise ConfigError(bad)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(bad)
    return host, int(port_text)


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


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name) or name in _RESERVED_NAMES or name.endswith("-key"):
        raise ConfigError(
            f"invalid certificate name {name!r} (use letters, digits, '.', '_', '-'; "
            "not 'ca' and not ending in '-key')"
        )


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"invalid validity: {days} days (must be at least 1)")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _read_material(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise TLSError(f"TLS material not found: {path} (create it with: {fix})") from exc
    except OSError as exc:
        raise TLSError(f"TLS material unreadable: {path}: {exc.strerror or exc}") from exc


def _parse_cert(pem: bytes, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TLSError(f"not a PEM certificate: {path}") from exc


def _parse_key(pem: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSError(f"not an unencrypted PEM private key: {path}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSError(f"not an EC private key: {path} (re-issue it with: flow certs)")
    return key


def _public_der(obj: ec.EllipticCurvePrivateKey | x509.Certificate) -> bytes:
    public = obj.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


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
