"""A real JupyterHub on loopback for tests: hub + configurable-http-proxy + local servers.

``local_hub(tmp_dir)`` starts JupyterHub (the version installed in this venv) on random
free loopback ports with the dummy authenticator, named servers, a spawner that takes
``user_options={"profile": NAME}`` like hubdeploy's (profile "python-alt" also has a
"klingon" kernel, a language without a check), the ``hubdeploy-smoke`` service with
SMOKE_SERVICE_SCOPES and a ``test-admin`` service for assertions. The hub starts CHP
itself. On exit every process it started is ended by pid, with bounded waits.

``config_hub(tmp_dir, site_text)`` starts JupyterHub with hubdeploy's own
config/jupyterhub_config.py and the hub.json ``hubdeploy render`` writes for the site,
on loopback with its own CHP: login, the REST API and the spawner's account resolution
are hubdeploy's, while servers never start (the docker backend's engine is a closed port).

configurable-http-proxy must be on PATH, or named by $HUBDEPLOY_TEST_CHP.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from hubdeploy.smoke import SMOKE_SERVICE_SCOPES

PROFILES = ["python", "python-alt"]
PASSWORD = "smoke-test-password"

CONFIG = '''
import os

from jupyterhub.spawner import SimpleLocalProcessSpawner

PROFILES = {profiles!r}


class ProfileSpawner(SimpleLocalProcessSpawner):
    """Takes user_options={{"profile": NAME}} and refuses unknown profiles, like hubdeploy's."""

    async def start(self):
        profile = (self.user_options or {{}}).get("profile")
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {{profile!r}}")
        extra = {{"JUPYTER_PATH": {extra_kernels!r}}} if profile == "python-alt" else {{}}
        self.environment = {{**self.environment, **extra, "HUBDEPLOY_PROFILE": profile}}
        return await super().start()


c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True
c.JupyterHub.spawner_class = ProfileSpawner
c.SimpleLocalProcessSpawner.home_dir_template = {home!r} + "/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []  # CI containers run as root
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.JupyterHub.services = [
    {{"name": "hubdeploy-smoke", "api_token": {smoke_token!r}}},
    {{"name": "test-admin", "api_token": {admin_token!r}}},
]
c.JupyterHub.load_roles = [
    {{"name": "hubdeploy-smoke", "scopes": {scopes!r}, "services": ["hubdeploy-smoke"]}},
    {{"name": "admin", "services": ["test-admin"]}},
]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chp() -> str | None:
    return os.environ.get("HUBDEPLOY_TEST_CHP") or shutil.which("configurable-http-proxy")


@dataclass
class LocalHub:
    url: str
    hub_port: int
    smoke_token: str
    admin_token: str
    dir: Path
    proc: subprocess.Popen

    def admin(self, method: str, path: str, **kw) -> requests.Response:
        """A request to the hub API as the admin service (for assertions)."""
        kw.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}hub/api/{path}",
                                headers={"Authorization": f"token {self.admin_token}"}, **kw)

    def log_tail(self, lines: int = 60) -> str:
        text = (self.dir / "hub.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _pids_of_our_servers(hub_port: int) -> list[int]:
    """Single-user servers of this hub: they run in their own sessions, so find them by env."""
    marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub_port}/hub/api".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _end(pid: int, timeout: float = 10) -> None:
    """SIGTERM, wait (bounded), SIGKILL: for one process we started."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_hub(tmp_dir: Path, *, profiles: list[str] = PROFILES, start_timeout: float = 60):
    """Start a hub in ``tmp_dir``; yield a LocalHub; stop the hub, proxy and servers."""
    chp = find_chp()
    if chp is None:
        raise RuntimeError("configurable-http-proxy is not on PATH (npm install configurable-http-proxy, "
                           "or apt-get install node-configurable-http-proxy; or set HUBDEPLOY_TEST_CHP)")
    bindir = Path(sys.executable).parent
    port, hub_port, api_port = free_port(), free_port(), free_port()
    smoke_token, admin_token = secrets.token_hex(32), secrets.token_hex(32)
    (tmp_dir / "home").mkdir()
    # "python-alt" also has a kernel of a language run_smoke has no check for.
    klingon = tmp_dir / "share" / "jupyter" / "kernels" / "klingon"
    klingon.mkdir(parents=True)
    (klingon / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Klingon", "language": "klingon",
    }))
    (tmp_dir / "jupyterhub_config.py").write_text(CONFIG.format(
        profiles=set(profiles), port=port, hub_port=hub_port, proxy_api_port=api_port, chp=chp,
        password=PASSWORD, home=str(tmp_dir / "home"), singleuser=str(bindir / "jupyterhub-singleuser"),
        smoke_token=smoke_token, admin_token=admin_token, scopes=SMOKE_SERVICE_SCOPES,
        extra_kernels=str(tmp_dir / "share" / "jupyter"),
    ))
    env = {**os.environ, "PATH": f"{bindir}:{Path(chp).parent}:{os.environ.get('PATH', '')}"}
    log = open(tmp_dir / "hub.log", "wb")
    proc = subprocess.Popen([str(bindir / "jupyterhub"), "-f", "jupyterhub_config.py"],
                            cwd=tmp_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    hub = LocalHub(f"http://127.0.0.1:{port}/", hub_port, smoke_token, admin_token, tmp_dir, proc)
    try:
        _wait_for_hub(hub, proc, start_timeout)
        yield hub
    finally:
        # The hub stops its servers and its proxy on SIGTERM; the rest is the fallback.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        pidfile = tmp_dir / "jupyterhub-proxy.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    _end(pid)
        for pid in _pids_of_our_servers(hub_port):
            _end(pid)
        log.close()


@dataclass
class ConfigHub:
    url: str
    dir: Path
    hub_json: dict

    def log_tail(self, lines: int = 60) -> str:
        text = (self.dir / "hub.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _local_hub_json(site_text: str, tmp_dir: Path, hub_port: int, api_port: int) -> dict:
    """hub.json as render writes it for ``site_text``, its secrets generated into
    ``tmp_dir``, and its addresses and paths moved to loopback and ``tmp_dir``."""
    from hubdeploy import render
    from hubdeploy.contract import hubjson
    from hubdeploy.contract.layout import SECRETS_DIR
    from hubdeploy.site.loader import load_site_text
    from hubdeploy.state.secrets import ensure_secrets, secret_names

    site = load_site_text(site_text, "site.yaml")
    refs = {p.image: f"hubdeploy/{site.name}-{p.image}:0" for p in site.profiles}
    secrets_dir = tmp_dir / "secrets"
    ensure_secrets(secrets_dir, secret_names(site))
    text = hubjson.dumps(render.hub_data(site, refs)).decode().replace(f'"{SECRETS_DIR}/', f'"{secrets_dir}/')
    data = json.loads(text)
    data["hub"] = {"ip": "127.0.0.1", "port": hub_port, "connect_url": f"http://127.0.0.1:{hub_port}"}
    data["proxy"]["api_url"] = f"http://127.0.0.1:{api_port}"
    data["database"] = {"url": f"sqlite:///{tmp_dir}/jupyterhub.sqlite", "password_file": None}
    ident = data["identity"]
    if ident["state_file"]:
        ident["state_file"] = str(tmp_dir / "identities.json")
    # Volumes in the stack: directories that exist before the hub starts.
    for key in ("homes_dir", "nss_dir"):
        if ident.get(key):
            ident[key] = str(tmp_dir / key)
            Path(ident[key]).mkdir()
    # Nothing listens there: a start fails once the account is resolved, on no engine.
    data["spawner"]["backend_config"]["docker_url"] = f"tcp://127.0.0.1:{free_port()}"
    return data


@contextlib.contextmanager
def config_hub(tmp_dir: Path, site_text: str, *, start_timeout: float = 60):
    """Start hubdeploy's hub config for ``site_text`` in ``tmp_dir``; yield a ConfigHub;
    stop the hub and its proxy (module docstring)."""
    from hubdeploy import resources

    chp = find_chp()
    if chp is None:
        raise RuntimeError("configurable-http-proxy is not on PATH (or set HUBDEPLOY_TEST_CHP)")
    bindir = Path(sys.executable).parent
    port, hub_port, api_port = free_port(), free_port(), free_port()
    data = _local_hub_json(site_text, tmp_dir, hub_port, api_port)
    (tmp_dir / "hub.json").write_text(json.dumps(data))
    token = Path(data["proxy"]["token_file"]).read_text().strip()
    env = {**os.environ, "PATH": f"{bindir}:{Path(chp).parent}:{os.environ.get('PATH', '')}",
           "HUBDEPLOY_HUB_JSON": str(tmp_dir / "hub.json")}
    chp_log, hub_log = open(tmp_dir / "chp.log", "wb"), open(tmp_dir / "hub.log", "wb")
    proxy = subprocess.Popen([chp, "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                              "--api-port", str(api_port), "--default-target", f"http://127.0.0.1:{hub_port}"],
                             env={**env, "CONFIGPROXY_AUTH_TOKEN": token}, stdout=chp_log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    proc = subprocess.Popen([str(bindir / "jupyterhub"), "-f", str(resources.path("config/jupyterhub_config.py"))],
                            cwd=tmp_dir, env=env, stdout=hub_log, stderr=subprocess.STDOUT, start_new_session=True)
    hub = ConfigHub(f"http://127.0.0.1:{port}/", tmp_dir, data)
    try:
        _wait_for_hub(hub, proc, start_timeout)
        yield hub
    finally:
        for p in (proc, proxy):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        chp_log.close()
        hub_log.close()


def _wait_for_hub(hub, proc: subprocess.Popen, start_timeout: float) -> None:
    """Until the hub's API answers; RuntimeError with its log when it exits or takes too long."""
    deadline = time.monotonic() + start_timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {proc.returncode}:\n{hub.log_tail()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{hub.url}hub/api", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the hub did not answer in {start_timeout} s:\n{hub.log_tail()}")
        time.sleep(0.25)
