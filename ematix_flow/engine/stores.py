"""Object stores made from a :class:`~ematix_flow.engine.storage.StorageConfig`, per process.

DataFusion has no lazy store registry: a context must hold a store for every bucket a plan names
before it decodes (Parquet) or runs (CSV / JSON) it. :func:`register` builds one from this process's
configuration for each bucket and registers it; it runs where a process is about to plan or decode.
:func:`filesystem` gives the same bucket as a ``pyarrow.fs`` file system, for listing prefixes and
writing files outside DataFusion (pipeline targets, ``flow tpch gen``).

Store objects do not pickle and hold credentials: they are never sent anywhere.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from datafusion import SessionContext
from datafusion import object_store as dfstore

from ematix_flow.engine.storage import BucketConfig, StorageConfig, env_flag
from ematix_flow.errors import StorageError, first_line
from ematix_flow.planner.paths import file_accesses
from ematix_flow.urls import Location, is_url, parse_url

#: object_store reads some S3 settings only from the environment when a store is built: they are set
#: for that moment, under this lock (no other thread builds a store meanwhile).
_ENV_LOCK = threading.Lock()
_S3_ENV_FLAGS = {
    "virtual_hosted_style": "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "skip_signature": "AWS_SKIP_SIGNATURE",
}
_DEFAULT_REGION = "us-east-1"


def register(ctx: SessionContext, urls: Iterable[str], storage: StorageConfig) -> list[str]:
    """Register a store on ``ctx`` for the bucket of every URL in ``urls``; returns the store URLs.

    Local paths and ``file://`` URLs need none and are skipped. A store is made again each time
    (cheap, no I/O): a running plan keeps the one it started with.

    Raises:
        StorageError: a bucket is not configured, or its configuration cannot make a store.
    """
    found: dict[str, Location] = {}
    for url in urls:
        if is_url(url):
            loc = parse_url(url)
            found.setdefault(loc.store_url, loc)
    for store_url, loc in found.items():
        store = make_store(loc, storage.bucket(loc))
        ctx.register_object_store(f"{loc.scheme}://", store, loc.bucket)
        _REGISTERED.setdefault(ctx, {})[store_url] = (loc.scheme, loc.bucket, store)
    return list(found)


def plan_urls(plan: bytes) -> list[str]:
    """Every URL a serialized plan's file scans read and its sinks write."""
    return [a.url for a in file_accesses(plan)]


def store_urls(plan: bytes) -> list[str]:
    """The store URLs (``s3://lake``) of the buckets a serialized plan touches."""
    return sorted({parse_url(u).store_url for u in plan_urls(plan) if is_url(u)})


def inherit(ctx: SessionContext, parent: SessionContext) -> None:
    """Register on ``ctx`` every store :func:`register` put on ``parent`` (a context made from another)."""
    for scheme, bucket, store in _REGISTERED.get(parent, {}).values():
        ctx.register_object_store(f"{scheme}://", store, bucket)
        _REGISTERED.setdefault(ctx, {})[f"{scheme}://{bucket}"] = (scheme, bucket, store)


#: The stores registered on each live context (DataFusion cannot list them), for :func:`inherit`.
_REGISTERED: weakref.WeakKeyDictionary[SessionContext, dict[str, tuple[str, str, object]]] = (
    weakref.WeakKeyDictionary()
)


def make_store(loc: Location, conf: BucketConfig) -> object:
    """The DataFusion object store of ``loc``'s bucket under ``conf``.

    Raises:
        StorageError: the configuration is not one a store can be made from (DataFusion panics).
    """
    opts = conf.options
    try:
        if loc.cloud == "s3":
            allow_http = opts.get("allow_http", env_flag("AWS_ALLOW_HTTP") or False)
            with _s3_env(conf):
                return dfstore.AmazonS3(
                    loc.bucket,
                    region=_str(opts, "region") or _env_region(),
                    access_key_id=_str(opts, "access_key_id"),
                    secret_access_key=_str(opts, "secret_access_key"),
                    session_token=_str(opts, "session_token"),
                    endpoint=_str(opts, "endpoint"),
                    allow_http=bool(allow_http),
                )
        if loc.cloud == "gcs":
            return dfstore.GoogleCloud(loc.bucket, service_account_path=_str(opts, "service_account_path"))
        if loc.cloud == "azure":
            container = loc.bucket.split("@", 1)[0]
            account = _str(opts, "account") or (
                loc.bucket.split("@", 1)[1].split(".", 1)[0] if "@" in loc.bucket else None
            )
            return dfstore.MicrosoftAzure(
                container,
                account=account,
                access_key=_str(opts, "access_key"),
                bearer_token=_str(opts, "bearer_token"),
                client_id=_str(opts, "client_id"),
                client_secret=_str(opts, "client_secret"),
                tenant_id=_str(opts, "tenant_id"),
                use_emulator=opts.get("use_emulator") or None,
                allow_http=opts.get("allow_http") or None,
            )
        return dfstore.Http(loc.store_url)
    except BaseException as exc:  # a bad configuration panics (PanicException is not an Exception)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise StorageError(
            f"cannot make a store for {loc.store_url}/ from {conf.describe()}: {first_line(exc, 200)}"
        ) from None


def filesystem(loc: Location, storage: StorageConfig) -> tuple[pafs.FileSystem, str]:
    """``loc``'s bucket as a pyarrow file system, and ``loc``'s path in it.

    Raises:
        StorageError: the bucket is not configured, or is a web URL (read-only, not listable).
    """
    conf = storage.bucket(loc)
    opts = conf.options
    path = f"{loc.bucket.split('@', 1)[0]}/{loc.key}".rstrip("/")
    if loc.cloud == "s3":
        endpoint = (
            _str(opts, "endpoint") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
        )
        scheme = "https"
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            scheme, endpoint = parts.scheme, parts.netloc + parts.path.rstrip("/")
        anonymous = bool(opts.get("skip_signature", env_flag("AWS_SKIP_SIGNATURE") or False))
        keys = {}
        if not anonymous and _str(opts, "access_key_id"):
            keys = {
                "access_key": _str(opts, "access_key_id"),
                "secret_key": _str(opts, "secret_access_key"),
                "session_token": _str(opts, "session_token"),
            }
        fs = pafs.S3FileSystem(
            region=_str(opts, "region") or _env_region(),
            endpoint_override=endpoint or None,
            scheme=scheme,
            anonymous=anonymous,
            force_virtual_addressing=bool(opts.get("virtual_hosted_style", False)),
            **keys,
        )
        return fs, path
    if loc.cloud == "gcs":
        return pafs.GcsFileSystem(), path
    if loc.cloud == "azure":
        account = _str(opts, "account") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or ""
        key = _str(opts, "access_key") or os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
        return pafs.AzureFileSystem(account_name=account, account_key=key), path
    raise StorageError(f"{loc}: web URLs are read-only and cannot be listed; name each file")


#: Object-store failures inside DataFusion's and pyarrow's messages.
_STORE_FAILURE = re.compile(
    r"Object Store error|Generic \w+ error|AWS Error|object store|necessary (privileges|credentials)"
    r"|Server returned non-2xx status code|Error performing (GET|PUT|HEAD|POST|DELETE|list)"
)
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken"}
)


def is_storage_failure(text: str) -> bool:
    """Whether an engine message is an object store's failure (see :func:`storage_failure`)."""
    return _STORE_FAILURE.search(text) is not None


def storage_failure(text: str, stores: Iterable[str]) -> StorageError | None:
    """A one-line StorageError for an object-store failure in an engine message; None if it is not one.

    ``stores``: the store URLs the failing work touched (named in the message; never a secret).
    """
    if not is_storage_failure(text):
        return None
    text = _HTTP_QUERY.sub(r"\1", text)  # a signed URL's query string (SAS tokens...) is never shown
    where = ", ".join(f"{s}/" for s in sorted(set(stores))) or _where(text)
    code = _S3_CODE.search(text)
    refused = (
        "403 Forbidden",
        "ACCESS_DENIED",
        "necessary privileges",
        "necessary credentials",
        "SIGNATURE_DOES_NOT_MATCH",  # pyarrow.fs (the AWS SDK's error names)
        "INVALID_ACCESS_KEY_ID",
    )
    if (code and code.group(1) in _CREDENTIAL_CODES) or any(r in text for r in refused):
        what = code.group(1) if code else "403 Forbidden"
        return StorageError(
            f"{where} refused the credentials ({what}): check the access key and secret this process "
            "uses for that bucket (its --storage entry or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )
    if (code and code.group(1) == "NoSuchBucket") or "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text:
        return StorageError(f"{where}: no such bucket (check the URL, and the endpoint it is served from)")
    if "not found" in text.lower() and ("Object at location" in text or "404" in text):
        return StorageError(f"{where}: an object the query reads is gone ({first_line(text, 160)})")
    if any(
        s in text for s in ("error sending request", "Connection refused", "connection error", "timed out")
    ):
        return StorageError(
            f"{where} did not answer ({_reason(text)}): check the endpoint and that the store is up"
        )
    return StorageError(f"{where}: {first_line(text, 240)}")


def _where(text: str) -> str:
    """The object store an engine message names by its HTTP URL (query strings, which may sign, cut)."""
    m = _HTTP_URL.search(text)
    return f"the object store at {m.group(1)}" if m else "the object store"


_HTTP_URL = re.compile(r"(https?://[^\s?]+)")
_HTTP_QUERY = re.compile(r"(https?://[^\s?]+)\?\S*")


def _reason(text: str) -> str:
    for marker in ("Connection refused", "timed out", "connection error", "error sending request"):
        if marker in text:
            return marker.lower()
    return first_line(text, 120)


@contextmanager
def _s3_env(conf: BucketConfig) -> Iterator[None]:
    """Set the S3 flags object_store reads only from the environment while a store is built."""
    wanted = {
        env: "true" if conf.options[key] else "false"
        for key, env in _S3_ENV_FLAGS.items()
        if key in conf.options
    }
    if not wanted:
        yield
        return
    with _ENV_LOCK:
        saved = {name: os.environ.get(name) for name in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _str(opts: Mapping[str, str | bool], key: str) -> str | None:
    value = opts.get(key)
    return value if isinstance(value, str) and value else None


def _env_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or _DEFAULT_REGION


#: Our option -> the object_store configuration key (what deltalake and other Rust readers take).
_OBJECT_STORE_KEYS = {
    "s3": {
        "endpoint": "aws_endpoint",
        "region": "aws_region",
        "access_key_id": "aws_access_key_id",
        "secret_access_key": "aws_secret_access_key",
        "session_token": "aws_session_token",
        "allow_http": "aws_allow_http",
        "virtual_hosted_style": "aws_virtual_hosted_style_request",
        "skip_signature": "aws_skip_signature",
    },
    "gcs": {"service_account_path": "google_service_account"},
    "azure": {
        "account": "azure_storage_account_name",
        "access_key": "azure_storage_account_key",
        "bearer_token": "azure_storage_token",
        "client_id": "azure_client_id",
        "client_secret": "azure_client_secret",
        "tenant_id": "azure_tenant_id",
        "use_emulator": "azure_storage_use_emulator",
        "allow_http": "azure_allow_http",
    },
}


def object_store_options(loc: Location, storage: StorageConfig) -> dict[str, str]:
    """``loc``'s bucket configuration as object_store keys (``aws_endpoint``...), for deltalake.

    What the configuration leaves out, the reader takes from the environment as we do; ``allow_http``
    is read by us (AWS_ALLOW_HTTP) and passed, as for DataFusion's stores.

    Raises:
        StorageError: the bucket is not configured here.
    """
    conf = storage.bucket(loc)
    keys = _OBJECT_STORE_KEYS.get(loc.cloud, {})
    out = {
        keys[k]: ("true" if v else "false") if isinstance(v, bool) else v
        for k, v in conf.options.items()
        if k in keys
    }
    if loc.cloud == "s3":
        region = _str(conf.options, "region") or _env_region()
        out.setdefault("aws_region", region)
        if env_flag("AWS_ALLOW_HTTP"):
            out.setdefault("aws_allow_http", "true")
    return out
