"""The ``--storage FILE`` option every command that reads or writes object stores takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def storage_option(what: str) -> Callable[[F], F]:
    """``--storage FILE`` (or ``FLOW_STORAGE``): a TOML of object-store buckets; ``what`` says what for."""
    return click.option(
        "--storage",
        type=click.Path(dir_okay=False),
        envvar="FLOW_STORAGE",
        help=f"TOML of object-store buckets (endpoint, region, credentials as ${{ENV}}) {what} "
        "[the AWS_* / GOOGLE_* / AZURE_* environment].",
    )
