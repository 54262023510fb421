"""A hub on a swarm through its operations: a JupyterHub upgrade with `hubdeploy up` (the
hub's service scaled to 0, the database upgraded, the service back), a failed one rolled
back, and backup -> ``down --volumes`` -> restore -> ``up`` bringing the same hub back.

One stack (site ``hdtswup``, ``orchestrator: swarm``) for the module, in order: brought up
on the old JupyterHub with a user's login-node server (a swarm service); an upgrade
failing after `upgrade-db` changed the schema; the real upgrade, after which the new hub
serves the old server; then the backup and restore. The images are those of
``test_upgrade_stack`` (the same recipe: whichever module runs first builds them).

The engine is a swarm manager for the session (conftest ``swarm_manager``).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import requests
from stackfixture import diagnostics, free_port, run_5x4, run_cli, tear_down_site, user_session
from test_upgrade_stack import NEW, OLD, Site

from hubdeploy.ops import engine
from hubdeploy.smoke.hubclient import HubClient
from hubdeploy.ops.upgrade import FAULT_ENV

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_SWARM_UPGRADE_SITE", "hdtswup")
PROJECT = f"hubdeploy-{SITE}"
USER = "uma"
SITE_YAML = """\
name: {name}
public: {{host: 0.0.0.0, port: {port}}}
orchestrator: swarm
hub:
  jupyterhub_version: "{version}"
  authenticator: {{class: dummy}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
profiles:
  - {{name: small, image: base, default: true, memory: 1G}}
"""
state: dict = {}


@pytest.fixture(scope="module")
def site(tmp_path_factory, swarm_manager):
    s = Site(tmp_path_factory.mktemp("swarmupgrade"), SITE, free_port(), SITE_YAML)
    s.write(OLD)
    run_cli(s.site_file, "down", "--volumes", timeout=300)  # an interrupted earlier run's leftovers
    try:
        proc = s.cli("up", timeout=1800)
        if proc.returncode != 0:
            raise AssertionError(f"up on {OLD} failed\n{proc.stdout}\n{proc.stderr}\n{diagnostics(PROJECT)}")
        yield s
    finally:
        tear_down_site(s.site_file, SITE)


def _old_server(site):
    """A login-node server of USER started under the old hub (once per module)."""
    if "url" not in state:
        hub, token = user_session(site, USER)
        assert hub.start_server(USER, "", None) or hub.wait_ready(USER, "", time.monotonic() + 180)
        url = hub.server_url(USER)
        assert run_5x4(url, token) == "20"
        (svc,) = engine.docker_client().services.list(filters={"label": [f"hubdeploy.site={SITE}",
                                                                          f"hubdeploy.user={USER}"]})
        state.update(hub=hub, token=token, url=url, service=svc.id)
    return state


def test_a_failed_upgrade_brings_the_old_hub_service_back(site):
    s = _old_server(site)
    assert site.hub_version() == OLD
    before = site.db_facts()
    site.write(NEW)
    try:
        proc = site.cli("up", timeout=1800, env={FAULT_ENV: "upgrade-db"})
    finally:
        site.write(OLD)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert "injected failure" in said and f"the hub runs {OLD} again" in said and "Traceback" not in said, said
    assert site.hub_version() == OLD
    assert site.db_facts() == before
    hub = site.hub()
    assert hub.image.labels["hubdeploy.jupyterhub-version"] == OLD
    assert run_5x4(s["url"], s["token"]) == "20"


def test_upgrade_keeps_the_running_server_service(site):
    s = _old_server(site)
    before = site.db_facts()
    site.write(NEW)
    proc = site.cli("up", "--json", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(PROJECT)
    result = json.loads(proc.stdout)
    assert result["upgraded"]["from"] == OLD and result["upgraded"]["to"] == NEW
    assert site.hub_version() == NEW
    after = site.db_facts()
    assert after["rev"] != before["rev"] and after["users"] == before["users"]
    assert after["spawners"] == before["spawners"]
    hub = HubClient(site.url, token=s["token"])
    assert hub.server_model(USER, "")["ready"]
    (svc,) = engine.docker_client().services.list(filters={"label": [f"hubdeploy.site={SITE}",
                                                                      f"hubdeploy.user={USER}"]})
    assert svc.id == s["service"]
    assert run_5x4(s["url"], s["token"]) == "20"


def test_backup_then_restore_after_down_volumes_brings_the_same_hub_back(site, tmp_path):
    s = _old_server(site)
    archive = tmp_path / "swarm.tar.gz"
    proc = site.cli("backup", "-o", str(archive), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "database/jupyterhub.sqlite" in json.loads(proc.stdout)["members"]
    proc = site.cli("down", "--volumes", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = engine.docker_client()
    assert not client.volumes.list(filters={"name": f"{PROJECT}-hub-data"})
    assert not client.services.list(filters={"label": f"hubdeploy.site={SITE}"})

    other = tmp_path / "restored" / "site.yaml"
    proc = run_cli(None, "restore", str(archive), "--site", str(other), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        proc = run_cli(other, "up", timeout=1800)
        assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(PROJECT)
        me = requests.get(f"{site.url}hub/api/user", headers={"Authorization": f"token {s['token']}"}, timeout=60)
        assert me.status_code == 200 and me.json()["name"] == USER, me.text
        # The server that ran at the backup was stopped by down: the hub knows it stopped.
        model = HubClient(site.url, token=s["token"]).server_model(USER, "")
        assert not (model or {}).get("ready"), model
    finally:
        # The restored directory now owns the stack: it takes it down (volumes too).
        proc = run_cli(other, "down", "--volumes", timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not client.volumes.list(filters={"label": f"com.docker.stack.namespace={PROJECT}"})
    assert not client.volumes.list(filters={"name": f"{PROJECT}-hub-data"})
