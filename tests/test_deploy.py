"""The Docker deployment: Dockerfile, .dockerignore, docker-compose.yml, deploy/ helpers, README commands.

No Docker engine runs where the tests do, so the image is never built here: the compose file is
checked by ``docker compose config`` when a compose client is installed, and always structurally
(parsed with PyYAML) against the real ``flow-worker`` / ``flow`` command-line parsers. The two helpers
the image installs (``flow-init-certs``, ``flow-healthcheck``) run for real, against a worker started
with the compose file's own command line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from cryptography import x509
from support import clean_env, flow_worker

from deploy import healthcheck, init_certs
from ematix_flow.cli.main import cli as flow_cli
from ematix_flow.worker.main import parse_size
from ematix_flow.worker.main import worker as flow_worker_cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
INIT_CERTS = ROOT / "deploy" / "init_certs.py"

WORKERS = ("worker1", "worker2", "worker3")
IDENTITIES = {*WORKERS, "client"}
PORT = "50051"
#: The image's installed helpers (Dockerfile) and the scripts they are copied from.
HELPERS = {"flow-healthcheck": HEALTHCHECK, "flow-init-certs": INIT_CERTS}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


# ----------------------------------------------------------------------------- helpers
def compose_client() -> list[str] | None:
    """The compose command installed here (``docker compose`` or ``docker-compose``), or None."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` interpolation, with every variable unset (its default)."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as data."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    """One service of the compose file (failing the test if it is missing)."""
    assert name in compose["services"], f"docker-compose.yml has no service {name!r}"
    svc = compose["services"][name]
    assert isinstance(svc, dict)
    return svc


def command_of(svc: dict[str, Any]) -> list[str]:
    """A service's command as a list of arguments, variables replaced by their defaults."""
    command = svc.get("command")
    assert isinstance(command, list), "write commands as lists (exec form): no shell in between"
    return [interpolate(str(arg)) for arg in command]


def option_values(args: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (as ``--flag VALUE`` or ``--flag=VALUE``)."""
    values = []
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def option_value(args: list[str], flag: str) -> str:
    """The one value of ``flag`` in ``args``."""
    values = option_values(args, flag)
    assert len(values) == 1, f"expected {flag} once in {args}, found {values}"
    return values[0]


def parse_flow(args: list[str]) -> click.Context:
    """Parse ``flow ARGS`` with the real click command tree (raises click.UsageError when invalid)."""
    command: click.Command = flow_cli
    while isinstance(command, click.Group):
        assert args, "a flow sub-command is missing"
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"flow has no command {args[0]!r}"
        command, args = sub, args[1:]
    return command.make_context(command.name or "flow", list(args))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    """The .dockerignore patterns, in order (comments and blank lines dropped)."""
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def excluded(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last matching pattern decides,
    a pattern matching a parent directory matches its contents, ``!`` re-includes."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _glob_regex(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def readme_docker_commands() -> list[list[str]]:
    """The ``docker compose ...`` commands of README's "Deploy with Docker" section, as argument lists
    (comments, continuation lines and shell redirections handled)."""
    text = README.read_text(encoding="utf-8")
    assert "## Deploy with Docker" in text, "README.md has no 'Deploy with Docker' section"
    section = text.split("## Deploy with Docker", 1)[1].split("\n## ", 1)[0]
    commands, pending = [], ""
    for raw in section.splitlines():
        line = raw.strip()
        if pending:
            line = pending + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line.startswith("docker compose "):
            continue
        tokens = shlex.split(line, comments=True)
        for stop in ("<", ">", "|"):
            if stop in tokens:
                tokens = tokens[: tokens.index(stop)]
        commands.append(tokens)
    return commands


# ----------------------------------------------------------------------------- compose config
@pytest.mark.integration
def test_docker_compose_config_accepts_the_file() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("docker compose client not installed (neither `docker compose` nor `docker-compose`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "EMATIX_FLOW_", "TPCH_"))}
    result = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), "--profile", "tools", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, f"{' '.join(client)} config failed: {result.stderr.strip()}"


# ----------------------------------------------------------------------------- compose structure
def test_compose_has_certs_three_workers_and_the_tools(compose: dict[str, Any]) -> None:
    assert {"certs", *WORKERS, "datagen", "client"} <= set(compose["services"])
    assert {"ca", "certs", "data"} <= set(compose.get("volumes") or {})
    for name in ("datagen", "client"):  # on demand only: `docker compose up` leaves them alone
        assert service(compose, name).get("profiles"), f"{name} should sit in a profile"
    for name in ("certs", *WORKERS):
        assert not service(compose, name).get("profiles"), f"{name} must start with `docker compose up`"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_runs_mtls_with_its_own_certificate(compose: dict[str, Any], name: str) -> None:
    args = command_of(service(compose, name))
    assert args[0] == "flow-worker"
    assert option_value(args, "--tls-dir") == "/certs"
    assert option_value(args, "--tls-name") == name
    assert not any(a.startswith("--insecure") for a in args), f"{name} must not serve plaintext"
    assert option_value(args, "--listen") == f"0.0.0.0:{PORT}"
    peers = option_value(args, "--peers").split(",")
    assert sorted(peers) == sorted(f"{w}:{PORT}" for w in WORKERS if w != name)
    # it listens on 0.0.0.0, so it must say which address the others know it by (Flight SQL gateway)
    assert option_value(args, "--advertise") == f"{name}:{PORT}"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_serves_only_the_mesh_and_reads_only_the_data_volume(
    compose: dict[str, Any], name: str
) -> None:
    svc = service(compose, name)
    args = command_of(svc)
    assert set(option_values(args, "--allow-peer")) == IDENTITIES
    assert option_values(args, "--data-root") == ["/data"]
    volumes = [str(v) for v in svc.get("volumes", [])]
    assert "data:/data:ro" in volumes, f"{name}: the data volume must be mounted read-only"
    assert "certs:/certs:ro" in volumes, f"{name}: the certificates must be mounted read-only"
    assert not any(v.split(":")[0] == "ca" for v in volumes), f"{name} must not see the CA key"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_waits_for_the_certificates(compose: dict[str, Any], name: str) -> None:
    depends = service(compose, name).get("depends_on")
    assert isinstance(depends, dict), "depends_on with conditions (long form)"
    assert depends.get("certs") == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("name", WORKERS)
def test_worker_healthcheck_says_hello_with_its_own_certificate(compose: dict[str, Any], name: str) -> None:
    check = service(compose, name).get("healthcheck")
    assert isinstance(check, dict) and not check.get("disable")
    test = [interpolate(str(a)) for a in check["test"]]
    assert test[0] == "CMD" and test[1] == "flow-healthcheck"
    args = healthcheck.parse_args(test[2:])
    assert args.tls_dir == "/certs" and args.tls_name == name
    assert args.address == f"localhost:{PORT}"  # every worker certificate carries localhost
    assert {"interval", "timeout", "retries"} <= set(check)


@pytest.mark.parametrize("name", WORKERS)
def test_worker_flags_are_accepted_by_flow_worker(compose: dict[str, Any], name: str) -> None:
    args = command_of(service(compose, name))
    try:
        ctx = flow_worker_cli.make_context("flow-worker", args[1:])
    except click.UsageError as exc:
        pytest.fail(f"flow-worker refuses the {name} command of docker-compose.yml: {exc.format_message()}")
    assert ctx.params["tls_name"] == name
    assert parse_size(ctx.params["memory_limit"]) > 0


def test_flow_worker_parser_refuses_an_unknown_flag() -> None:
    """The check above means something: the parser does refuse what flow-worker does not know."""
    with pytest.raises(click.UsageError, match="no-such-flag"):
        flow_worker_cli.make_context("flow-worker", ["--tls-dir", "/certs", "--no-such-flag"])


def test_certs_service_issues_every_identity_and_alone_holds_the_ca(compose: dict[str, Any]) -> None:
    args = command_of(service(compose, "certs"))
    assert args[0] == "flow-init-certs"
    parsed = init_certs.parse_args(args[1:])
    assert set(parsed.names) == IDENTITIES
    assert str(parsed.out_dir) == "/certs"
    volumes = [str(v) for v in service(compose, "certs").get("volumes", [])]
    assert f"ca:{parsed.ca_dir}" in volumes and "certs:/certs" in volumes
    for name, svc in compose["services"].items():
        if name != "certs":
            mounts = [str(v).split(":")[0] for v in svc.get("volumes", [])]
            assert "ca" not in mounts, f"{name} must not mount the CA volume"


def test_datagen_and_client_commands_are_valid(compose: dict[str, Any]) -> None:
    datagen = command_of(service(compose, "datagen"))
    ctx = parse_flow(datagen[1:])
    assert str(ctx.params["out"]).startswith("/data/")
    assert "data:/data" in [str(v) for v in service(compose, "datagen").get("volumes", [])]
    client = service(compose, "client")
    assert command_of(client)[0] == "flow"  # `docker compose run --rm client flow sql ...` replaces it
    assert {"certs:/certs:ro", "data:/data:ro"} <= {str(v) for v in client.get("volumes", [])}
    depends = client.get("depends_on")
    assert isinstance(depends, dict)
    assert {w: {"condition": "service_healthy"} for w in WORKERS} == {w: depends.get(w) for w in WORKERS}


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_slim_python_and_ends_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    froms = [args for kw, args in instructions if kw == "FROM"]
    assert froms, "no FROM"
    assert re.fullmatch(
        r"python:3\.11-slim(?:-\w+)?(?:@sha256:[0-9a-f]{64})?(?:\s+AS\s+\S+)?", froms[-1], re.I
    )
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    users = [args for kw, args in instructions[last_from:] if kw == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the image ends as USER {users[-1]}"
    assert any(kw == "EXPOSE" and PORT in args.split() for kw, args in instructions)


def test_dockerfile_installs_the_package_without_dev_extras_and_the_helpers() -> None:
    runs = " ".join(args for kw, args in dockerfile_instructions() if kw == "RUN")
    assert "pip install --no-cache-dir" in runs
    assert "[dev]" not in runs and ".[" not in runs
    # the locked versions, build tools included (no release can change what the image holds)
    assert runs.count("--constraint /tmp/src/requirements-lock.txt") == runs.count("pip install"), runs
    assert "--no-build-isolation" in runs
    for helper in HELPERS:
        assert helper in runs, f"{helper} is not made executable in the image"
    text = DOCKERFILE.read_text(encoding="utf-8")
    for helper, script in HELPERS.items():
        assert f"COPY {script.relative_to(ROOT)} /usr/local/bin/{helper}" in text
        assert script.read_text(encoding="utf-8").startswith("#!/usr/bin/env python3\n")


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    patterns = dockerignore_patterns()
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from" not in args:
            sources += [a for a in args.split()[:-1] if not a.startswith("--")]
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not excluded(src, patterns), f"COPY {src}: .dockerignore leaves it out of the context"
    for path in (ROOT / "ematix_flow").rglob("*.py"):
        assert not excluded(str(path.relative_to(ROOT)), patterns), f"{path} is missing from the context"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "docs/BENCHMARKS.md",
        "bench/tpch/queries/q01.sql",
        "certs/ca-key.pem",
        "data/tpch-sf0.1/lineitem.parquet",
        "results/run.json",
        "ematix_flow/__pycache__/tls.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        "docker-compose.yml",
    ):
        assert excluded(path, patterns), f"{path} would be sent to the Docker build"


# ----------------------------------------------------------------------------- README
def test_readme_keeps_the_setup_commands_and_documents_docker() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    commands = readme_docker_commands()
    verbs = [c[2] for c in commands]
    for verb in ("build", "up", "run", "down"):
        assert verb in verbs, f"README's Docker section has no `docker compose {verb}`"
    assert ["docker", "compose", "up", "-d"] in commands
    assert ["docker", "compose", "down", "-v"] in commands


def test_readme_docker_commands_name_real_services_and_valid_flags(compose: dict[str, Any]) -> None:
    ran = set()
    for tokens in readme_docker_commands():
        if tokens[2] != "run":
            continue
        rest = tokens[3:]
        while rest and rest[0].startswith("-"):
            rest = rest[1:]
        assert rest, f"no service in {shlex.join(tokens)}"
        name, args = rest[0], rest[1:]
        service(compose, name)
        ran.add(name)
        if args and args[0] == "flow":
            parse_flow(args[1:])
            if args[1] in {"sql", "explain"}:
                assert option_value(args, "--tls-name") in IDENTITIES
                assert option_value(args, "--tls-dir") == "/certs"
                for peer in option_value(args, "--peers").split(","):
                    assert peer.split(":")[0] in WORKERS
    assert {"datagen", "client"} <= ran


# ----------------------------------------------------------------------------- the helpers, for real
@pytest.fixture
def mesh_certs(tmp_path: Path) -> Path:
    """What the compose ``certs`` service makes, made by the same script: returns the ``--out-dir``."""
    out = tmp_path / "certs"
    names = [*sorted(IDENTITIES), "stranger"]  # stranger: signed by the CA, not in --allow-peer
    result = run_script(INIT_CERTS, "--ca-dir", str(tmp_path / "ca"), "--out-dir", str(out), *names)
    assert result.returncode == 0, result.stderr
    return out


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the deploy/ helpers as the image does (a script of its own)."""
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60, env=clean_env()
    )


@pytest.mark.integration
def test_init_certs_is_idempotent_and_keeps_the_ca_key_private(tmp_path: Path) -> None:
    ca, out = tmp_path / "ca", tmp_path / "certs"
    args = ("--ca-dir", str(ca), "--out-dir", str(out), *sorted(IDENTITIES))
    first = run_script(INIT_CERTS, *args)
    assert first.returncode == 0, first.stderr
    assert "created a new CA" in first.stdout
    expected = {"ca.pem"} | {f"{n}.pem" for n in IDENTITIES} | {f"{n}-key.pem" for n in IDENTITIES}
    assert {p.name for p in out.iterdir()} == expected, "the peers get no CA key"
    for name in IDENTITIES:
        assert (out / f"{name}-key.pem").stat().st_mode & 0o777 == 0o600
        cert = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [name, "localhost"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    ca_before = (ca / "ca-key.pem").read_bytes()

    again = run_script(INIT_CERTS, *args)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert (ca / "ca-key.pem").read_bytes() == ca_before, "an existing CA must never be replaced"

    shutil.rmtree(ca)  # the CA volume lost alone: every certificate is re-issued under the new CA
    third = run_script(INIT_CERTS, *args)
    assert third.returncode == 0, third.stderr
    new_ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert (out / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
    for name in IDENTITIES:
        x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes()).verify_directly_issued_by(new_ca)


@pytest.fixture
def compose_worker(compose: dict[str, Any], mesh_certs: Path, tmp_path: Path) -> Iterator[str]:
    """worker1 started with docker-compose.yml's own command line (paths moved to tmp, no --peers).

    Yields the port it serves on, at 127.0.0.1.
    """
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    where = {
        "/certs": str(mesh_certs),
        "/data": str(data),
        "/work": str(work),
        f"0.0.0.0:{PORT}": "127.0.0.1:0",
    }
    args = [where.get(a, a) for a in command_of(service(compose, "worker1"))[1:]]
    i = args.index("--peers")
    del args[i : i + 2]  # worker2 / worker3 do not resolve here
    with flow_worker(args) as proc:
        yield proc.address.rsplit(":", 1)[1]


def healthcheck_args(compose: dict[str, Any], certs: Path, port: str, name: str = "worker1") -> list[str]:
    """worker1's healthcheck command from the compose file, pointed at ``certs`` and ``port``."""
    test = [str(a) for a in service(compose, "worker1")["healthcheck"]["test"]][2:]
    where = {"/certs": str(certs), f"localhost:{PORT}": f"localhost:{port}", "worker1": name}
    return [where.get(a, a) for a in test]


@pytest.mark.integration
def test_healthcheck_passes_against_the_compose_worker(
    compose: dict[str, Any], compose_worker: str, mesh_certs: Path
) -> None:
    result = run_script(HEALTHCHECK, *healthcheck_args(compose, mesh_certs, compose_worker))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: worker1 at localhost:")


@pytest.mark.integration
def test_healthcheck_fails_for_an_identity_the_worker_does_not_allow(
    compose: dict[str, Any], compose_worker: str, mesh_certs: Path
) -> None:
    result = run_script(HEALTHCHECK, *healthcheck_args(compose, mesh_certs, compose_worker, "stranger"))
    assert result.returncode == 1
    assert "unhealthy" in result.stderr and "stranger" in result.stderr


@pytest.mark.integration
def test_healthcheck_fails_when_nothing_listens(mesh_certs: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused, the port stays ours
        port = holder.getsockname()[1]
        args = ["--tls-dir", str(mesh_certs), "--tls-name", "worker1", "--timeout", "5", f"127.0.0.1:{port}"]
        result = run_script(HEALTHCHECK, *args)
    assert result.returncode != 0
    assert result.stderr.startswith("unhealthy: ") and "unreachable" in result.stderr


@pytest.mark.integration
def test_healthcheck_fails_without_tls_material(tmp_path: Path) -> None:
    result = run_script(HEALTHCHECK, "--tls-dir", str(tmp_path), "--tls-name", "worker1", "127.0.0.1:1")
    assert result.returncode == 1
    assert "TLS material not found" in result.stderr
