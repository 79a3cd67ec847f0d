"""``flow translate``: Spark or DuckDB SQL as the DataFusion SQL a pipeline would run."""

from __future__ import annotations

from typing import TextIO

import click

from ematix_flow.errors import ConfigError
from ematix_flow.pipelines import dialect


@click.command()
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Choice(["spark", "duckdb"]),
    help="The dialect the SQL is written in.",
)
@click.option("--file", "-f", "sql_file", type=click.File("r"), help="Read the SQL from a file ('-': stdin).")
@click.option("--pretty", is_flag=True, help="One clause per line, indented.")
@click.argument("query", required=False)
def translate(source: str, sql_file: TextIO | None, pretty: bool, query: str | None) -> None:
    """Print Spark or DuckDB SQL as DataFusion SQL (what dialect = "spark" | "duckdb" runs).

    A construct that cannot be translated is named on stderr (exit code 2).

    \b
    Examples:
      flow translate --from spark "SELECT NVL(amount, 0) FROM orders"
      flow translate --from duckdb --pretty -f transform.sql
    """  # noqa: D301
    click.echo(dialect.translate(_sql_text(query, sql_file), source, pretty=pretty))


def _sql_text(query: str | None, sql_file: TextIO | None) -> str:
    if query and sql_file:
        raise ConfigError("give the SQL either as an argument or with --file, not both")
    text = sql_file.read() if sql_file else query
    if not text or not text.strip():
        raise ConfigError('no SQL given: flow translate --from spark "SELECT NVL(a, 0) FROM t"')
    return text.strip().rstrip(";")
