"""Benchmark data and validation: TPC-H / TPC-DS data and queries, answer comparison, ``flow check``."""
