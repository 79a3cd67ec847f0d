"""The ``flow`` command: one group, one module per sub-command.

Only the CLI configures logging. A :class:`~ematix_flow.errors.FlowError` (a user's mistake or an
environment problem) is printed as one line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ematix_flow.errors import FlowError

EXIT_USER_ERROR = 2


class _FlowGroup(click.Group):
    """A click group that turns FlowError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)


def configure_logging(level: str) -> None:
    """Set up stderr logging for a CLI process."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(cls=_FlowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ematix-flow", prog_name="flow")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Logging verbosity (stderr).",
)
def cli(log_level: str) -> None:
    """ematix-flow: SQL over Arrow data on a peer-to-peer mesh of flow-worker processes."""
    configure_logging(log_level)


def _register() -> None:
    from ematix_flow.cli import (
        certs_cmd,
        check_cmd,
        demo_cmd,
        pipeline_cmd,
        sql_cmd,
        tpcds_cmd,
        tpch_cmd,
        translate_cmd,
    )

    cli.add_command(certs_cmd.certs)
    cli.add_command(tpch_cmd.tpch)
    cli.add_command(tpcds_cmd.tpcds)
    cli.add_command(check_cmd.check)
    cli.add_command(demo_cmd.demo)
    cli.add_command(sql_cmd.sql)
    cli.add_command(sql_cmd.explain)
    cli.add_command(pipeline_cmd.run)
    cli.add_command(pipeline_cmd.validate)
    cli.add_command(translate_cmd.translate)


_register()


def main() -> None:
    """Entry point of the ``flow`` script."""
    cli(prog_name="flow")


if __name__ == "__main__":
    main()
