"""``flow check``: run TPC-H or TPC-DS on a mesh and check every answer against DataFusion and DuckDB."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ematix_flow.cli.sql_cmd import open_mesh
from ematix_flow.workloads import check as _check


@click.command("check")
@click.argument("benchmark", type=click.Choice(sorted(_check.BENCHMARKS)))
@click.option("--sf", type=float, default=0.1, show_default=True, help="Scale factor.")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data folder, generated if incomplete [default: data/BENCHMARK-sf{SF}].",
)
@click.option("--queries", "spec", metavar="q01,q05", help="Only these queries [default: all].")
@click.option("--no-duckdb", is_flag=True, help="Do not ask DuckDB for a third opinion.")
@click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds before a mesh call (a task, a fetch) or a DuckDB query is abandoned.",
)
@click.option(
    "--min-task-bytes",
    type=int,
    default=1,
    show_default=True,
    help="Bytes a stage needs per task; 1 spreads every stage over all peers (the strictest check).",
)
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Write results.")
@click.option("--peers", help="Peers of the mesh, comma-separated HOST:PORT.")
@click.option(
    "--tls-dir", type=click.Path(file_okay=False), envvar="FLOW_TLS_DIR", help="Dir with ca.pem, NAME.pem."
)
@click.option("--tls-name", default="peer", show_default=True, help="Client certificate name in --tls-dir.")
@click.option("--insecure", is_flag=True, help="Talk plaintext to peers started with --insecure.")
@click.option("--local", "local", type=int, help="Start N local peers for this command instead of --peers.")
@click.option("--partitions", type=int, help="Shuffle width [2 x peers, at least 4].")
def check(
    benchmark: str,
    sf: float,
    data_dir: Path | None,
    spec: str | None,
    no_duckdb: bool,
    timeout: float,
    min_task_bytes: int,
    json_file: Path | None,
    peers: str | None,
    tls_dir: str | None,
    tls_name: str,
    insecure: bool,
    local: int | None,
    partitions: int | None,
) -> None:
    """Check the mesh's answer to every query against single-process DataFusion (and DuckDB).

    Prints one line per query and a summary; exits 1 if the mesh answered any query differently
    from DataFusion or failed it. Queries DataFusion itself cannot run are skipped.

    \b
    Examples:
      flow check tpch --sf 0.1 --local 3
      flow check tpcds --sf 1 --peers 10.0.0.5:50051,10.0.0.6:50051 --tls-dir certs --json out.json
    """  # noqa: D301
    queries = _check.select(benchmark, spec)
    folder = data_dir if data_dir is not None else _check.benchmark(benchmark).default_data_dir(sf)
    if not _check.benchmark(benchmark).is_generated(folder):
        click.echo(f"generating {benchmark} SF {sf:g} into {folder} ...", err=True)
    folder = _check.prepare_data(benchmark, sf, folder)
    with open_mesh(
        peers,
        tls_dir,
        tls_name,
        insecure,
        local,
        partitions=partitions,
        min_task_bytes=min_task_bytes,
        task_timeout=timeout,
    ) as mesh:
        results = _check.run_check(
            benchmark,
            mesh,
            folder,
            queries,
            use_duckdb=not no_duckdb,
            timeout=timeout,
            on_result=lambda r: click.echo(r.line()),
        )
        mesh_peers = list(mesh.peers)
    for line in _check.summary_lines(results):
        click.echo(line)
    if json_file is not None:
        _check.write_json(
            json_file,
            results,
            benchmark=benchmark,
            sf=sf,
            data_dir=str(folder),
            peers=mesh_peers,
            duckdb=not no_duckdb,
        )
    sys.exit(_check.exit_code(results))
