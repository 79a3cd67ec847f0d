"""Object-store URLs and the storage configuration every process resolves them with.

A plan names data by URL (``s3://lake/sales/``) and never carries an endpoint or a credential: each
process (submitter, worker) turns a bucket into a store from its own configuration, which is

1. an optional ``--storage FILE`` (TOML), one table per bucket, ``"*"`` for every other bucket of
   that cloud; values may be ``${ENV}`` references, resolved when the file is read::

       [s3.lake]
       endpoint = "http://127.0.0.1:9000"
       region = "us-east-1"
       allow_http = true
       access_key_id = "${LAKE_KEY_ID}"
       secret_access_key = "${LAKE_SECRET}"

       [s3."*"]            # every other bucket: credentials from the environment or the instance
       region = "eu-west-1"

2. the standard environment of each cloud (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
   ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``...;
   ``GOOGLE_APPLICATION_CREDENTIALS``...; ``AZURE_STORAGE_ACCOUNT_NAME``...), which fills whatever
   the file leaves out.

A bucket neither names nor covers is refused with an error saying what to configure (a store
without credentials would otherwise try the cloud's instance-metadata service). Secrets never appear
in a ``repr``, a log line or an error: :meth:`BucketConfig.describe` shows everything else.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ematix_flow.errors import ConfigError, StorageError
from ematix_flow.urls import Location

#: The options each cloud's table takes, and which of them are secrets (never shown).
OPTIONS: dict[str, frozenset[str]] = {
    "s3": frozenset(
        {
            "endpoint",
            "region",
            "allow_http",
            "virtual_hosted_style",
            "skip_signature",
            "access_key_id",
            "secret_access_key",
            "session_token",
        }
    ),
    "gcs": frozenset({"service_account_path"}),
    "azure": frozenset(
        {
            "account",
            "access_key",
            "bearer_token",
            "client_id",
            "client_secret",
            "tenant_id",
            "use_emulator",
            "allow_http",
        }
    ),
}
SECRETS = frozenset({"secret_access_key", "session_token", "access_key", "bearer_token", "client_secret"})
_KEY_IDS = frozenset({"access_key_id", "client_id"})
_FLAGS = frozenset({"allow_http", "virtual_hosted_style", "skip_signature", "use_emulator"})
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Environment variables that make a cloud usable without a --storage entry (credentials or none needed).
_ENV_CREDENTIALS = {
    "s3": (
        "AWS_ACCESS_KEY_ID",
        "AWS_SKIP_SIGNATURE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ),
    "gcs": (
        "GOOGLE_SERVICE_ACCOUNT",
        "GOOGLE_SERVICE_ACCOUNT_PATH",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ),
    "azure": (
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_KEY",
        "AZURE_CLIENT_ID",
        "AZURE_STORAGE_USE_EMULATOR",
    ),
}
_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "gcs": "set GOOGLE_APPLICATION_CREDENTIALS",
    "azure": "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
}


@dataclass(frozen=True)
class BucketConfig:
    """The resolved options of one bucket (or of ``*``, every other bucket of a cloud)."""

    cloud: str
    bucket: str
    options: Mapping[str, str | bool] = field(default_factory=dict)

    def describe(self) -> str:
        """``s3.lake (endpoint=http://..., access_key_id=***34, secret_access_key=***)``: secrets hidden."""
        shown = ", ".join(f"{k}={_shown(k, v)}" for k, v in sorted(self.options.items()))
        return f"{self.cloud}.{self.bucket}" + (f" ({shown})" if shown else "")

    def __repr__(self) -> str:
        return f"BucketConfig({self.describe()})"


def _shown(key: str, value: str | bool) -> str:
    """An option as logs and errors may show it: secrets as ``***``, key ids by their last two characters."""
    if key in SECRETS:
        return "***"
    if key in _KEY_IDS and isinstance(value, str):
        return "***" + value[-2:]
    return str(value)


class StorageConfig:
    """Every bucket a process may read or write, from a ``--storage`` file and the environment."""

    def __init__(
        self,
        buckets: Mapping[tuple[str, str], BucketConfig] | None = None,
        source: str = "",
        catalogs: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._buckets = dict(buckets or {})
        self._catalogs = {name: dict(props) for name, props in (catalogs or {}).items()}
        self.source = source  # the file it was read from ("" when only the environment)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> StorageConfig:
        """Read a ``--storage`` TOML file (None: the environment only); ``${ENV}`` resolved from ``env``.

        Raises:
            ConfigError: the file is missing, not TOML, names an unknown cloud or option, or refers to
                an unset environment variable.
        """
        if path is None:
            return cls()
        where = f"--storage {path}"
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML ({exc})") from exc
        env = os.environ if env is None else env
        buckets: dict[tuple[str, str], BucketConfig] = {}
        catalogs: dict[str, dict[str, str]] = {}
        for cloud, tables in data.items():
            if cloud == "iceberg" and isinstance(tables, dict):
                catalogs = _catalogs(where, tables, env)
                continue
            if cloud not in OPTIONS or not isinstance(tables, dict):
                raise ConfigError(
                    f"{where}: unknown section [{cloud}]: use [s3.BUCKET], [gcs.BUCKET], [azure.CONTAINER] "
                    "or [iceberg.CATALOG]"
                )
            for bucket, options in tables.items():
                if not isinstance(options, dict):
                    raise ConfigError(
                        f'{where}: [{cloud}.{bucket}] must be a table (write [{cloud}."{bucket}"])'
                    )
                buckets[(cloud, bucket)] = BucketConfig(
                    cloud, bucket, _options(where, cloud, bucket, options, env)
                )
        return cls(buckets, str(path), catalogs)

    def catalog(self, name: str) -> dict[str, str]:
        """The pyiceberg properties of the Iceberg catalog ``name`` (its ``[iceberg.NAME]`` table).

        Raises:
            ConfigError: no such catalog is configured.
        """
        if name not in self._catalogs:
            known = ", ".join(sorted(self._catalogs)) or "none"
            raise ConfigError(
                f"no Iceberg catalog {name!r}: add [iceberg.{name}] (uri, warehouse, ...) to the --storage "
                f"file (configured: {known})"
            )
        return {"name": name, **self._catalogs[name]}

    def bucket(self, loc: Location) -> BucketConfig:
        """The configuration serving ``loc``'s bucket: its own entry, else ``*``, else the environment.

        Raises:
            StorageError: nothing configures the bucket (no entry, no ``*``, no credentials in the
                environment): the message says what to add.
        """
        if loc.cloud == "http":
            return BucketConfig("http", loc.bucket)
        for key in ((loc.cloud, loc.bucket), (loc.cloud, "*")):
            if key in self._buckets:
                return self._buckets[key]
        if any(os.environ.get(name) for name in _ENV_CREDENTIALS[loc.cloud]):
            return BucketConfig(loc.cloud, "*")
        entry = f'[{loc.cloud}.{loc.bucket}] (or [{loc.cloud}."*"])'
        raise StorageError(
            f"no storage configured for {loc.store_url}/: add {entry} to a --storage file, "
            f"or {_HINTS[loc.cloud]} in the environment of every process that reads it"
        )

    def describe(self) -> str:
        """One line for logs and status pages: every configured bucket, secrets hidden."""
        entries = [b.describe() for _, b in sorted(self._buckets.items())]
        entries += [
            f"iceberg.{name} ({_catalog_shown(props)})" for name, props in sorted(self._catalogs.items())
        ]
        return "; ".join(entries) or "the environment only"

    def __repr__(self) -> str:
        return f"StorageConfig({self.describe()})"


def _options(
    where: str, cloud: str, bucket: str, options: Mapping[str, object], env: Mapping[str, str]
) -> dict[str, str | bool]:
    """Check and resolve one bucket's options (``${ENV}`` references expanded)."""
    out: dict[str, str | bool] = {}
    for key, value in options.items():
        if key not in OPTIONS[cloud]:
            known = ", ".join(sorted(OPTIONS[cloud]))
            raise ConfigError(f"{where}: [{cloud}.{bucket}] has no option {key!r} (known: {known})")
        if key in _FLAGS:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: [{cloud}.{bucket}] {key} must be true or false")
            out[key] = value
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{where}: [{cloud}.{bucket}] {key} must be a string")
        out[key] = _expand(where, f"[{cloud}.{bucket}] {key}", value, env)
    return out


def _catalogs(where: str, tables: Mapping[str, object], env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The ``[iceberg.NAME]`` tables: pyiceberg catalog properties, strings, ``${ENV}`` expanded."""
    out: dict[str, dict[str, str]] = {}
    for name, props in tables.items():
        if not isinstance(props, dict):
            raise ConfigError(f'{where}: [iceberg.{name}] must be a table (write [iceberg."{name}"])')
        resolved = {}
        for key, value in _flattened(props).items():
            if not isinstance(value, str | bool | int):
                raise ConfigError(f"{where}: [iceberg.{name}] {key} must be a string")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            resolved[key] = _expand(where, f"[iceberg.{name}] {key}", text, env)
        out[name] = resolved
    return out


def _flattened(props: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """TOML's dotted keys (``s3.endpoint = ...`` is a table ``s3``) back as pyiceberg's flat names."""
    out: dict[str, object] = {}
    for key, value in props.items():
        if isinstance(value, dict):
            out.update(_flattened(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _catalog_shown(props: Mapping[str, str]) -> str:
    """A catalog's properties as logs may show them: secrets, passwords and tokens as ``***``."""
    hidden = ("secret", "password", "token", "credential")
    shown = []
    for key, value in sorted(props.items()):
        secret = any(h in key.lower() for h in hidden) or ("://" in value and "@" in value)
        shown.append(f"{key}={'***' if secret else value}")
    return ", ".join(shown)


def _expand(where: str, what: str, value: str, env: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise ConfigError(f"{where}: {what} refers to ${{{name}}}, which is not set in the environment")
        return env[name]

    return _ENV_REF.sub(one, value)


def env_flag(name: str) -> bool | None:
    """A boolean environment variable (``true`` / ``1`` / ``false`` / ``0``), None when unset."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    return value in ("1", "true", "yes", "on")
