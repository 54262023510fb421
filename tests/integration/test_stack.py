"""The example-like site against the real engine: up, log in, spawn, run code, restarts,
changes, errors, down. Everything goes through the real CLI, hub, proxy and containers."""

from __future__ import annotations

import json
import socket
import time
import xml.etree.ElementTree as ET

import docker
import pytest
import requests

from hubdeploy.contract.names import container_name
from hubdeploy.smoke.hubclient import HubClient, escape_path

from stackfixture import run_5x4, user_session  # noqa: E402

pytestmark = pytest.mark.integration

USER = "has@"  # an awkward name on purpose: escaping must hold end to end
state: dict = {}


def _wait_api(url: str, token: str, limit: float) -> float:
    """Seconds until the server's /api answers 200 through the proxy (bounded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            r = requests.get(url + "api/status", headers={"Authorization": f"token {token}"},
                             timeout=5, allow_redirects=False)
            if r.status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer within {limit} s")


def test_up_is_healthy(up_stack):
    data = up_stack.status()
    assert data["healthy"], data
    svcs = {s["service"]: s for s in data["services"]}
    assert set(svcs) == {"hub", "proxy", "engine-proxy", "idle-culler"}
    assert svcs["hub"]["health"] == "healthy" and svcs["proxy"]["health"] == "healthy"
    # Only the proxy is published.
    client = docker.from_env()
    for name, cid in up_stack.container_ids().items():
        ports = client.containers.get(cid).attrs["HostConfig"]["PortBindings"] or {}
        assert bool(ports) == (name == "proxy"), (name, ports)


def test_smoke_cli_logs_in_spawns_and_runs_code(up_stack, tmp_path):
    junit = tmp_path / "smoke.xml"
    proc = up_stack.cli("smoke", "--json", "--junit", str(junit), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["auth"] == "form"
    text = json.dumps(report)
    assert "small" in text and "medium" in text
    cases = ET.parse(junit).getroot().iter("testcase")
    assert len(list(cases)) >= 6


def test_user_spawns_through_form_and_runs_5x4(up_stack):
    hub, token = user_session(up_stack, USER)
    # The default server, started through the API with a profile, as the form would post.
    hub.api("POST", f"users/{escape_path(USER)}/server", json={"profile": "medium"}, ok=(201, 202))
    hub.wait_ready(USER, "", time.monotonic() + 180)
    url = hub.server_url(USER)
    assert run_5x4(url, token) == "20"
    client = docker.from_env()
    c = client.containers.get(container_name(up_stack.project, USER, ""))
    assert c.labels["hubdeploy.profile"] == "medium"
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    assert env["HDT_PROFILE"] == "medium"
    assert c.attrs["HostConfig"]["Memory"] == 2 * 1024**3
    # The server runs as the user's own account (identity auto): has@ is not a POSIX
    # name, so the account is u<uid>, and its home in the homes volume is its own.
    uid, gid = (int(x) for x in c.attrs["Config"]["User"].split(":"))
    assert uid >= 20000 and env["USER"] == f"u{uid}" and env["HOME"] == f"/home/u{uid}"
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert mounts["/home"]["Name"] == f"{up_stack.project}-homes"
    rc, out = c.exec_run(["sh", "-c", "touch ~/probe && stat -c '%u %a' ~ && id -un"], user=f"{uid}:{gid}")
    assert rc == 0 and out.decode().split() == [str(uid), "700", f"u{uid}"], out
    state.update(token=token, url=url, container=c.id)


def _need_server(stack):
    if "url" not in state:
        test_user_spawns_through_form_and_runs_5x4(stack)
    return state["url"], state["token"]


def test_up_again_changes_nothing(up_stack):
    url, token = _need_server(up_stack)
    before = up_stack.container_ids()
    proc = up_stack.cli("up", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["built"] == [] and result["changed_files"] == []
    assert up_stack.container_ids() == before
    assert run_5x4(url, token) == "20"


def test_hub_restart_keeps_notebook(up_stack):
    url, token = _need_server(up_stack)
    client = docker.from_env()
    hub = client.containers.get(up_stack.container_ids()["hub"])
    hub.restart(timeout=20)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not up_stack.status()["healthy"]:
        time.sleep(1)
    assert up_stack.status()["healthy"]
    assert client.containers.get(state["container"]).status == "running"
    assert run_5x4(url, token) == "20"
    # The hub still knows the server is running (it did not clean it up on restart).
    admin = HubClient(up_stack.url)
    admin.login(USER, "")
    assert admin.server_model(USER, "")["ready"] is True


def test_proxy_restart_restores_routes_within_seconds(up_stack):
    url, token = _need_server(up_stack)
    client = docker.from_env()
    client.containers.get(up_stack.container_ids()["proxy"]).restart(timeout=10)
    # Without hubdeploy's route keeper, JupyterHub re-adds routes only every 5 minutes:
    # a minute is generous for a 5-second check and far from that.
    seconds = _wait_api(url, token, limit=60)
    print(f"routes back {seconds:.1f} s after the proxy restarted")
    assert run_5x4(url, token) == "20"


def test_changed_site_recreates_only_what_changed(up_stack):
    url, token = _need_server(up_stack)
    before = up_stack.container_ids()
    up_stack.write_site(culler_timeout=up_stack.culler_timeout + 60)
    proc = up_stack.cli("up", "--json")
    assert proc.returncode == 0, proc.stderr
    after = up_stack.container_ids()
    assert after["idle-culler"] != before["idle-culler"]
    assert after["hub"] == before["hub"] and after["proxy"] == before["proxy"]
    assert after["engine-proxy"] == before["engine-proxy"]
    assert run_5x4(url, token) == "20"


def test_secrets_never_leak(up_stack):
    _need_server(up_stack)
    values = up_stack.secrets()
    assert len(values) >= 4
    places = {
        "compose.yaml": (up_stack.state / "rendered" / "compose.yaml").read_text(),
        "status --json": up_stack.cli("status", "--json").stdout,
        "logs": up_stack.cli("logs", "--tail", "all").stdout,
    }
    client = docker.from_env()
    for c in client.containers.list(all=True, filters={"label": "hubdeploy.site=hdtstack"}):
        places[f"inspect {c.name}"] = json.dumps(c.attrs)
        places[f"argv {c.name}"] = json.dumps(c.top().get("Processes") or [])
    for where, text in places.items():
        for v in values:
            assert v not in text, f"a secret appears in {where}"
    mode = (up_stack.state / "secrets").stat().st_mode & 0o777
    assert mode == 0o700


def test_port_taken_is_a_clear_error_and_starts_nothing(tmp_path):
    from stackfixture import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        site = tmp_path / "site.yaml"
        site.write_text(
            f"name: hdtport\npublic: {{port: {port}}}\nprofiles: [{{name: a, image: base}}]\n"
        )
        proc = run_cli(site, "up", timeout=120)
    assert proc.returncode == 1
    assert f"port {port}" in proc.stderr and "already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".hubdeploy").exists()
    client = docker.from_env()
    assert not client.containers.list(all=True, filters={"name": "hubdeploy-hdtport"})


def test_no_engine_is_a_clear_error(tmp_path):
    from stackfixture import run_cli

    site = tmp_path / "site.yaml"
    site.write_text("name: hdtnoengine\nprofiles: [{name: a, image: base}]\n")
    for cmd in (["up"], ["status"], ["down"], ["orphans", "list"]):
        proc = run_cli(site, *cmd, env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}, timeout=60)
        assert proc.returncode == 1, (cmd, proc.stderr)
        assert "cannot reach the Docker engine" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_down_without_rendered_files_still_removes_the_stack(up_stack, tmp_path):
    """A new checkout or a deleted state directory: `down` still finds the project's
    containers (by rendering the same files again) instead of leaving them running."""
    from stackfixture import run_cli

    from hubdeploy.ops import engine

    client = docker.from_env()
    image = client.containers.list(filters={"name": f"{up_stack.project}-proxy"})[0].image.tags[0]
    project = "hubdeploy-hdtdown"
    other = tmp_path / "elsewhere.yaml"  # the stack as another checkout started it
    other.write_text(f"services:\n  hub:\n    image: {image}\n    entrypoint: [sleep]\n    command: ['600']\n")
    engine.compose(project, other, ["up", "-d"], capture=True)
    try:
        site = tmp_path / "site.yaml"
        site.write_text("name: hdtdown\nprofiles: [{name: a, image: base}]\n")
        proc = run_cli(site, "down", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}) == []
    finally:
        engine.compose(project, other, ["down", "--timeout", "1"], capture=True, check=False)


def test_down_leaves_no_container(up_stack):
    _need_server(up_stack)
    client = docker.from_env()
    proc = up_stack.cli("down", "--json")
    assert proc.returncode == 0, proc.stderr
    assert client.containers.list(all=True, filters={"name": up_stack.project}) == []
    # Data is kept: the hub database (and the accounts allocated) and the homes survive
    # a plain down.
    assert client.volumes.get(f"{up_stack.project}-hub-data")
    assert client.volumes.get(f"{up_stack.project}-homes")
    proc = up_stack.cli("down", "--volumes", "--json")
    assert proc.returncode == 0, proc.stderr
    # The shared data volume is the site's data, not the stack's: it stays.
    leftover = [v.name for v in client.volumes.list()
                if v.name.startswith(up_stack.project) and not v.name.endswith("-shared")]
    assert leftover == []
    state.clear()
