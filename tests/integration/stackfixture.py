"""A real hubdeploy stack for integration tests, driven through the real CLI.

One stack per test session (site ``hdtstack``): bringing it up builds the images once;
``ensure_up`` makes any test independent of the order (``up`` on a running, unchanged
stack is a no-op). On a failed ``up`` the compose state and logs are printed, so a CI
failure explains itself. The session finaliser takes it down with its volumes; unless
HUBDEPLOY_TEST_KEEP_IMAGES is set, the images of every test site go at the session's end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

# Another value (HUBDEPLOY_TEST_STACK_SITE) lets two sessions share one engine.
SITE_NAME = os.environ.get("HUBDEPLOY_TEST_STACK_SITE", "hdtstack")


class Recorder:
    """A console that keeps what build_images prints and echoes it."""

    def __init__(self):
        self.lines: list[str] = []

    def print(self, text: str, **kwargs) -> None:
        self.lines.append(text)
        print(text, flush=True)


def free_port() -> int:
    """A free loopback port: any, or the first free one of HUBDEPLOY_TEST_PORTS (``LOW-HIGH``),
    for sessions that were given a range of their own on a shared machine."""
    low, _, high = os.environ.get("HUBDEPLOY_TEST_PORTS", "0-0").partition("-")
    for port in range(int(low), int(high or low) + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError(f"no free port in HUBDEPLOY_TEST_PORTS={os.environ['HUBDEPLOY_TEST_PORTS']}")


def run_cli(site_file: Path | None, *args: str, timeout: float = 1800, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "hubdeploy"]
    if site_file is not None:
        argv += ["--site", str(site_file)]
    proc = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hubdeploy {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


SITE_TEMPLATE = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  admin_users: [admin]
  authenticator: {{class: dummy}}
services:
  idle_culler: {{timeout: {culler_timeout}}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
profiles:
  - name: small
    display_name: Small login node
    image: base
    cpu: 0.5
    memory: 1G
    default: true
  - name: medium
    display_name: Medium login node
    image: base
    cpu: 1
    memory: 2G
    environment: {{HDT_PROFILE: medium}}
    volumes: [{{source: hubdeploy-{name}-shared, target: /srv/shared}}]
"""


@dataclass
class Stack:
    dir: Path
    port: int
    culler_timeout: int = 3600

    @property
    def site_file(self) -> Path:
        return self.dir / "site.yaml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def project(self) -> str:
        return f"hubdeploy-{SITE_NAME}"

    @property
    def state(self) -> Path:
        return self.dir / ".hubdeploy"

    def write_site(self, **changes) -> None:
        for k, v in changes.items():
            setattr(self, k, v)
        self.site_file.write_text(
            SITE_TEMPLATE.format(name=SITE_NAME, port=self.port, culler_timeout=self.culler_timeout)
        )

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_cli(self.site_file, *args, **kw)

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def secrets(self) -> list[str]:
        return [p.read_text().strip() for p in (self.state / "secrets").iterdir()]

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def ensure_up(self) -> None:
        if self.site_file.exists():
            proc = self.cli("status", "--json")
            if proc.returncode == 0:
                return
        proc = self.cli("up")
        if proc.returncode != 0:
            raise AssertionError(
                f"hubdeploy up failed ({proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                + diagnostics(self.project)
            )

    def container_ids(self) -> dict[str, str]:
        import docker

        client = docker.from_env()
        found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})
        return {c.labels["com.docker.compose.service"]: c.id for c in found}


def diagnostics(project: str) -> str:
    """docker ps and the last log lines of every container of the project."""
    out = [subprocess.run(["docker", "ps", "-a"], capture_output=True, text=True).stdout]
    names = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"name={project}", "--format", "{{.Names}}"],
        capture_output=True, text=True,
    ).stdout.split()
    for name in names:
        logs = subprocess.run(["docker", "logs", "--tail", "40", name], capture_output=True, text=True)
        out.append(f"--- {name}\n{textwrap.indent(logs.stdout + logs.stderr, '  ')}")
        if "-slurm-c" in name:
            # A compute-node server that failed says why only in its job's output file.
            jobs = subprocess.run(
                ["docker", "exec", name, "find", "/home", "/tmp", "-maxdepth", "4", "-name", "*slurm-*.log",
                 "-exec", "tail", "-n", "25", "-v", "{}", "+"],
                capture_output=True, text=True,
            )
            out.append(f"--- job output on {name}\n{textwrap.indent(jobs.stdout + jobs.stderr, '  ')}")
    return "\n".join(out)


# Test sites whose images the session removes at its end (conftest's
# pytest_sessionfinish), not at each module's: a later site with the same recipe then
# relabels them (hubdeploy.images, the content key) instead of building from Debian again.
SITES_WITH_IMAGES: set[str] = set()


def tear_down_site(site_file: Path, site_name: str) -> None:
    """What every test site's finaliser does: down with the volumes; its images go at the
    end of the session (unless HUBDEPLOY_TEST_KEEP_IMAGES).

    --take-over: a test site's stack is the test's, whichever directory last owned it
    (an interrupted run's temporary directory, a restore's)."""
    run_cli(site_file, "down", "--volumes", "--take-over", timeout=300)
    SITES_WITH_IMAGES.add(site_name)


def remove_session_images() -> None:
    """Every image of the test sites torn down in this session: untag them all, then
    prune what is left dangling (a relabelled image keeps its donor's layers: the donor
    goes once no image of another site builds on it), a bounded number of passes."""
    import docker

    if os.environ.get("HUBDEPLOY_TEST_KEEP_IMAGES") or not SITES_WITH_IMAGES:
        return
    for site in sorted(SITES_WITH_IMAGES):
        remove_site_images(site)
    client = docker.from_env()
    for _ in range(6):
        deleted = 0
        for site in sorted(SITES_WITH_IMAGES):
            try:
                found = client.images.prune(filters={"dangling": True, "label": f"hubdeploy.site={site}"})
            except docker.errors.APIError as exc:
                print(f"cleanup: pruning {site}'s images: {exc}")
                continue
            deleted += len(found.get("ImagesDeleted") or [])
        if not deleted:
            break


def remove_site_images(site_name: str) -> None:
    import docker

    client = docker.from_env()
    # The low-level list: images.list() inspects every image of the engine, and one that
    # another test or engineer removes meanwhile made it raise ImageNotFound, which left
    # all of this site's images behind.
    for image in client.api.images(name=f"hubdeploy/{site_name}-*"):
        for tag in image.get("RepoTags") or []:
            if tag.startswith(f"hubdeploy/{site_name}-"):
                try:
                    client.images.remove(tag, force=True)
                except Exception:
                    pass
    # What a registry test pushed and pulled back: REGISTRY/hubdeploy/<site>-NAME tags and
    # digests (the name filter above matches no registry host).
    for image in client.api.images():
        for ref in (image.get("RepoTags") or []) + (image.get("RepoDigests") or []):
            if f"/hubdeploy/{site_name}-" in ref:
                try:
                    client.images.remove(ref, force=True)
                except Exception:
                    pass


def user_session(stack, user: str):
    """Log ``user`` in through the hub's form; returns (HubClient, an API token of theirs)."""
    from hubdeploy.smoke.hubclient import HubClient

    hub = HubClient(stack.url)
    hub.login(user, "")
    token, _ = hub.create_token(user, scopes=None, expires_in=3600)
    return hub, token


# Kernel code for the isolation tests: whether a TCP connection to (host, port) opens
# ("open"), or the error's name (a refusal and a timeout both mean unreachable).
REACH_DEF = """\
import socket
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "open"
    except OSError as exc:
        return type(exc).__name__
"""


def run_5x4(server_url: str, token: str) -> str:
    """What a python3 kernel of the server prints for ``print(5 * 4)``, through the proxy."""
    from hubdeploy.smoke.kernel import ServerClient

    client = ServerClient(server_url, token)
    kid = client.start_kernel("python3")
    try:
        out, error = client.execute(kid, "print(5 * 4)", timeout=60)
        assert error is None, error
        return out.strip()
    finally:
        client.delete_kernel(kid)


def run_py(url: str, token: str, code: str) -> dict:
    """Run ``code`` in a python3 kernel of the server; it must print one JSON line."""
    from hubdeploy.smoke.kernel import ServerClient

    # A generous bound per request: other stacks may share this engine's two cores.
    client = ServerClient(url, token, request_timeout=120)
    kid = client.start_kernel("python3")
    try:
        out, error = client.execute(kid, code, timeout=120)
        assert error is None, error
        return json.loads(out.strip().splitlines()[-1])
    finally:
        client.delete_kernel(kid)


# Kernel code: each sbatch of SBATCHES (a JSON list of argument lists, after "sbatch
# --parsable -o /dev/null"), run in the user's compute-node kernel as the user, and its
# exit status and output.
SBATCH_EACH = """\
import json, subprocess
out = []
for args in json.loads({argvs!r}):
    p = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", *args], capture_output=True, text=True,
                       timeout=120)
    out.append([p.returncode, (p.stdout + p.stderr).strip()])
print(json.dumps(out))
"""


def sbatch_each(url: str, token: str, argvs: list[list[str]]) -> list[tuple[int, str]]:
    """sbatch each argument list from the server's kernel: [(exit status, output)]."""
    got = run_py(url, token, SBATCH_EACH.format(argvs=json.dumps(argvs)))
    return [(code, text) for code, text in got]
