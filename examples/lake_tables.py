"""Delta Lake and Apache Iceberg tables on a local mesh: one example per format.

Run from examples/: ``python lake_tables.py``. It writes a small Delta table and an Iceberg table
(a SQL catalog on SQLite, no server) under out/lake/, from data/orders.csv, then queries both on
two local peers, with time travel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
from deltalake import write_deltalake
from pyiceberg.catalog import load_catalog

from ematix_flow import Mesh

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "lake"
QUERY = (
    "SELECT region, count(*) AS orders, round(sum(amount), 2) AS revenue FROM orders GROUP BY 1 ORDER BY 1"
)


def main() -> None:
    """Write both tables, then read them on the mesh."""
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    orders = pacsv.read_csv(HERE / "data" / "orders.csv")
    first, rest = orders.slice(0, 20), orders.slice(20)

    # Delta Lake: a table partitioned by region, in two commits (versions 0 and 1)
    delta = OUT / "orders_delta"
    write_deltalake(delta, first, partition_by=["region"])
    write_deltalake(delta, rest, mode="append")

    # Iceberg: a SQL catalog on SQLite with a local warehouse, two snapshots
    catalog = {
        "name": "lake",
        "type": "sql",
        "uri": f"sqlite:///{OUT}/catalog.db",
        "warehouse": f"file://{OUT}/wh",
    }
    (OUT / "wh").mkdir()
    iceberg = load_catalog(**catalog)
    iceberg.create_namespace("shop")
    table = iceberg.create_table("shop.orders", schema=orders.schema)
    table.append(first)
    table.append(rest)
    first_snapshot = table.snapshots()[0].snapshot_id

    with Mesh.local(workers=2, local_below_bytes=0) as mesh:
        mesh.register_delta("orders", delta)
        show("Delta, latest version", mesh.sql(QUERY))
        print(mesh.explain("SELECT count(*) FROM orders WHERE region = 'east'").splitlines()[-1].strip())
        mesh.register_delta("orders", delta, version=0)
        show("Delta, version 0", mesh.sql(QUERY))

        mesh.register_iceberg("orders", "shop.orders", catalog=catalog)
        show("Iceberg, current snapshot", mesh.sql(QUERY))
        mesh.register_iceberg("orders", "shop.orders", catalog=catalog, snapshot_id=first_snapshot)
        show("Iceberg, first snapshot", mesh.sql(QUERY))


def show(title: str, result: pa.Table) -> None:
    """Print a result under a title."""
    print(f"-- {title}")
    for row in result.to_pylist():
        print("  ", row)


if __name__ == "__main__":
    main()
