"""Finishing a distributed write on the submitter: publish the staged files, or remove them.

The tasks of a write stage (``planner/writes.py``) write under
``<target>/_flow_staging-<query>/t<task>-a<attempt>/``. When every task succeeded, the files of each
task's winning attempt are moved to the target, keeping their names and partition folders, and the
staging prefix is removed; on any failure (or cancel, or a re-plan) the staging prefix is removed and
the target is left as it was. The query's answer is DataFusion's: one row, the rows written.

Moving is a rename on a file system and a copy then delete on an object store: the files appear one
by one while they are published, never half written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from ematix_flow.coordinator_lib.driver import QueryDriver
from ematix_flow.engine import stores
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import StorageError, first_line
from ematix_flow.planner.writes import WriteTarget
from ematix_flow.urls import parse_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """What a write published: the target and its new files (URLs)."""

    url: str
    rows: int
    files: list[str]


def run_write(
    driver: QueryDriver, target: WriteTarget, storage: StorageConfig, done: Callable[[Written], None]
) -> Generator[pa.RecordBatch, None, None]:
    """Run a write query's stages, publish its files, and yield its one-row answer (rows written)."""
    total = 0
    schema: pa.Schema | None = None
    try:
        for batch in driver.batches():  # the root gathers one count per task
            schema = batch.schema
            total += int(pc.sum(batch.column(0)).as_py() or 0)
        if driver.ran_in_process:  # the uncut plan wrote to the target itself
            files: list[str] = []
        else:
            state = driver.states[-1]
            files = publish(target, state.query_id, state.written_attempts(), storage)
    finally:
        for state in driver.states:
            discard(target, state.query_id, storage)
    done(Written(target.url, total, files))
    field = schema.field(0) if schema is not None else pa.field("count", pa.uint64())
    yield pa.record_batch([pa.array([total], field.type)], schema=pa.schema([field]))


def publish(
    target: WriteTarget, query_id: str, attempts: dict[int, int], storage: StorageConfig
) -> list[str]:
    """Move each task's winning attempt's files from staging to the target; returns their URLs.

    Raises:
        StorageError: the store refused a listing or a move (files already moved stay published).
    """
    fs, root = _filesystem(target.staging_root(query_id), storage)
    _, folder = _filesystem(target.folder, storage)
    local = isinstance(fs, pafs.LocalFileSystem)
    published: list[str] = []
    try:
        for task, attempt in sorted(attempts.items()):
            prefix = f"{root}t{task}-a{attempt}/"
            selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
            for info in sorted(fs.get_file_info(selector), key=lambda i: i.path):
                if info.type != pafs.FileType.File:
                    continue
                dest = folder + (
                    target.url.rsplit("/", 1)[-1] if target.one_file else info.path[len(prefix) :]
                )
                if local:
                    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
                fs.move(info.path, dest)
                published.append(_url(target, dest, folder))
    except OSError as exc:
        done = len(published)
        raise StorageError(
            f"publishing the files of {target.url} failed after {done} of them: {first_line(exc, 200)}"
        ) from exc
    return published


def discard(target: WriteTarget, query_id: str, storage: StorageConfig) -> None:
    """Remove a query's staging prefix (best effort: logged, never raised)."""
    try:
        fs, root = _filesystem(target.staging_root(query_id), storage)
        info = fs.get_file_info(root.rstrip("/"))
        if info.type != pafs.FileType.NotFound:
            fs.delete_dir(root.rstrip("/"))
    except (OSError, StorageError) as exc:
        log.warning("query=%s: could not remove the staging files of %s: %s", query_id, target.url, exc)


def _filesystem(url: str, storage: StorageConfig) -> tuple[pafs.FileSystem, str]:
    """The file system holding ``url`` and its path there (a folder URL's keeps its ``/``)."""
    if url.startswith("file://"):
        return pafs.LocalFileSystem(), url[len("file://") :]
    fs, path = stores.filesystem(parse_url(url), storage)
    return fs, path + "/" if url.endswith("/") else path


def _url(target: WriteTarget, dest: str, folder: str) -> str:
    """The URL of a published file (``dest`` is a path in the target's file system)."""
    return target.folder + dest[len(folder) :]
