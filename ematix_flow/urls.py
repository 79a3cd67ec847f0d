"""Object-store URLs: which schemes are stores, their parts, and the ones quoted in SQL (a leaf module).

>>> parse_url("s3://lake/sales/part-0.parquet").store_url
's3://lake'
>>> folder_url("s3://lake/sales")
's3://lake/sales/'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ematix_flow.errors import ConfigError

#: URL scheme -> the cloud whose configuration serves it.
CLOUDS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "azure": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "http": "http",
    "https": "http",
}


@dataclass(frozen=True)
class Location:
    """An object-store URL cut into its parts: ``s3://lake/sales/x.parquet``."""

    scheme: str  # as written: s3, gs, az, abfss, https...
    bucket: str  # the URL's host: a bucket, a container (``c@account.dfs...`` for abfss), a web host
    key: str  # the object key or prefix, without the leading slash

    @property
    def cloud(self) -> str:
        """The configuration that serves it: ``s3``, ``gcs``, ``azure`` or ``http``."""
        return CLOUDS[self.scheme]

    @property
    def store_url(self) -> str:
        """The store's URL as DataFusion keys it: ``s3://lake``."""
        return f"{self.scheme}://{self.bucket}"

    def __str__(self) -> str:
        return f"{self.store_url}/{self.key}"


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an object-store or web URL (``file://`` and plain paths are not)."""
    scheme, sep, _ = str(path).partition("://")
    return bool(sep) and scheme.lower() in CLOUDS


def parse_url(url: str) -> Location:
    """``s3://lake/a/b`` -> Location("s3", "lake", "a/b").

    Raises:
        ConfigError: not a URL of a store we read, or no bucket.
    """
    if not is_url(url):
        raise ConfigError(f"{url}: not an object-store URL (s3://, gs://, az://, abfss://, https://)")
    parts = urlsplit(url)
    if not parts.netloc:
        raise ConfigError(f"{url}: no bucket in the URL (write {parts.scheme}://BUCKET/PATH)")
    key = parts.path.lstrip("/")
    if parts.scheme.lower() in ("http", "https") and parts.query:
        key += "?" + parts.query
    return Location(parts.scheme.lower(), parts.netloc, key)


#: A quoted URL literal in SQL (``COPY ... TO 's3://...'``, ``LOCATION 's3://...'``).
_SQL_URL = re.compile(r"'((?:" + "|".join(CLOUDS) + r")://[^'\s]+)'", re.IGNORECASE)
_FILE_SUFFIXES = (".parquet", ".csv", ".json", ".jsonl", ".ndjson", ".gz", ".zst", ".bz2", ".xz")


def urls_in(sql: str) -> list[str]:
    """The object-store URLs quoted in ``sql``, in order (duplicates once)."""
    return list(dict.fromkeys(m.group(1) for m in _SQL_URL.finditer(sql)))


def folder_url(url: str) -> str:
    """``s3://lake/sales`` -> ``s3://lake/sales/``: a URL without a file suffix names a folder.

    DataFusion lists a prefix only when it ends with ``/``.
    """
    if url.endswith("/") or url.lower().endswith(_FILE_SUFFIXES) or parse_url(url).cloud == "http":
        return url
    return url + "/"
