"""services.prometheus against the real stack: Prometheus (Debian's, built here) scrapes
the hub's /hub/metrics with a token that can read metrics and nothing else.

Site ``hdtuprom``; its Prometheus is published on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import time

import docker
import pytest
import requests
from stackfixture import diagnostics, run_cli, tear_down_site

from hubdeploy.contract.services import PROMETHEUS

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_PROMETHEUS_SITE", "hdtuprom")
PORT = int(os.environ.get("HUBDEPLOY_TEST_PROMETHEUS_PORT", "8642"))
PROM_PORT = int(os.environ.get("HUBDEPLOY_TEST_PROMETHEUS_UI_PORT", "8643"))
SITE_YAML = f"""\
name: {SITE}
public: {{host: 127.0.0.1, port: {PORT}}}
hub:
  authenticator: {{class: dummy}}
services:
  idle_culler: {{enabled: false}}
  prometheus: {{enabled: true, port: {PROM_PORT}, scrape_interval: 5}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
profiles:
  - {{name: small, image: base, default: true, memory: 1G}}
"""
PROM = f"http://127.0.0.1:{PROM_PORT}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("prom")
    site_file = d / "site.yaml"
    site_file.write_text(SITE_YAML)
    run_cli(site_file, "down", "--volumes", timeout=300)
    proc = run_cli(site_file, "up", timeout=1800)
    if proc.returncode == 1 and "is unhealthy" in proc.stderr:
        # On this shared 2-core engine a hub under others' load can miss its health
        # check's start period; `up` again waits on the same containers.
        proc = run_cli(site_file, "up", timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"up failed\n{proc.stdout}\n{proc.stderr}\n{diagnostics('hubdeploy-' + SITE)}")
    yield d
    tear_down_site(site_file, SITE)


def _container(service: str):
    return docker.from_env().containers.list(filters={"label": [
        f"com.docker.compose.project=hubdeploy-{SITE}", f"com.docker.compose.service={service}"]})[0]


def _hub_target(deadline: float) -> dict:
    """The hub's target once Prometheus has scraped it (or the last seen at the deadline)."""
    target: dict = {}
    while time.monotonic() < deadline:
        data = requests.get(f"{PROM}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        found = [t for t in data if t["labels"].get("job") == "jupyterhub"]
        if found:
            target = found[0]
            if target["health"] != "unknown":
                return target
        time.sleep(2)
    return target


def test_the_hub_target_is_up(site):
    target = _hub_target(time.monotonic() + 120)
    assert target.get("health") == "up", json.dumps(target) + diagnostics(f"hubdeploy-{SITE}")
    assert target["scrapeUrl"] == "http://hub:8081/hub/metrics" and target["lastError"] == ""
    # The samples are the hub's own.
    deadline = time.monotonic() + 60
    result: list = []
    while time.monotonic() < deadline and not result:
        result = requests.get(f"{PROM}/api/v1/query", params={"query": "jupyterhub_total_users"},
                              timeout=10).json()["data"]["result"]
        time.sleep(1)
    assert result and result[0]["metric"]["job"] == "jupyterhub"


def test_the_token_reads_metrics_and_nothing_else(site):
    token = (site / ".hubdeploy" / "secrets" / PROMETHEUS.secret).read_text().strip()
    hub = f"http://127.0.0.1:{PORT}/hub"
    assert requests.get(f"{hub}/metrics", timeout=10).status_code == 403
    auth = {"Authorization": f"token {token}"}
    metrics = requests.get(f"{hub}/metrics", headers=auth, timeout=10)
    assert metrics.status_code == 200 and "jupyterhub_" in metrics.text
    assert requests.get(f"{hub}/api/users", headers=auth, timeout=10).status_code == 403
    assert requests.get(f"{hub}/api/user", headers=auth, timeout=10).json()["scopes"] == ["read:metrics"]


def test_the_token_is_in_no_file_argv_or_environment_and_prometheus_is_not_root(site):
    token = (site / ".hubdeploy" / "secrets" / PROMETHEUS.secret).read_text().strip()
    for p in (site / ".hubdeploy" / "rendered").rglob("*"):
        assert not p.is_file() or token not in p.read_text()
    c = _container("prometheus")
    assert token not in json.dumps(c.attrs)
    # From inside the container: PID 1 is prometheus, unprivileged; only it reads the token copy.
    code, out = c.exec_run(["sh", "-c", "cat /proc/1/comm; awk '/^Uid/ {print $2}' /proc/1/status;"
                                        "id -u prometheus; stat -c '%U %a' /run/hubdeploy/scrape_token;"
                                        "setpriv --reuid=nobody --regid=nogroup --clear-groups "
                                        "cat /run/hubdeploy/scrape_token 2>&1; echo rc=$?"])
    comm, uid, prom_uid, owner, *rest = out.decode().split("\n")
    assert comm == "prometheus" and uid == prom_uid != "0", out
    assert owner == "prometheus 400"
    assert "rc=1" in "\n".join(rest) and token not in out.decode()


def test_published_on_loopback_only_and_not_on_the_users_network(site):
    c = _container("prometheus")
    bindings = c.attrs["HostConfig"]["PortBindings"]["9090/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    nets = set(c.attrs["NetworkSettings"]["Networks"])
    assert nets == {f"hubdeploy-{SITE}-internal", f"hubdeploy-{SITE}-metrics"}
    # A notebook's network cannot resolve it.
    hub = _container("hub")
    code, out = hub.exec_run(["getent", "hosts", "prometheus"])
    assert code == 0  # the hub shares the internal network with it
    # A container on the users' network (where notebooks are) cannot even resolve it.
    client = docker.from_env()
    probe = client.containers.create(_container("proxy").image.id, ["getent", "hosts", "prometheus"],
                                     network=f"hubdeploy-{SITE}-users",
                                     name=f"hubdeploy-{SITE}-probe", labels={"hubdeploy.site": SITE})
    try:
        probe.start()
        assert probe.wait(timeout=60)["StatusCode"] == 2, probe.logs()
    finally:
        probe.remove(force=True)
