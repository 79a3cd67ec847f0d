"""``flow run`` and ``flow validate``: pipelines declared in TOML or in a Python module."""

from __future__ import annotations

import json
import time

import click

from ematix_flow.cli.progress import TerminalProgress
from ematix_flow.cli.storage_option import storage_option
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import ConfigError
from ematix_flow.pipelines.config import Pipeline


def _load(file: str | None, module: str | None, name: str | None, storage: str | None = None) -> Pipeline:
    """The pipeline a command names: a TOML file, or ``--module M [NAME]``; ``storage``: its buckets."""
    pipeline = _declared(file, module, name)
    pipeline.storage = StorageConfig.load(storage)
    return pipeline


def _declared(file: str | None, module: str | None, name: str | None) -> Pipeline:
    if module:
        if file and name:
            raise ConfigError("with --module, give only the pipeline's NAME")
        from ematix_flow.pipelines.api import from_module

        return from_module(module, name or file)
    if not file:
        raise ConfigError("no pipeline given: flow run pipeline.toml, or flow run --module my_pipelines NAME")
    if name:
        raise ConfigError(f"unexpected argument {name!r}: a TOML file holds one pipeline")
    return Pipeline.from_toml(file)


_ARGS = [
    click.argument("file", required=False, metavar="PIPELINE.toml | NAME"),
    click.argument("name", required=False, metavar=""),
    click.option("--module", "-m", metavar="MODULE", help="Import MODULE (or a .py file) and run its NAME."),
    storage_option("for s3:// ... sources and targets"),
]


def _with_args(f: click.decorators.FC) -> click.decorators.FC:
    for arg in reversed(_ARGS):
        f = arg(f)
    return f


@click.command()
@_with_args
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (sources, SQL, engine plan, load); write nothing."
)
@click.option(
    "--quiet", "-q", is_flag=True, help="No progress on stderr (lines, and the live stages on a terminal)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's history record as JSON on stdout.")
def run(
    file: str | None,
    name: str | None,
    module: str | None,
    storage: str | None,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run a pipeline: sources -> SQL (in-process or on the mesh) -> a target, in one commit.

    A failed run changes nothing in the target and is recorded in its run history.

    \b
    Examples:
      flow run pipeline.toml
      flow run --dry-run pipeline.toml
      flow run --module my_pipelines daily_revenue
    """  # noqa: D301
    from ematix_flow.pipelines import runner

    pipeline = _load(file, module, name, storage)
    if dry_run:
        click.echo(runner.dry_run(pipeline))
        return
    t0 = time.perf_counter()
    echo = None if quiet else (lambda line: click.echo(line, err=True))
    with TerminalProgress(not quiet) as progress:  # the mesh's stages, live, when stderr is a terminal
        record = runner.run(pipeline, echo=echo, progress=progress.hook)
    if as_json:
        data = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in vars(record).items()}
        click.echo(json.dumps(data, indent=2))
    if not quiet:
        counts = ", ".join(f"{k} {v:,}" for k, v in record.extra.items() if v)
        detail = f" ({counts})" if counts else ""
        mark = (
            f"; watermark {record.watermark_column} = {record.watermark}" if record.watermark_column else ""
        )
        click.echo(
            f"{pipeline.name}: {record.mode} of {record.rows_read:,} rows into {record.target_table}: "
            f"{record.rows_written:,} written{detail} in {time.perf_counter() - t0:.1f}s{mark} "
            f"(run {record.run_id[:12]})",
            err=True,
        )


@click.command()
@_with_args
def validate(file: str | None, name: str | None, module: str | None, storage: str | None) -> None:
    """Check a pipeline without running it: keys, SQL dialect, sources present, target able.

    \b
    Example:
      flow validate pipeline.toml
    """  # noqa: D301
    from ematix_flow.pipelines import runner

    for line in runner.validate(_load(file, module, name, storage)):
        click.echo(line)
