"""Benchmark scripts: they validate answers and write JSON and Markdown; they never assert a time."""
