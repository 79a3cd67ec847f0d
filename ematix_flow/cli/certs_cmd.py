"""``flow certs``: make the mesh's mutual-TLS material (a private CA and peer certificates)."""

from __future__ import annotations

from pathlib import Path

import click

from ematix_flow.transport.certs import DEFAULT_DAYS, init_certs, issue_cert

_DEFAULT_HOSTS = "127.0.0.1,localhost"

_dir_option = click.option(
    "--dir",
    "directory",
    default="certs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding ca.pem, ca-key.pem and the peer certificates.",
)
_hosts_option = click.option(
    "--hosts",
    default=_DEFAULT_HOSTS,
    show_default=True,
    help="Comma-separated host names and IP addresses the certificate is valid for (its SANs).",
)
_days_option = click.option(
    "--days",
    default=DEFAULT_DAYS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Validity in days.",
)


def _split_hosts(hosts: str) -> list[str]:
    return [host.strip() for host in hosts.split(",") if host.strip()]


@click.group()
def certs() -> None:
    """Create the mutual-TLS certificates peers use to trust each other.

    Every peer is both a Flight server and a client of the other peers: one certificate per peer,
    signed by a private CA, serves both roles.

    \b
    Example:
      flow certs init --dir certs --hosts 127.0.0.1,localhost
      flow certs issue --dir certs --name worker-2 --hosts 10.0.0.12,worker-2.internal
    """  # noqa: D301 (click's \b keeps the example lines as they are)


@certs.command("init")
@_dir_option
@_hosts_option
@_days_option
@click.option(
    "--force", is_flag=True, help="Replace an existing CA (certificates it signed stop being trusted)."
)
def init(directory: Path, hosts: str, days: int, force: bool) -> None:
    """Create a new CA and a 'peer' certificate signed by it.

    Writes ca.pem, ca-key.pem, peer.pem and peer-key.pem (keys with mode 0600). Keep ca-key.pem
    private: whoever holds it can add peers to the mesh.

    \b
    Example:
      flow certs init --dir certs --hosts 127.0.0.1,localhost,node1.example
    """  # noqa: D301
    for path in init_certs(directory, _split_hosts(hosts), days=days, force=force):
        click.echo(f"wrote {path}")
    click.echo(
        f"done: every peer needs {directory / 'ca.pem'} and its own certificate "
        f"(add one with: flow certs issue --dir {directory} --name NAME --hosts HOST)"
    )


@certs.command("issue")
@_dir_option
@click.option(
    "--name",
    required=True,
    help="Certificate name: its CN, its first SAN (the identity --allow-peer matches) and the file "
    "stem of NAME.pem / NAME-key.pem.",
)
@_hosts_option
@_days_option
def issue(directory: Path, name: str, hosts: str, days: int) -> None:
    """Issue NAME.pem and NAME-key.pem signed by the CA in --dir.

    An existing certificate of the same name is replaced (this is how it is renewed).

    \b
    Example:
      flow certs issue --dir certs --name worker-2 --hosts 10.0.0.12,worker-2.internal
    """  # noqa: D301
    for path in issue_cert(directory, name, _split_hosts(hosts), days=days):
        click.echo(f"wrote {path}")
    click.echo(
        f"done: copy {directory / 'ca.pem'}, {directory / (name + '.pem')} and "
        f"{directory / (name + '-key.pem')} to the host running {name!r}"
    )
