"""Command-line entry points: ``flow`` and ``flow-worker``."""
