"""``flow tpch``: generate TPC-H Parquet data and show the 22 queries."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from ematix_flow.cli.storage_option import storage_option
from ematix_flow.engine.objects import upload
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.urls import is_url
from ematix_flow.workloads import tpch as _tpch


@click.group()
def tpch() -> None:
    """TPC-H data and queries."""


@tpch.command("gen")
@click.option("--sf", type=float, default=0.1, show_default=True, help="Scale factor (1 = SF 1).")
@click.option(
    "--out",
    "--output",
    metavar="DIR|URL",
    default=None,
    help="Output folder, or a URL prefix such as s3://bucket/tpch-sf1/ [default: data/tpch-sf{SF}].",
)
@storage_option("for a URL --out")
@click.option("--force", is_flag=True, help="Regenerate even if the folder already holds all 8 tables.")
def gen(sf: float, out: str | None, storage: str | None, force: bool) -> None:
    """Write one Parquet file per TPC-H table (region ... lineitem) with tpchgen-cli.

    \b
    Examples:
      flow tpch gen --sf 1
      flow tpch gen --sf 1 --out s3://lake/tpch-sf1/
    """  # noqa: D301
    if out is not None and is_url(out):
        _gen_to_url(sf, out, StorageConfig.load(storage))
        return
    target = Path(out) if out is not None else _tpch.default_data_dir(sf)
    if not force and _tpch.is_generated(target):
        click.echo(f"{target}: all {len(_tpch.TABLES)} tables already present (use --force to regenerate)")
        return
    click.echo(f"generating TPC-H SF {sf:g} into {target} ...")
    started = time.perf_counter()
    _tpch.generate(sf, target, force=force)
    seconds = time.perf_counter() - started
    total = 0
    for name in _tpch.TABLES:
        path = target / f"{name}.parquet"
        size = path.stat().st_size
        total += size
        click.echo(f"  {path}  {_megabytes(size)}")
    click.echo(f"wrote {len(_tpch.TABLES)} tables ({_megabytes(total)}) in {seconds:.1f} s")


@tpch.command("queries")
@click.option("--show", "show", metavar="N", default=None, help="Print query N (e.g. 5 or q05).")
def list_queries(show: str | None) -> None:
    """List the 22 TPC-H queries, or print one with --show N."""
    if show is not None:
        click.echo(_tpch.query(_tpch.parse_query_name(show)) + ";")
        return
    for name, sql in _tpch.queries().items():
        click.echo(f"{name}  {_summary(sql)}")


def _gen_to_url(sf: float, url: str, storage: StorageConfig) -> None:
    """Generate into a local temporary folder, then copy each table to ``url``."""
    click.echo(f"generating TPC-H SF {sf:g} for {url} ...")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flow-tpch-") as tmp:
        local = _tpch.generate(sf, Path(tmp) / "data")
        files = [local / f"{name}.parquet" for name in _tpch.TABLES]
        total = 0
        for f, written in zip(files, upload(files, url, storage), strict=True):
            size = f.stat().st_size
            total += size
            click.echo(f"  {written}  {_megabytes(size)}")
    seconds = time.perf_counter() - started
    click.echo(f"wrote {len(files)} tables ({_megabytes(total)}) in {seconds:.1f} s")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _summary(sql: str) -> str:
    """The tables a query reads, as a hint of what it does."""
    words = {w.strip(",()").lower() for w in sql.split()}
    return ", ".join(name for name in _tpch.TABLES if name in words)
