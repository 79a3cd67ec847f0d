"""A differential query fuzzer: random tables and queries, each run on a local mesh and on DataFusion.

Every distributed answer must equal single-process DataFusion's. ``python -m tests.fuzz --seconds 60``
generates worlds of random tables (tables.py) and random valid queries over them (queries.py,
exprs.py), runs each on a 3-peer mesh planned with several partition counts and on DataFusion
(engines.py), minimises every difference (minimise.py), names its family (families.py) and saves it as
a regression case (cases.py) that tests/test_query_fuzz.py replays.
"""
