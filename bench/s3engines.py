"""Engines over a copy of the data in an S3 bucket: a moto server on 127.0.0.1 (``bench/s3server.py``).

``mesh-s3`` and ``datafusion-s3`` read the same bucket in one run, so the mesh's own cost on an
object store shows apart from the server's (moto is a Python server: it copies a whole object for
every range request, so its speed, not S3's, dominates both).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.engines import DataFusionEngine, EngineOptions, EngineUnavailable, MeshEngine, _table

BUCKET = "bench"


class S3Copy:
    """A moto server holding a copy of the tables, its AWS environment set in this process.

    The environment (inherited by the mesh's workers) is how every process finds the bucket; it is
    restored by :meth:`close`.
    """

    def __init__(self) -> None:
        self.server: Any = None
        self._saved: dict[str, str | None] = {}

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        try:
            from bench.s3server import S3Server
        except ImportError as exc:
            raise EngineUnavailable(
                f"moto is not installed ({exc}): pip install 'moto[server]' boto3"
            ) from exc
        self.server = S3Server.start()
        self._saved = {k: os.environ.get(k) for k in self.server.env()}
        os.environ.update(self.server.env())
        s3 = self.server.client()
        s3.create_bucket(Bucket=BUCKET)
        for name in tables:
            path = _table(data_dir, name)
            for f in sorted(path.rglob("*.parquet")) if path.is_dir() else [path]:
                s3.upload_file(str(f), BUCKET, f"{name}/{f.name}")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved = {}

    def pids(self) -> dict[str, int]:
        process = self.server.process if self.server is not None else None
        return {"moto": process.pid} if process is not None else {}


INFO = "s3 (moto server on 127.0.0.1, path-style, authentication on)"


class _OnS3Copy:
    """What both engines over the bucket copy share: the copy made before, removed after them."""

    _copy: S3Copy

    def start(self, data_dir: Path, tables: Sequence[str]) -> None:
        self._copy.start(data_dir, tables)
        super().start(data_dir, tables)  # type: ignore[misc]

    def close(self) -> None:
        super().close()  # type: ignore[misc]
        self._copy.close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "storage": INFO}  # type: ignore[misc]

    def pids(self) -> dict[str, int]:
        return {**super().pids(), **self._copy.pids()}  # type: ignore[misc]


class MeshS3Engine(_OnS3Copy, MeshEngine):
    """``mesh`` over the bucket copy: every process reads it through the AWS environment."""

    def __init__(self, options: EngineOptions, *, name: str = "mesh-s3") -> None:
        super().__init__(options, name=name)
        self._copy = S3Copy()

    def _location(self, data_dir: Path, name: str) -> str:
        return f"s3://{BUCKET}/{name}/"


class DataFusionS3Engine(_OnS3Copy, DataFusionEngine):
    """Single-process DataFusion over the bucket copy (a store registered from the AWS environment)."""

    def __init__(self, options: EngineOptions, *, name: str = "datafusion-s3") -> None:
        super().__init__(options, name=name)
        self._copy = S3Copy()

    def _location(self, data_dir: Path, name: str) -> str:
        from ematix_flow.engine import stores
        from ematix_flow.engine.storage import StorageConfig

        url = f"s3://{BUCKET}/{name}/"
        stores.register(self._ctx, [url], StorageConfig())  # as Mesh.register_parquet does for a URL
        return url
