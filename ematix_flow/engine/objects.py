"""Listing and filling object-store prefixes with pyarrow.fs (``--tables-dir s3://...``, ``--out s3://...``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from ematix_flow.engine.storage import StorageConfig
from ematix_flow.engine.stores import filesystem, storage_failure
from ematix_flow.errors import StorageError, first_line
from ematix_flow.urls import folder_url, parse_url


def entries(prefix: str, storage: StorageConfig) -> list[tuple[str, bool]]:
    """The direct children of a URL prefix, sorted: (URL, is a folder).

    Raises:
        StorageError: the bucket is not configured or cannot be listed; the prefix holds nothing.
    """
    infos = _list(prefix, storage, recursive=False)
    loc = parse_url(prefix)
    if not infos:
        raise StorageError(f"--tables-dir {prefix}: nothing under that prefix (check the URL)")
    root = loc.bucket.split("@", 1)[0]
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        key = info.path[len(root) + 1 :] if info.path.startswith(root + "/") else info.path
        out.append((f"{loc.store_url}/{key}", info.type == pafs.FileType.Directory))
    return out


def names(prefix: str, storage: StorageConfig) -> list[str]:
    """The names of the direct children of a URL prefix (none when it holds nothing).

    Raises:
        StorageError: the bucket is not configured or cannot be listed.
    """
    return sorted(i.path.rstrip("/").rsplit("/", 1)[-1] for i in _list(prefix, storage, recursive=False))


def files(prefix: str, storage: StorageConfig) -> list[str]:
    """The paths of every file under a URL prefix (recursively).

    Raises:
        StorageError: the bucket is not configured or cannot be listed.
    """
    return [i.path for i in _list(prefix, storage, recursive=True) if i.type == pafs.FileType.File]


def upload(files: list[Path], prefix: str, storage: StorageConfig) -> list[str]:
    """Copy local ``files`` to ``prefix`` (a folder URL), each under its own name; returns their URLs.

    Raises:
        StorageError: the bucket is not configured, refused the credentials or did not answer.
    """
    loc = parse_url(folder_url(prefix))
    fs, path = filesystem(loc, storage)
    urls = []
    for f in files:
        try:
            pafs.copy_files(str(f), f"{path}/{f.name}", pafs.LocalFileSystem(), fs)
        except OSError as exc:
            raise storage_failure(str(exc), [loc.store_url]) or StorageError(
                f"{prefix}: cannot write {f.name} ({first_line(exc, 200)})"
            ) from None
        urls.append(f"{folder_url(prefix)}{f.name}")
    return urls


def _list(prefix: str, storage: StorageConfig, *, recursive: bool) -> list[pafs.FileInfo]:
    loc = parse_url(prefix)
    fs, path = filesystem(loc, storage)
    try:
        infos: list[pafs.FileInfo] = fs.get_file_info(
            pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
        )
    except OSError as exc:
        raise storage_failure(str(exc), [loc.store_url]) or StorageError(
            f"{prefix}: cannot list it ({first_line(exc, 200)})"
        ) from None
    return infos
