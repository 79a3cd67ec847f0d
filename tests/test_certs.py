"""``flow certs`` and the mutual-TLS transport helpers, down to real Flight handshakes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.flight as flight
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ematix_flow.cli.certs_cmd import certs
from ematix_flow.errors import ConfigError, FlowError, PeerUnreachableError, TLSError
from ematix_flow.transport.certs import init_certs, issue_cert
from ematix_flow.transport.flight import ClientPool
from ematix_flow.transport.tls import TLSConfig, flight_client_kwargs, flight_server_kwargs, location

HOSTS = ["127.0.0.1", "localhost"]
CALL = flight.FlightCallOptions(timeout=5)
#: How gRPC's client sees a server that refused it during the handshake: the server hung up.
HUNG_UP = r"Socket closed|Connection reset by peer"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    init_certs(directory, HOSTS)
    return directory


# --- generation -----------------------------------------------------------------------------------


def test_init_writes_ca_and_peer_with_private_keys(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "certs"
    written = init_certs(directory, HOSTS)
    names = {"ca.pem", "ca-key.pem", "peer.pem", "peer-key.pem"}
    assert {p.name for p in written} == names
    assert {p.name for p in directory.iterdir()} == names
    assert _mode(directory / "ca-key.pem") == 0o600
    assert _mode(directory / "peer-key.pem") == 0o600
    assert _mode(directory / "ca.pem") == 0o644
    assert _mode(directory / "peer.pem") == 0o644
    for key in ("ca-key.pem", "peer-key.pem"):
        assert (directory / key).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, clear


def test_ca_is_a_ca(mesh: Path) -> None:
    ca = _cert(mesh / "ca.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca.verify_directly_issued_by(ca)


def test_leaf_verifies_against_ca_and_has_the_specified_extensions(mesh: Path) -> None:
    ca, leaf = _cert(mesh / "ca.pem"), _cert(mesh / "peer.pem")
    leaf.verify_directly_issued_by(ca)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "peer"
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    ekus = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _sans(leaf) == [
        x509.DNSName("peer"),  # the name first: gRPC reports the first SAN as the caller's identity
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(minutes=6) <= leaf.not_valid_before_utc <= now - dt.timedelta(minutes=4)


def test_issue_cert_uses_only_the_given_hosts(mesh: Path) -> None:
    written = issue_cert(mesh, "worker-2", ["10.0.0.12", "worker-2.internal", "::1"], days=30)
    assert [p.name for p in written] == ["worker-2.pem", "worker-2-key.pem"]
    assert _mode(mesh / "worker-2-key.pem") == 0o600
    leaf = _cert(mesh / "worker-2.pem")
    leaf.verify_directly_issued_by(_cert(mesh / "ca.pem"))
    assert TLSConfig.from_dir(mesh, "worker-2").common_name() == "worker-2"
    assert _sans(leaf) == [
        x509.DNSName("worker-2"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.12")),
        x509.DNSName("worker-2.internal"),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=30, minutes=5)


def test_issue_cert_tightens_an_existing_key_file_to_0600(mesh: Path) -> None:
    loose = mesh / "w1-key.pem"
    loose.write_bytes(b"old")
    loose.chmod(0o644)
    issue_cert(mesh, "w1", HOSTS)
    assert _mode(loose) == 0o600


def test_issue_cert_without_ca_fails_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        issue_cert(tmp_path / "empty", "worker-2", HOSTS)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "empty" / "ca.pem") in message
    assert "flow certs init" in message


@pytest.mark.parametrize("name", ["", "ca", "ca-key", "peer-key", "../x", "a/b", "x y", ".hidden"])
def test_issue_cert_rejects_unsafe_names(mesh: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid certificate name"):
        issue_cert(mesh, name, HOSTS)


@pytest.mark.parametrize("hosts", [[], [" ", ""], ["bad host"], ["-x.example"]])
def test_bad_hosts_are_refused(tmp_path: Path, hosts: list[str]) -> None:
    with pytest.raises(ConfigError):
        init_certs(tmp_path / "certs", hosts)
    assert not (tmp_path / "certs" / "ca.pem").exists()


def test_init_refuses_to_overwrite_unless_forced(mesh: Path) -> None:
    before = (mesh / "ca.pem").read_bytes()
    with pytest.raises(ConfigError) as info:
        init_certs(mesh, HOSTS)
    assert "\n" not in str(info.value) and "--force" in str(info.value)
    assert (mesh / "ca.pem").read_bytes() == before
    init_certs(mesh, HOSTS, force=True)
    assert (mesh / "ca.pem").read_bytes() != before
    _cert(mesh / "peer.pem").verify_directly_issued_by(_cert(mesh / "ca.pem"))


# --- TLSConfig and Flight arguments ---------------------------------------------------------------


def test_tls_config_loads_and_hides_the_key(mesh: Path) -> None:
    tls = TLSConfig.from_dir(mesh)
    assert tls.common_name() == "peer"
    assert tls.key_pem == (mesh / "peer-key.pem").read_bytes()
    text = repr(tls)
    assert "PRIVATE" not in text and tls.key_pem.decode() not in text and "redacted" in text
    assert str(tls) == text


def test_tls_config_missing_file_names_path_and_fix(mesh: Path) -> None:
    (mesh / "peer.pem").unlink()
    with pytest.raises(TLSError) as info:
        TLSConfig.from_dir(mesh)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"TLS material not found: {mesh / 'peer.pem'} "
        f"(create it with: flow certs init --dir {mesh} --hosts 127.0.0.1,localhost)"
    )
    with pytest.raises(TLSError, match=r"flow certs issue --dir .* --name w9"):
        TLSConfig.from_dir(mesh, "w9")


def test_tls_config_refuses_a_key_of_another_cert(mesh: Path) -> None:
    issue_cert(mesh, "other", HOSTS)
    shutil.copy(mesh / "other-key.pem", mesh / "peer-key.pem")
    with pytest.raises(TLSError, match="does not match"):
        TLSConfig.from_dir(mesh)


def test_flight_kwargs(mesh: Path) -> None:
    tls = TLSConfig.from_dir(mesh)
    server = flight_server_kwargs(tls)
    assert server["verify_client"] is True
    assert server["root_certificates"] == tls.ca_pem
    [pair] = server["tls_certificates"]
    assert (pair.cert, pair.key) == (tls.cert_pem, tls.key_pem)
    assert flight_client_kwargs(tls) == {
        "tls_root_certs": tls.ca_pem,
        "cert_chain": tls.cert_pem,
        "private_key": tls.key_pem,
    }


@pytest.mark.parametrize(
    ("address", "with_tls", "expected"),
    [
        ("127.0.0.1:50051", True, "grpc+tls://127.0.0.1:50051"),
        ("127.0.0.1:50051", False, "grpc://127.0.0.1:50051"),
        ("node1.example:0", True, "grpc+tls://node1.example:0"),
        ("[::1]:7000", True, "grpc+tls://[::1]:7000"),
        ("[::1]:7000", False, "grpc://[::1]:7000"),
        ("grpc+tls://host:1", True, "grpc+tls://host:1"),
        ("grpc://host:1", False, "grpc://host:1"),
        ("grpc+tcp://host:1", False, "grpc://host:1"),
    ],
)
def test_location(mesh: Path, address: str, with_tls: bool, expected: str) -> None:
    assert location(address, TLSConfig.from_dir(mesh) if with_tls else None) == expected


@pytest.mark.parametrize(
    ("address", "with_tls"),
    [
        ("127.0.0.1", True),
        ("::1:7000", True),
        ("host:port", True),
        ("host:70000", True),
        ("grpc://host:1", True),  # plaintext address while TLS is configured
        ("grpc+tls://host:1", False),  # TLS address without TLS material
        ("http://host:1", False),
    ],
)
def test_location_rejects(mesh: Path, address: str, with_tls: bool) -> None:
    with pytest.raises(ConfigError):
        location(address, TLSConfig.from_dir(mesh) if with_tls else None)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_group_init_then_issue(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "certs"
    result = runner.invoke(certs, ["init", "--dir", str(directory), "--days", "10"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == [
        f"wrote {directory / n}" for n in ("ca-key.pem", "ca.pem", "peer.pem", "peer-key.pem")
    ]
    assert len(lines) == 5 and "flow certs issue" in lines[4]
    assert _sans(_cert(directory / "peer.pem")) == [
        x509.DNSName("peer"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]

    result = runner.invoke(
        certs, ["issue", "--dir", str(directory), "--name", "w2", "--hosts", "10.0.0.2, w2"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == [
        f"wrote {directory / 'w2.pem'}",
        f"wrote {directory / 'w2-key.pem'}",
    ]
    assert _sans(_cert(directory / "w2.pem")) == [
        x509.DNSName("w2"),  # the name, once, first
        x509.IPAddress(ipaddress.ip_address("10.0.0.2")),
    ]


def test_cli_group_raises_flow_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(certs, ["issue", "--dir", str(tmp_path / "none"), "--name", "w2"])
    assert isinstance(result.exception, ConfigError)
    assert "CA not found" in str(result.exception)


def test_cli_help_has_an_example() -> None:
    for args in (["--help"], ["init", "--help"], ["issue", "--help"]):
        result = CliRunner().invoke(certs, args)
        assert result.exit_code == 0
        assert "flow certs " in result.output and "Example:" in result.output


def test_flow_cli_certs_exit_codes(tmp_path: Path) -> None:
    from ematix_flow.cli.main import cli  # imports every sub-command module

    runner = CliRunner()
    directory = tmp_path / "certs"
    result = runner.invoke(cli, ["certs", "init", "--dir", str(directory)])
    assert result.exit_code == 0, result.output
    assert (directory / "peer-key.pem").exists()

    result = runner.invoke(cli, ["certs", "init", "--dir", str(directory)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: CA already exists") and result.stderr.count("\n") == 1

    result = runner.invoke(cli, ["certs", "issue", "--dir", str(tmp_path / "none"), "--name", "w2"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: CA not found") and result.stderr.count("\n") == 1


# --- real mutual-TLS handshakes -------------------------------------------------------------------


class _WhoAmIServer(flight.FlightServerBase):  # type: ignore[misc]
    """Answers any action with the peer identity gRPC authenticated."""

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[flight.Result]:
        yield flight.Result(context.peer_identity())


@contextmanager
def _serve(tls: TLSConfig) -> Iterator[str]:
    with _WhoAmIServer(location("127.0.0.1:0", tls), **flight_server_kwargs(tls)) as server:
        yield f"127.0.0.1:{server.port}"


def _whoami(uri: str, **client_kwargs: Any) -> bytes:
    with flight.FlightClient(uri, **client_kwargs) as client:
        [result] = list(client.do_action(flight.Action("whoami", b""), CALL))
        return bytes(result.body.to_pybytes())


def test_mtls_accepts_a_client_signed_by_the_mesh_ca(mesh: Path) -> None:
    issue_cert(mesh, "client-a", ["client-a.test", "127.0.0.2"])
    server_tls, client_tls = TLSConfig.from_dir(mesh), TLSConfig.from_dir(mesh, "client-a")
    with _serve(server_tls) as address:
        identity = _whoami(location(address, client_tls), **flight_client_kwargs(client_tls))
    # gRPC reports the client's first subjectAltName as the peer identity (its CN only when the
    # certificate has no SAN); flow certs puts the certificate's name first, so it is the name.
    assert client_tls.common_name() == "client-a"
    assert identity == b"client-a"


def test_mtls_refuses_a_client_without_a_certificate(mesh: Path) -> None:
    tls = TLSConfig.from_dir(mesh)
    with _serve(tls) as address:
        with pytest.raises(flight.FlightUnavailableError, match=HUNG_UP):
            _whoami(location(address, tls), tls_root_certs=tls.ca_pem)
        assert _whoami(location(address, tls), **flight_client_kwargs(tls)) == b"peer"  # still up


def test_mtls_refuses_a_client_of_a_foreign_ca(mesh: Path, tmp_path: Path) -> None:
    foreign_dir = tmp_path / "foreign"
    init_certs(foreign_dir, HOSTS)
    tls, foreign = TLSConfig.from_dir(mesh), TLSConfig.from_dir(foreign_dir)
    with _serve(tls) as address:
        # The client trusts our CA, so only the server's check of the client certificate can fail.
        with pytest.raises(flight.FlightUnavailableError, match=HUNG_UP):
            _whoami(location(address, tls), **dict(flight_client_kwargs(foreign), tls_root_certs=tls.ca_pem))
        # And a client of the foreign mesh does not trust our server either.
        with pytest.raises(flight.FlightUnavailableError, match="certificate verify failed"):
            _whoami(location(address, foreign), **flight_client_kwargs(foreign))
        assert _whoami(location(address, tls), **flight_client_kwargs(tls)) == b"peer"  # still up


def test_mtls_refuses_a_plaintext_client(mesh: Path) -> None:
    tls = TLSConfig.from_dir(mesh)
    with _serve(tls) as address:
        with pytest.raises(flight.FlightUnavailableError, match=HUNG_UP):
            _whoami(location(address, None))
        assert _whoami(location(address, tls), **flight_client_kwargs(tls)) == b"peer"  # still up


def test_mtls_refuses_a_server_whose_certificate_names_another_host(mesh: Path) -> None:
    issue_cert(mesh, "db", ["db.example"])  # signed by the mesh CA, but for another host name
    tls, wrong = TLSConfig.from_dir(mesh), TLSConfig.from_dir(mesh, "db")
    with _serve(wrong) as address:  # served on 127.0.0.1
        with pytest.raises(
            flight.FlightUnavailableError, match=r"Peer name 127\.0\.0\.1 is not in peer certificate"
        ):
            _whoami(location(address, tls), **flight_client_kwargs(tls))
        pool = ClientPool(tls)
        try:
            with pytest.raises(TLSError, match=f"^TLS handshake with peer {re.escape(address)} failed "):
                pool.action(address, "whoami", b"", 5)
        finally:
            pool.close()


@pytest.mark.parametrize(
    ("case", "expected", "message"),
    [
        ("server of another CA", TLSError, "TLS handshake with peer {address} failed .*from the same CA"),
        ("client of another CA", PeerUnreachableError, "peer {address} is unreachable while whoami "),
        ("plaintext client", PeerUnreachableError, "peer {address} is unreachable while whoami "),
    ],
)
def test_our_client_names_each_refusal(
    mesh: Path, tmp_path: Path, case: str, expected: type[FlowError], message: str
) -> None:
    """What ClientPool raises; a server that hangs up looks like a dead peer to gRPC's client."""
    init_certs(tmp_path / "foreign", HOSTS)
    tls, foreign = TLSConfig.from_dir(mesh), TLSConfig.from_dir(tmp_path / "foreign")
    server, client = {
        "server of another CA": (foreign, tls),
        "client of another CA": (tls, TLSConfig(tls.ca_pem, foreign.cert_pem, foreign.key_pem)),
        "plaintext client": (tls, None),
    }[case]
    with _serve(server) as address:
        pool = ClientPool(client)
        try:
            with pytest.raises(expected, match=message.format(address=re.escape(address))) as info:
                pool.action(address, "whoami", b"", 5)
        finally:
            pool.close()
    assert type(info.value) is expected
    if isinstance(info.value, PeerUnreachableError):
        assert info.value.peer == address
