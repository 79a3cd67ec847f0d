"""The test session's private S3-protocol server (``bench/s3server.py``: moto, authentication on).

conftest.py loads it as a plugin (``pytest_plugins``); a test that stops its server starts its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.s3server import S3Server

__all__ = ["S3Server", "s3_server"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the test session (authentication on), stopped when it ends."""
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()
