"""A private S3-protocol server (moto's server mode) with credentials it checks: tests and benchmarks.

``S3Server.start()`` runs ``moto.server`` as a process on a free port of 127.0.0.1, makes an IAM user
and access key through it, then turns on moto's request authentication: from then on a wrong key or
secret is refused (403) as S3 would. ``tests/s3server.py`` serves one to the test session;
``python -m bench ... --storage s3`` reads its tables from one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

START_TIMEOUT = 30.0  # seconds for the server to answer
REGION = "us-east-1"
_ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class S3Server:
    """A running moto server: its endpoint and the one access key it accepts."""

    endpoint: str
    key_id: str
    secret: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls) -> S3Server:
        """Start a server on a free port and wait until it answers, with authentication on."""
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.1)  # polled against the deadline above
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="x",
        )
        iam.create_user(UserName="flow")
        iam.put_user_policy(UserName="flow", PolicyName="all", PolicyDocument=json.dumps(_ALLOW_ALL))
        key = iam.create_access_key(UserName="flow")["AccessKey"]
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(request, timeout=10).close()  # from now on, requests are checked
        return cls(endpoint, key["AccessKeyId"], key["SecretAccessKey"], process)

    def stop(self) -> None:
        """Stop the server (its data goes with it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self, secret: str | None = None) -> Any:
        """A boto3 S3 client with the server's key (or another ``secret``)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=secret or self.secret,
        )

    def env(self) -> dict[str, str]:
        """The standard AWS environment for this server (what a process reads without --storage)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": REGION,
        }

    def storage_file(self, path: Path, buckets: list[str], secret_env: str = "FLOW_TEST_S3_SECRET") -> Path:
        """A ``--storage`` TOML for ``buckets`` on this server; the secret a ``${secret_env}`` reference."""
        tables = [
            f'[s3."{b}"]\nendpoint = "{self.endpoint}"\nregion = "{REGION}"\n'
            f'allow_http = true\naccess_key_id = "{self.key_id}"\n'
            f'secret_access_key = "${{{secret_env}}}"\n'
            for b in buckets
        ]
        path.write_text("\n".join(tables))
        return path

    def upload(self, bucket: str, folder: Path, prefix: str) -> list[str]:
        """Create ``bucket`` (if new) and copy every file under ``folder`` to ``prefix``; returns the keys."""
        s3 = self.client()
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        keys = []
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{f.relative_to(folder).as_posix()}"
            s3.upload_file(str(f), bucket, key)
            keys.append(key)
        return keys

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` in ``bucket``, sorted."""
        s3 = self.client()
        out: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)
