"""Pipelines: declarative load jobs (sources -> SQL, in-process or on the mesh -> a target).

``config`` reads and checks a pipeline (TOML or Python), ``sources`` registers its inputs as
tables, ``dialect`` translates Spark / DuckDB SQL, ``targets`` load the result with a strategy
(append, truncate, merge, scd2) in one transaction with the run's history and watermark, and
``runner`` ties them together for ``flow run``.
"""
