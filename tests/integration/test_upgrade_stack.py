"""Upgrading a running stack's JupyterHub from 5.5.x to 6.1.1 with `hubdeploy up`.

One stack (site ``hdtuup``) for the module, in order: brought up on 5.5.4, a user's
login-node server started under it; a downgrade refused; an upgrade failing at the build
and after `upgrade-db` changed the schema, each leaving the old hub and its database; then
the real upgrade, after which the new hub serves the old server and stops it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import docker
import pytest
import requests
from stackfixture import diagnostics, run_5x4, run_cli, tear_down_site, user_session

from hubdeploy.ops import engine
from hubdeploy.contract.names import container_name
from hubdeploy.smoke.hubclient import HubClient
from hubdeploy.ops.upgrade import FAULT_ENV

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_UPGRADE_SITE", "hdtuup")
PORT = int(os.environ.get("HUBDEPLOY_TEST_UPGRADE_PORT", "8640"))
OLD, NEW, OLDER = "5.5.4", "6.1.1", "5.5.3"
USER = "ursula"
SITE_YAML = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  jupyterhub_version: "{version}"
  authenticator: {{class: dummy}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
profiles:
  - {{name: small, image: base, default: true, memory: 1G}}
"""
state: dict = {}


class Site:
    """A site directory whose site file names a JupyterHub version (``template`` has
    {name}, {port} and {version}); its hub under compose or swarm."""

    def __init__(self, path, name: str = SITE, port: int = PORT, template: str = SITE_YAML):
        self.dir = path
        self.site_file = path / "site.yaml"
        self.name, self.port, self.template = name, port, template
        self.url = f"http://127.0.0.1:{port}/"
        self.project = f"hubdeploy-{name}"

    def write(self, version: str) -> None:
        self.site_file.write_text(self.template.format(name=self.name, port=self.port, version=version))

    def cli(self, *args, **kw):
        return run_cli(self.site_file, *args, **kw)

    def hub(self):
        return engine.hub_container(docker.from_env(), self.project)

    def hub_version(self) -> str:
        return requests.get(self.url + "hub/api", timeout=10).json()["version"]

    def db_facts(self) -> dict:
        """The schema revision, the users and the servers with their spawner state."""
        code, out = self.hub().exec_run(["python3", "-c", (
            "import sqlite3, json; d = sqlite3.connect('file:/srv/jupyterhub/data/jupyterhub.sqlite?mode=ro', uri=True);"
            "print(json.dumps({'rev': d.execute('select version_num from alembic_version').fetchall(),"
            "'users': d.execute('select name from users order by name').fetchall(),"
            "'spawners': d.execute('select name, state from spawners order by id').fetchall()}))")])
        assert code == 0, out
        return json.loads(out)

    def rendered_digest(self) -> str:
        h = hashlib.sha256()
        for p in sorted((self.dir / ".hubdeploy" / "rendered").rglob("*")):
            if p.is_file():
                h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("upgrade"))
    s.write(OLD)
    run_cli(s.site_file, "down", "--volumes", timeout=300)
    proc = s.cli("up", timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(f"up on {OLD} failed\n{proc.stdout}\n{proc.stderr}\n{diagnostics(s.project)}")
    yield s
    tear_down_site(s.site_file, SITE)


def _old_server(site):
    """A login-node server of USER started under the old hub (once per module)."""
    if "url" not in state:
        hub, token = user_session(site, USER)
        assert hub.start_server(USER, "", None) or hub.wait_ready(USER, "", time.monotonic() + 180)
        url = hub.server_url(USER)
        assert run_5x4(url, token) == "20"
        c = docker.from_env().containers.get(container_name(site.project, USER, ""))
        state.update(hub=hub, token=token, url=url, container=c.id)
    return state


def test_old_hub_runs_the_old_version_and_a_server(site):
    assert site.hub_version() == OLD
    assert site.hub().image.labels["hubdeploy.jupyterhub-version"] == OLD
    s = _old_server(site)
    c = docker.from_env().containers.get(s["container"])
    code, out = c.exec_run(["jupyterhub-singleuser", "--version"])
    assert out.decode().strip().splitlines()[-1] == OLD


def test_downgrade_is_refused_without_side_effects(site):
    _old_server(site)
    hub_id, rendered = site.hub().id, site.rendered_digest()
    site.write(OLDER)
    try:
        proc = site.cli("up", timeout=300)
    finally:
        site.write(OLD)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "older than the running hub's 5.5.4" in proc.stderr and "Traceback" not in proc.stderr
    assert site.hub().id == hub_id and site.rendered_digest() == rendered
    assert not docker.from_env().api.images(filters={"label": "hubdeploy.jupyterhub-version=" + OLDER})


@pytest.mark.parametrize("fault", ["build", "upgrade-db"])
def test_failed_upgrade_leaves_the_old_hub_and_database(site, fault):
    _old_server(site)
    hub_id, rendered, before = site.hub().id, site.rendered_digest(), site.db_facts()
    site.write(NEW)
    try:
        proc = site.cli("up", timeout=1800, env={FAULT_ENV: fault})
    finally:
        site.write(OLD)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "injected failure" in proc.stderr and "Traceback" not in proc.stderr
    if fault == "upgrade-db":
        assert f"the hub runs {OLD} again" in " ".join(proc.stderr.split())
    hub = site.hub()
    assert hub.id == hub_id and hub.status == "running"
    assert site.hub_version() == OLD
    assert site.db_facts() == before
    assert site.rendered_digest() == rendered
    if fault == "upgrade-db":
        backups = list((site.dir / ".hubdeploy" / "backups").iterdir())
        assert backups and all(p.stat().st_mode & 0o777 == 0o600 for p in backups)
    # The server started under the old hub is still served by it.
    assert run_5x4(state["url"], state["token"]) == "20"


def test_upgrade_keeps_the_running_server_and_stops_it_later(site):
    s = _old_server(site)
    before = site.db_facts()
    site.write(NEW)
    proc = site.cli("up", "--json", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(site.project)
    result = json.loads(proc.stdout)
    assert result["upgraded"]["from"] == OLD and result["upgraded"]["to"] == NEW
    assert site.hub_version() == NEW
    after = site.db_facts()
    assert after["rev"] != before["rev"] and after["users"] == before["users"]
    # The hub's record of the server (its container id in the spawner state) survived.
    assert after["spawners"] == before["spawners"]
    hub = HubClient(site.url, token=s["token"])
    assert hub.server_model(USER, "")["ready"]
    # The server, still the 5.5.4 one, runs code through the proxy for the new hub.
    assert docker.from_env().containers.get(s["container"]).status == "running"
    assert run_5x4(s["url"], s["token"]) == "20"
    hub.stop_server(USER, "", time.monotonic() + 120, remove=False)
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(s["container"])
    # `up` again on the upgraded hub changes nothing.
    again = json.loads(site.cli("up", "--json", timeout=600, check=True).stdout)
    assert again["upgraded"] is None and again["built"] == []
