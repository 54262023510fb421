"""The PostgreSQL database option: a db service on the internal network, the hub's state in
it, the password only in the secret file."""

from __future__ import annotations

import json
import os

import docker
import pytest

from stackfixture import diagnostics, free_port, run_cli, tear_down_site

from hubdeploy.contract.layout import INTERNAL_NETWORK, project_name, stack_name
from hubdeploy.contract.services import CLI, SMOKE

pytestmark = pytest.mark.integration

# Renameable, so that two sessions can share an engine.
SITE_NAME = os.environ.get("HUBDEPLOY_TEST_PG_SITE", "hdtpg")
PROJECT = project_name(SITE_NAME)
SITE = """\
name: {name}
public: {{port: {port}}}
database: {{type: postgresql}}
services: {{idle_culler: {{enabled: false}}}}
build: {{ca_bundle: /etc/ssl/certs/ca-certificates.crt}}
profiles: [{{name: only, image: base}}]
"""


@pytest.fixture(scope="module")
def pg_site(tmp_path_factory):
    d = tmp_path_factory.mktemp("pg")
    site = d / "site.yaml"
    site.write_text(SITE.format(name=SITE_NAME, port=free_port()))
    yield site
    tear_down_site(site, SITE_NAME)


def test_hub_state_lives_in_postgres(pg_site):
    proc = run_cli(pg_site, "up", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(PROJECT)
    status = json.loads(run_cli(pg_site, "status", "--json").stdout)
    svcs = {s["service"]: s for s in status["services"]}
    assert svcs["db"]["health"] == "healthy" and status["healthy"]

    smoke = run_cli(pg_site, "smoke", "--json", timeout=600)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    client = docker.from_env()
    db = client.containers.get(svcs["db"]["container"])
    # The hub's tables and its users are in PostgreSQL (peer auth inside the container).
    rc, out = db.exec_run(["psql", "-tA", "-d", "jupyterhub", "-c", "select name from services"], user="postgres")
    assert rc == 0 and {CLI.name, SMOKE.name} <= set(out.decode().split()), out
    rc, out = db.exec_run(["psql", "-tA", "-d", "jupyterhub", "-c", "select count(*) from oauth_clients"],
                          user="postgres")
    assert rc == 0 and int(out.decode().strip()) >= 1, out
    # The db is reachable only on the internal network and publishes nothing.
    assert set(db.attrs["NetworkSettings"]["Networks"]) == {stack_name(PROJECT, INTERNAL_NETWORK)}
    assert not db.attrs["HostConfig"]["PortBindings"]
    password = (pg_site.parent / ".hubdeploy" / "secrets" / "db_password").read_text().strip()
    hub = client.containers.get(svcs["hub"]["container"])
    for c in (db, hub):
        assert password not in json.dumps(c.attrs)
        assert password not in c.logs().decode(errors="replace")
