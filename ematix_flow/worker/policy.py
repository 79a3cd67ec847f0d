"""What a worker lets mesh members do: who may call it, which files its tasks may touch, UDFs.

A task's plan can name any path and can carry Python code (a UDF travels pickled), so a worker
checks every plan before it decodes it: file scans and sinks must stay under its ``--data-root``
directories (symlinks and ``..`` resolved) or URL prefixes (``s3://lake/data/``), and opaque
extension nodes are refused unless the worker runs with ``--allow-udfs`` (Python UDFs are refused
by DataFusion itself at decode, see :func:`ematix_flow.engine.run.decode`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from ematix_flow.errors import AccessDeniedError, ConfigError, PlanningError, ProtocolError
from ematix_flow.planner.nodes import parse_tree
from ematix_flow.planner.paths import FileAccess, file_accesses
from ematix_flow.urls import is_url, parse_url

_LOCAL_STORES = frozenset({"", "file:"})


@dataclass(frozen=True)
class AccessPolicy:
    """A worker's authorisation rules (the defaults: any CA-signed peer, any path, no UDFs)."""

    allow_peers: frozenset[str] = frozenset()  # lowercase certificate identities allowed (empty: any)
    data_roots: tuple[str, ...] = ()  # resolved directories and URL prefixes tasks may use (empty: any)
    allow_udfs: bool = False  # Python UDFs and extension nodes in plans (they are code)

    @classmethod
    def create(
        cls, allow_peers: Iterable[str] = (), data_roots: Sequence[str] = (), allow_udfs: bool = False
    ) -> AccessPolicy:
        """A policy from command-line values; local data roots must be existing directories."""
        roots = []
        for root in data_roots:
            if is_url(root):
                roots.append(_url_root(root))
                continue
            real = os.path.realpath(os.path.expanduser(root))
            if not os.path.isdir(real):
                raise ConfigError(f"--data-root {root}: not a directory (create it or fix the path)")
            roots.append(real)
        peers = frozenset(p.strip().lower() for p in allow_peers if p.strip())
        return cls(allow_peers=peers, data_roots=tuple(roots), allow_udfs=allow_udfs)

    def check_peer(self, identity: str) -> None:
        """Refuse a caller whose certificate identity is not listed (when a list is given)."""
        if self.allow_peers and identity.lower() not in self.allow_peers:
            shown = identity or "(none: plaintext)"
            raise AccessDeniedError(
                f"certificate identity {shown!r} is not in this worker's --allow-peer list "
                f"({', '.join(sorted(self.allow_peers))}): add --allow-peer {identity or 'NAME'} to "
                "every worker, or use a certificate issued under an allowed name"
            )

    def check_plan(self, plan: bytes) -> None:
        """Refuse a plan that touches files outside the data roots, or holds custom code nodes."""
        try:
            nodes = list(parse_tree(plan).walk())
        except (ProtocolError, PlanningError) as exc:
            raise ProtocolError(f"could not decode the task plan: {exc}") from exc
        if not self.allow_udfs and any(n.kind == "extension" for n in nodes):
            raise AccessDeniedError(
                "the plan holds an extension node (custom code): this worker runs without --allow-udfs"
            )
        if self.data_roots:
            for access in file_accesses(plan):
                self._check_access(access)

    def check_path(self, path: str, what: str) -> None:
        """Refuse a path or URL (a catalog table, a CREATE EXTERNAL TABLE location) outside the data roots."""
        if not self.data_roots:
            return
        store = parse_url(path).store_url + "/" if is_url(path) else "file:///"
        try:
            self._check_access(FileAccess(path=path, store=store, write=False, node="table"))
        except AccessDeniedError as exc:
            raise AccessDeniedError(f"{what}: {exc}") from exc

    def _check_access(self, access: FileAccess) -> None:
        verb = "writing" if access.write else "reading"
        roots = ", ".join(self.data_roots)
        path = access.path
        if path.startswith("file://"):
            path = path[len("file://") :]
        if "://" in path or access.store.rstrip("/") not in _LOCAL_STORES:
            self._check_url(access.url, verb)
            return
        path = "/" + path.lstrip("/")
        for form in {path, unquote(path)}:  # object stores percent-decode: both forms must stay inside
            if "\x00" in form:
                raise AccessDeniedError(f"{verb} a path with a NUL byte ({form!r}): refused")
            if not self._inside(os.path.realpath(form)):
                raise AccessDeniedError(
                    f"{verb} {form} is outside this worker's --data-root ({roots}): move the data under "
                    "a data root, or start the workers with --data-root for its directory"
                )

    def _inside(self, real: str) -> bool:
        local = (r for r in self.data_roots if not is_url(r))
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in local)

    def _check_url(self, url: str, verb: str) -> None:
        """Refuse an object-store URL outside every URL data root (or with ``.`` / ``..`` segments)."""
        roots = ", ".join(self.data_roots)
        try:
            loc = parse_url(url)
        except ConfigError as exc:
            raise AccessDeniedError(f"{verb} {url}: {exc}") from exc
        for form in {loc.key, unquote(loc.key)}:  # object stores percent-decode: both forms must stay inside
            if any(part in (".", "..") for part in form.split("/")) or "\x00" in form:
                raise AccessDeniedError(
                    f"{verb} {url}: a path with . or .. segments or a NUL byte is refused"
                )
        whole = f"{loc.store_url}/{loc.key}"
        if not any(whole == r.rstrip("/") or whole.startswith(r) for r in self.data_roots if is_url(r)):
            raise AccessDeniedError(
                f"{verb} {whole} is outside this worker's --data-root ({roots}): start the workers with "
                f"--data-root {loc.store_url}/PREFIX/ for it, or move the data under a data root"
            )

    def describe(self) -> str:
        """One line for the worker's start-up log."""
        peers = ", ".join(sorted(self.allow_peers)) or "any certificate from the mesh CA"
        roots = ", ".join(self.data_roots) or "any path (no --data-root)"
        return f"callers: {peers}; data: {roots}; Python UDFs: {'allowed' if self.allow_udfs else 'refused'}"


def _url_root(root: str) -> str:
    """``s3://lake/data`` -> ``s3://lake/data/``: a URL data root covers whole path segments."""
    loc = parse_url(root)
    key = loc.key.strip("/")
    return f"{loc.store_url}/{key}/" if key else f"{loc.store_url}/"
