"""Mutual-TLS at run time: loading a peer's material, Flight keyword arguments, addresses, identity.

Every peer is both a Flight server and a client of the other peers, so one leaf certificate (with
both ``serverAuth`` and ``clientAuth``) signed by the mesh's own CA serves both roles. A directory
made by ``flow certs init`` holds::

    ca.pem  ca-key.pem  peer.pem  peer-key.pem

and ``flow certs issue --name NAME`` adds ``NAME.pem`` and ``NAME-key.pem`` (minting them is
``transport/certs.py``). gRPC reports a caller's first subjectAltName as its identity, which
``flow certs`` sets to the certificate's name.

Example:
    >>> tls = TLSConfig.from_dir("certs")  # doctest: +SKIP
    >>> server = MyFlightServer(location("127.0.0.1:0", tls), **flight_server_kwargs(tls))  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.flight as flight
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ematix_flow.errors import ConfigError, TLSError

__all__ = [
    "TLSConfig",
    "flight_client_kwargs",
    "flight_server_kwargs",
    "location",
]

#: The mesh CA's certificate in a ``flow certs`` directory.
CA_CERT_FILE = "ca.pem"
#: The name of the certificate ``flow certs init`` makes (``peer.pem``, ``peer-key.pem``).
DEFAULT_CERT_NAME = "peer"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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
    def from_dir(cls, directory: str | os.PathLike[str], name: str = DEFAULT_CERT_NAME) -> TLSConfig:
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
        check_cert_name(name)
        if name == DEFAULT_CERT_NAME:
            fix = f"flow certs init --dir {root} --hosts 127.0.0.1,localhost"
        else:
            fix = f"flow certs issue --dir {root} --name {name} --hosts 127.0.0.1,localhost"
        ca_pem = _read_material(root / CA_CERT_FILE, fix)
        cert_pem = _read_material(root / f"{name}.pem", fix)
        key_pem = _read_material(root / f"{name}-key.pem", fix)
        parse_cert(ca_pem, root / CA_CERT_FILE)
        cert = parse_cert(cert_pem, root / f"{name}.pem")
        key = parse_key(key_pem, root / f"{name}-key.pem")
        if public_der(key) != public_der(cert):
            raise TLSError(
                f"TLS key does not match its certificate: {root / f'{name}-key.pem'} (re-issue both)"
            )
        return cls(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)

    def common_name(self) -> str:
        """Return the subject common name (CN) of :attr:`cert_pem`.

        Raises:
            TLSError: The certificate does not parse or has no CN.
        """
        cert = parse_cert(self.cert_pem, Path("<cert_pem>"))
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


def check_cert_name(name: str) -> None:
    """Refuse a certificate name that is no simple file stem (it names ``{name}.pem``).

    Raises:
        ConfigError: ``name`` has other characters, is ``ca`` / ``ca-key``, or ends in ``-key``.
    """
    if not _NAME_RE.fullmatch(name) or name in _RESERVED_NAMES or name.endswith("-key"):
        raise ConfigError(
            f"invalid certificate name {name!r} (use letters, digits, '.', '_', '-'; "
            "not 'ca' and not ending in '-key')"
        )


def _read_material(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise TLSError(f"TLS material not found: {path} (create it with: {fix})") from exc
    except OSError as exc:
        raise TLSError(f"TLS material unreadable: {path}: {exc.strerror or exc}") from exc


def parse_cert(pem: bytes, path: Path) -> x509.Certificate:
    """The certificate in ``pem`` (read from ``path``, named in the error).

    Raises:
        TLSError: ``pem`` is not a PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TLSError(f"not a PEM certificate: {path}") from exc


def parse_key(pem: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    """The EC private key in ``pem`` (read from ``path``, named in the error).

    Raises:
        TLSError: ``pem`` is not an unencrypted PEM EC private key.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSError(f"not an unencrypted PEM private key: {path}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSError(f"not an EC private key: {path} (re-issue it with: flow certs)")
    return key


def public_der(obj: ec.EllipticCurvePrivateKey | x509.Certificate) -> bytes:
    """The DER public key of a key or certificate: equal when they belong together."""
    public = obj.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
