"""``flow sql`` and ``flow explain``: run or explain a query on a mesh."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import click
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ematix_flow.cli.progress import TerminalProgress
from ematix_flow.cli.storage_option import storage_option
from ematix_flow.coordinator_lib.mesh import Mesh
from ematix_flow.engine.tables import kind_from_suffix, parse_table_option, register_all, register_format
from ematix_flow.errors import ConfigError
from ematix_flow.transport.tls import TLSConfig


def mesh_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that say which mesh to use and which tables to register."""
    options = [
        click.option("--peers", help="Peers of the mesh, comma-separated HOST:PORT."),
        click.option(
            "--tls-dir",
            type=click.Path(file_okay=False),
            envvar="FLOW_TLS_DIR",
            help="Dir with ca.pem, NAME.pem.",
        ),
        click.option(
            "--tls-name", default="peer", show_default=True, help="Client certificate name in --tls-dir."
        ),
        click.option("--insecure", is_flag=True, help="Talk plaintext to peers started with --insecure."),
        click.option(
            "--local", "local", type=int, help="Start N local peers for this command instead of --peers."
        ),
        click.option(
            "--via",
            metavar="HOST:PORT",
            help="Send the SQL to this peer, which plans it with its tables and drives it (Flight SQL).",
        ),
        click.option(
            "--table",
            "tables",
            multiple=True,
            metavar="NAME=PATH|URL",
            help="Register a table: a file, a folder, a URL such as s3://lake/sales/, a Delta table's "
            "folder, or iceberg://CATALOG/ns.table (a --storage catalog) (repeatable).",
        ),
        click.option(
            "--tables-dir",
            metavar="DIR|URL",
            help="Register every Parquet/CSV/JSON file or folder, and every Delta table, in DIR "
            "(or under a URL prefix).",
        ),
        storage_option("for s3:// ... tables (--local peers get it too)"),
        click.option("--partitions", type=int, help="Shuffle width [2 x peers, at least 4]."),
        click.option(
            "--file", "-f", "sql_file", type=click.File("r"), help="Read the SQL from a file ('-': stdin)."
        ),
        click.argument("query", required=False),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _query_text(query: str | None, sql_file: TextIO | None) -> str:
    if query and sql_file:
        raise ConfigError("give the SQL either as an argument or with --file, not both")
    text = sql_file.read() if sql_file else query
    if not text or not text.strip():
        raise ConfigError('no SQL given: flow sql --local 3 --table t=data.parquet "SELECT count(*) FROM t"')
    return text.strip().rstrip(";")


def open_mesh(
    peers: str | None,
    tls_dir: str | None,
    tls_name: str,
    insecure: bool,
    local: int | None,
    via: str | None = None,
    **kw: Any,
) -> Mesh:
    """The Mesh the flags name."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if local is not None and (peers or via):
        raise ConfigError(f"use either --local N or {'--via' if via else '--peers'}, not both")
    if local is not None:
        return Mesh.local(workers=local, insecure=insecure, **kw)
    if not peers and not via:
        raise ConfigError(
            "no mesh given: pass --peers HOST:PORT,... or --via HOST:PORT with --tls-dir DIR, or --local N"
        )
    if via and kw:
        raise ConfigError(f"--{', --'.join(kw)} is the planning peer's choice with --via: leave it out")
    tls = None
    if not insecure:
        if not tls_dir:
            flag = "--via" if via else "--peers"
            raise ConfigError(f"{flag} needs --tls-dir DIR (mutual TLS), or --insecure for plaintext peers")
        tls = TLSConfig.from_dir(tls_dir, tls_name)
    return Mesh([p for p in (peers or "").split(",") if p.strip()], tls, insecure=insecure, via=via, **kw)


def register_tables(mesh: Mesh, tables: tuple[str, ...], tables_dir: str | None) -> None:
    """Register ``--table`` / ``--tables-dir`` on the mesh (with ``--via``: in its session on the peer)."""
    if mesh.via is None:
        register_all(mesh, tables, tables_dir, mesh.storage)
        return
    if tables_dir:
        raise ConfigError(
            f"--tables-dir lists a folder here, but with --via {mesh.via} the peer reads the data: start the "
            "peers with --tables-dir, or name each table with --table NAME=/absolute/path/on/the/peer"
        )
    for value in tables:
        name, path = parse_table_option(value)
        register_format(mesh, kind_from_suffix(path), name, path)


@click.command()
@mesh_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
    help="Output format (parquet needs --output).",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Write the result to FILE instead of stdout."
)
@click.option("--max-rows", type=int, default=100, show_default=True, help="Rows shown by --format table.")
@click.option(
    "--quiet", "-q", is_flag=True, help="No summary line on stderr, no progress display on a terminal."
)
@click.option("--report", is_flag=True, help="Print which stages ran where (tasks, peers, rows) on stderr.")
@click.option("--timeout", type=float, help="Cancel the query on every peer after SECONDS.")
def sql(
    peers: str | None,
    tls_dir: str | None,
    tls_name: str,
    insecure: bool,
    local: int | None,
    tables: tuple[str, ...],
    tables_dir: str | None,
    storage: str | None,
    partitions: int | None,
    via: str | None,
    sql_file: TextIO | None,
    query: str | None,
    fmt: str,
    output: str | None,
    max_rows: int,
    quiet: bool,
    report: bool,
    timeout: float | None,
) -> None:
    """Run a SQL query on the mesh and print or save the result.

    While it runs, a terminal on stderr shows each stage's tasks and rows (not a pipe or a file).

    \b
    Examples:
      flow sql --local 3 --table lineitem=data/tpch-sf0.1/lineitem.parquet "SELECT count(*) FROM lineitem"
      flow sql --peers 10.0.0.5:50051,10.0.0.6:50051 --tls-dir certs --tables-dir data -f q.sql --format csv
      flow sql --via 10.0.0.5:50051 --tls-dir certs --tls-name alice "SELECT count(*) FROM lineitem"
    """  # noqa: D301
    text = _query_text(query, sql_file)
    if fmt == "parquet" and not output:
        raise ConfigError("--format parquet needs --output FILE")
    t0 = time.perf_counter()
    with open_mesh(
        peers, tls_dir, tls_name, insecure, local, via, partitions=partitions, storage=storage
    ) as mesh:
        register_tables(mesh, tables, tables_dir)
        with TerminalProgress(not quiet) as progress:
            batches: Iterator[pa.RecordBatch] = mesh.sql_batches(
                text, timeout=timeout, progress=progress.hook
            )
            if fmt != "table" and not output:  # the result streams to stdout: no display under it
                batches = progress.until_output(batches)
            rows = _write(batches, fmt, output, max_rows, lambda: _result_schema(mesh))
        if report and mesh.last_run:
            click.echo(str(mesh.last_run), err=True)
        if not quiet:
            run = mesh.last_run
            n = len(run.peers_used) if run else 0
            where = f"on {n} peer{'' if n == 1 else 's'}" if run and run.distributed else "on the submitter"
            where = f"planned and driven by {mesh.via}" if mesh.via else where
            click.echo(f"{rows} rows in {time.perf_counter() - t0:.2f}s ({where})", err=True)
            if run and run.files_written:
                click.echo(f"wrote {len(run.files_written)} files, e.g. {run.files_written[0]}", err=True)


def _write(
    batches: Iterator[pa.RecordBatch],
    fmt: str,
    output: str | None,
    max_rows: int,
    schema: Callable[[], pa.Schema],
) -> int:
    """Write the result in ``fmt``; returns the row count. Streams every format but ``table``."""
    if fmt == "table":
        table = _collect(batches, schema)
        text = format_table(table, max_rows)
        if output:
            Path(output).write_text(text + "\n")
        else:
            click.echo(text)
        return int(table.num_rows)
    if fmt == "json":
        sink: TextIO = open(output, "w") if output else sys.stdout  # noqa: SIM115
        rows = 0
        try:
            for b in batches:
                for rec in b.to_pylist():
                    sink.write(json.dumps(rec, default=str) + "\n")
                rows += b.num_rows
        finally:
            if output:
                sink.close()
        return rows
    binary: BinaryIO = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    writer: Any = None
    rows = 0

    def open_writer(schema: pa.Schema) -> Any:
        return pacsv.CSVWriter(binary, schema) if fmt == "csv" else pq.ParquetWriter(binary, schema)

    try:
        for b in batches:
            plain = b.cast(_plain_schema(b.schema))
            if writer is None:
                writer = open_writer(plain.schema)
            writer.write(plain) if fmt == "csv" else writer.write_batch(plain)
            rows += b.num_rows
        if writer is None:  # no rows: still write a header / an empty file with the schema
            writer = open_writer(_plain_schema(schema()))
    finally:
        if writer is not None:
            writer.close()
        if output:
            binary.close()
        else:
            binary.flush()
    return rows


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with string_view / binary_view (also inside lists and structs) as string / binary.

    DataFusion reads every Parquet string as a view type, which the CSV writer rejects and older
    Parquet readers do not know.
    """
    return pa.schema([_plain_field(f) for f in schema], metadata=schema.metadata)


def _plain_field(f: pa.Field) -> pa.Field:
    t = f.type
    if pa.types.is_string_view(t):
        return f.with_type(pa.string())
    if pa.types.is_binary_view(t):
        return f.with_type(pa.binary())
    if pa.types.is_list(t):
        return f.with_type(pa.list_(_plain_field(t.value_field)))
    if pa.types.is_large_list(t):
        return f.with_type(pa.large_list(_plain_field(t.value_field)))
    if pa.types.is_struct(t):
        return f.with_type(pa.struct([_plain_field(t.field(i)) for i in range(t.num_fields)]))
    return f


def _result_schema(mesh: Mesh) -> pa.Schema:
    """The schema of the query that just ran (known even when it returned no rows)."""
    run = mesh.last_run
    return run.schema if run is not None and run.schema is not None else pa.schema([])


def _collect(batches: Iterator[pa.RecordBatch], schema: Callable[[], pa.Schema]) -> pa.Table:
    got = list(batches)
    return pa.Table.from_batches(got) if got else schema().empty_table()


def format_table(table: pa.Table, max_rows: int) -> str:
    """A plain aligned text table (first ``max_rows`` rows)."""
    names = table.column_names
    if not names:
        return "(no rows)"
    shown = table.slice(0, max_rows).to_pylist()
    cells = [[_cell(r[n]) for n in names] for r in shown]
    widths = [max([len(n)] + [len(row[i]) for row in cells]) for i, n in enumerate(names)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)), line]
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    if table.num_rows > max_rows:
        out.append(f"... {table.num_rows - max_rows} more rows (use --max-rows or --output)")
    return "\n".join(out)


def _cell(value: object) -> str:
    return "NULL" if value is None else str(value)


@click.command()
@mesh_options
@click.option(
    "--analyze",
    is_flag=True,
    help="Run the query (rows dropped) and show per stage: tasks, peers, rows, bytes, wall time.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json (with --analyze): the run as one JSON object on stdout.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display on a terminal (--analyze).")
@click.option("--timeout", type=float, help="With --analyze: cancel the query on every peer after SECONDS.")
def explain(
    peers: str | None,
    tls_dir: str | None,
    tls_name: str,
    insecure: bool,
    local: int | None,
    tables: tuple[str, ...],
    tables_dir: str | None,
    storage: str | None,
    partitions: int | None,
    via: str | None,
    sql_file: TextIO | None,
    query: str | None,
    analyze: bool,
    fmt: str,
    quiet: bool,
    timeout: float | None,
) -> None:
    """Print the stage graph a query would run as (stages, exchanges, splits).

    With --analyze the query runs, and each stage also says what it did. --format json prints
    {"query_id", "sql", "seconds", "rows", "distributed", "peers", ..., "stages": [{"id", "kind",
    "inputs", "tasks", "peers", "rows", "bytes_written", "bytes_read", "bytes_fetched", "seconds",
    "started", "failures", "task_runs"}]}: stages by id, the root (on the submitter) last.

    \b
    Examples:
      flow explain --local 3 --tables-dir data/tpch-sf0.1 -f bench/tpch/queries/q05.sql
      flow explain --analyze --local 3 --tables-dir data/tpch-sf0.1 -f bench/tpch/queries/q09.sql
    """  # noqa: D301
    text = _query_text(query, sql_file)
    if fmt == "json" and not analyze:
        raise ConfigError("--format json needs --analyze (it describes a run)")
    if timeout is not None and not analyze:
        raise ConfigError("--timeout needs --analyze (plain explain runs nothing)")
    if via:
        raise ConfigError(
            f"flow explain plans here, but with --via {via} the peer plans: use --peers and the data paths, "
            "or send EXPLAIN as SQL with flow sql --via"
        )
    with open_mesh(peers, tls_dir, tls_name, insecure, local, partitions=partitions, storage=storage) as mesh:
        register_all(mesh, tables, tables_dir, mesh.storage)
        if not analyze:
            click.echo(mesh.explain(text))
            return
        with TerminalProgress(not quiet) as progress:
            run = mesh.analyze(text, timeout=timeout, progress=progress.hook)
        click.echo(json.dumps(run.to_dict(), indent=2) if fmt == "json" else mesh.analyzed_text(run))
