"""Lake tables (Delta Lake, Apache Iceberg) read by the mesh.

Snapshots are read from the table's log or catalog where the query is planned, planned as template
Parquet scans, and made concrete with the snapshot's files (``planner/lake.py``).

- :mod:`.snapshot`: what a snapshot is here (columns, data files, what is known of each file).
- :mod:`.delta` / :mod:`.iceberg`: opening a snapshot, refusing what would be read wrongly.
- :mod:`.pruning`: which files a query's filters may need.
- :mod:`.registry`: lake tables registered on a planning context, and the scans of a query.
"""
