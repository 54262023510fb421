"""orchestrator: swarm end to end on a real single-node swarm: the stack's own services
(hub, proxy, engine proxy) are swarm services deployed with ``docker stack deploy``, with
swarm secrets and configs on overlay networks; login-node servers are swarm services the
hub starts, the proxy reaches over the overlay network, a hub restart keeps, ``down``
removes; the same site file switched back to compose still works.

The engine is a swarm manager for the session (conftest ``swarm_manager``).
"""

from __future__ import annotations

import json
import os
import time

import pytest
from stackfixture import REACH_DEF, diagnostics, free_port, run_5x4, run_cli, tear_down_site, user_session

from hubdeploy.ops import engine
from hubdeploy.smoke.hubclient import SpawnFailed
from hubdeploy.smoke.kernel import ServerClient

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_SWARM_SITE", "hdtswarm")
PROJECT = f"hubdeploy-{SITE}"
SITE_YAML = """\
name: {name}
public: {{host: {host}, port: {port}}}
orchestrator: {orchestrator}
hub:
  authenticator: {{class: dummy}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
profiles:
  - {{name: login, image: base, default: true, memory: 1G{placement}}}
  - {{name: nowhere, image: base, memory: 1G{nowhere}}}
"""
# What every jupyterhub-singleuser prints as it starts.
STARTUP = "is running at"
SWARM_ONLY = {"placement": ", placement: {spread: [node.labels.rack]}, reserve: {cpu: 0.1, memory: 64M}",
              "nowhere": ", placement: {constraints: [node.labels.role==no-such-role]}"}


def write_site(path, port: int, orchestrator: str) -> None:
    extra = SWARM_ONLY if orchestrator == "swarm" else {"placement": "", "nowhere": ""}
    # A swarm publishes on every address; compose keeps to loopback.
    host = "0.0.0.0" if orchestrator == "swarm" else "127.0.0.1"
    path.write_text(SITE_YAML.format(name=SITE, port=port, host=host, orchestrator=orchestrator, **extra))


def up(site_file) -> None:
    proc = run_cli(site_file, "up")
    if proc.returncode != 0:
        raise AssertionError(f"up failed\n{proc.stdout}\n{proc.stderr}\n{diagnostics(f'hubdeploy-{SITE}')}")


@pytest.fixture(scope="module")
def swarm_site(tmp_path_factory, client, swarm_manager):
    site_file = tmp_path_factory.mktemp("swarmsite") / "site.yaml"
    port = free_port()
    write_site(site_file, port, "swarm")
    run_cli(site_file, "down", "--volumes", timeout=300)  # an interrupted earlier run's leftovers
    try:
        up(site_file)
        yield {"file": site_file, "port": port, "url": f"http://127.0.0.1:{port}/"}
    finally:
        tear_down_site(site_file, SITE)


class _Url:
    def __init__(self, url):
        self.url = url


def services_of(client, user: str) -> list:
    return client.services.list(filters={"label": [f"hubdeploy.site={SITE}", f"hubdeploy.user={user}"]})


def test_the_stack_is_swarm_services_with_swarm_secrets(swarm_site, client):
    """hub, proxy and engine proxy are services of the stack, each with its health check,
    restart and update policy, on this manager; the secrets are swarm secrets that no
    rendered file holds; the networks are overlay networks; nothing runs under compose."""
    node = client.info()["Swarm"]["NodeID"]
    services = {s.name: s for s in client.services.list(filters={"label": f"com.docker.stack.namespace={PROJECT}"})}
    assert set(services) == {f"{PROJECT}_{n}" for n in ("hub", "proxy", "engine-proxy")}
    for svc in services.values():
        spec = svc.attrs["Spec"]
        task = spec["TaskTemplate"]
        assert task["ContainerSpec"]["Healthcheck"]["Test"][0] == "CMD", svc.name
        assert task["RestartPolicy"]["Condition"] == "any"
        assert spec["UpdateConfig"]["Order"] == "stop-first"
        assert task["Placement"]["Constraints"] == [f"node.id == {node}"]
        assert task["ContainerSpec"]["CapabilityDrop"] == ["ALL"]
        assert [t["Status"]["State"] for t in svc.tasks(filters={"desired-state": "running"})] == ["running"]
    assert not client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
    hub_secrets = services[f"{PROJECT}_hub"].attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert {s["File"]["Name"] for s in hub_secrets} >= {"cookie_secret", "proxy_token"}
    assert all(s["File"]["Mode"] == 0o400 for s in hub_secrets)
    swarm_secrets = {s.name for s in client.secrets.list(filters={"label": f"com.docker.stack.namespace={PROJECT}"})}
    assert f"{PROJECT}-cookie_secret" in swarm_secrets
    state = swarm_site["file"].parent / ".hubdeploy"
    cookie = (state / "secrets" / "cookie_secret").read_bytes().strip()
    for path in (state / "rendered").rglob("*"):
        if path.is_file():
            assert cookie not in path.read_bytes(), path
    nets = {n.name: n.attrs for n in client.networks.list(filters={"label": f"com.docker.stack.namespace={PROJECT}"})}
    assert {a["Driver"] for a in nets.values()} == {"overlay"}
    assert nets[f"{PROJECT}-internal"]["Internal"] is True
    status = json.loads(run_cli(swarm_site["file"], "status", "--json").stdout)
    assert status["healthy"] is True, status
    assert {s["service"] for s in status["services"]} == {"hub", "proxy", "engine-proxy"}
    logs = run_cli(swarm_site["file"], "logs", "hub", "--tail", "20")
    assert logs.returncode == 0 and "JupyterHub" in logs.stdout, logs.stdout[-2000:] + logs.stderr


def test_login_server_is_a_swarm_service_and_survives_a_hub_restart(swarm_site, client):
    hub, token = user_session(_Url(swarm_site["url"]), "erin")
    hub.api("POST", "users/erin/server", json={"profile": "login"}, ok=(201, 202))
    hub.wait_ready("erin", "", time.monotonic() + 180)
    url = hub.server_url("erin")
    assert run_5x4(url, token) == "20"
    (svc,) = services_of(client, "erin")
    limits = svc.attrs["Spec"]["TaskTemplate"]["Resources"]
    assert limits["Reservations"] == {"NanoCPUs": 10**8, "MemoryBytes": 64 * 2**20}
    assert limits["Limits"]["MemoryBytes"] == 2**30

    kernel = ServerClient(url, token)
    kid = kernel.start_kernel("python3")
    try:
        out, error = kernel.execute(kid, "import getpass,os; print(getpass.getuser(), os.getuid() != 0)", timeout=60)
        assert error is None, error
        assert out.split() == ["erin", "True"]
    finally:
        kernel.delete_kernel(kid)

    # The hub restarts (swarm replaces its task); the service and its route stay, and the
    # hub still knows the server.
    (before,) = engine.service_containers(client, PROJECT, "hub")
    client.services.get(f"{PROJECT}_hub").force_update()
    deadline = time.monotonic() + 300  # a loaded 2-core machine takes a minute to start the hub
    # force_update returns at once: wait for the new task's container to be healthy.
    while time.monotonic() < deadline:
        now = engine.service_containers(client, PROJECT, "hub")
        if now and now[0].id != before.id and (now[0].attrs["State"].get("Health") or {}).get("Status") == "healthy":
            break
        time.sleep(1)
    while time.monotonic() < deadline:
        try:
            if (hub.server_model("erin", "") or {}).get("ready"):
                break
        except Exception:  # noqa: BLE001 - the hub is still starting
            pass
        time.sleep(1)
    assert (hub.server_model("erin", "") or {}).get("ready")
    assert [s.id for s in services_of(client, "erin")] == [svc.id]
    assert run_5x4(url, token) == "20"

    # The hub's health check may still be catching up after its restart (exit 1 then).
    status = json.loads(run_cli(swarm_site["file"], "status", "--json").stdout)
    (row,) = [s for s in status["servers"] if s["id"] == svc.id]
    assert (row["backend"], row["owner"], row["state"]) == ("swarm", "erin", "running")
    # Its own log, found as status finds it: the task's container's (this engine is the node).
    logs = run_cli(swarm_site["file"], "logs", "--user", "erin", "--tail", "all")
    assert logs.returncode == 0, logs.stderr
    assert STARTUP in logs.stdout and "/user/erin/" in logs.stdout, logs.stdout[-2000:]

    hub.stop_server("erin", "", time.monotonic() + 120, remove=False)
    assert services_of(client, "erin") == []


SWARM_ATTACK = "import json, os, subprocess, urllib.request, urllib.error\n" + REACH_DEF + """\
def run(*argv):
    p = subprocess.run(list(argv), input="", capture_output=True, text=True, timeout=60)
    return [p.returncode, (p.stdout + p.stderr)[-200:]]
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
def http(url):
    req = urllib.request.Request(url, headers={{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}})
    try:
        return urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as exc:
        return exc.code
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
out = {{k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")}}
out["uid"] = os.getuid()
# Unreadable directories (other users' homes are not on / here) only print to stderr.
out["setuid_files"] = subprocess.run(["find", "/", "-xdev", "-type", "f", "-perm", "/6000"],
                                     capture_output=True, text=True, timeout=120).stdout.split()
out["su"] = run("su", "-c", "id -u", "root")
out["sockets"] = [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]
out["reach"] = {{f"{{h}}:{{p}}": reach(h, p) for h, p in
                [("hub", 8081), ("proxy", 8001), ("proxy-api", 8001), ("engine-proxy", 2375)]}}
out["list_their_home"] = os.access("/home/{other}", os.R_OK)
out["write_their_home"] = writable("/home/{other}/planted.txt")
out["write_homes_root"] = writable("/home/planted.txt")
out["their_server"] = http("http://{other_host}:8888/user/{other}/api/contents")
out["own_server"] = http("http://127.0.0.1:8888/user/{me}/api/contents")
print(json.dumps(out))
"""


def test_a_swarm_kernel_gains_no_privilege_and_reaches_nothing_of_another_user(swarm_site, client):
    """From ivy's kernel in her swarm service, everything that must stay jack's or the
    stack's: no capability, no setuid program to gain one (swarm sets no
    no-new-privileges), no engine, no proxy API, jack's home closed, and jack's server,
    which her network reaches, refuses her token."""
    sessions = {}
    for user in ("ivy", "jack"):
        hub, token = user_session(_Url(swarm_site["url"]), user)
        hub.api("POST", f"users/{user}/server", json={"profile": "login"}, ok=(201, 202))
        sessions[user] = (hub, token)
    for user, (hub, _) in sessions.items():
        hub.wait_ready(user, "", time.monotonic() + 180)
    (jack_svc,) = services_of(client, "jack")
    (jack_host,) = jack_svc.attrs["Spec"]["TaskTemplate"]["Networks"][0]["Aliases"]
    hub, token = sessions["ivy"]
    kernel = ServerClient(hub.server_url("ivy"), token, request_timeout=120)
    kid = kernel.start_kernel("python3")
    try:
        out, error = kernel.execute(kid, SWARM_ATTACK.format(me="ivy", other="jack", other_host=jack_host),
                                    timeout=120)
    finally:
        kernel.delete_kernel(kid)
    assert error is None, error
    got = json.loads(out.strip().splitlines()[-1])
    zero = "0" * 16
    assert (got["CapEff"], got["CapPrm"], got["CapBnd"], got["CapAmb"]) == (zero,) * 4, got
    assert got["uid"] != 0 and got["setuid_files"] == [], got
    assert got["su"][0] != 0, got
    assert got["sockets"] == [], got
    assert got["reach"]["hub:8081"] == "open", got  # the same probe can succeed
    assert all(v != "open" for k, v in got["reach"].items() if k != "hub:8081"), got
    assert not (got["list_their_home"] or got["write_their_home"] or got["write_homes_root"]), got
    assert got["own_server"] == 200 and got["their_server"] == 403, got
    for user, (hub, _) in sessions.items():
        hub.stop_server(user, "", time.monotonic() + 120, remove=False)


def test_unplaceable_profile_fails_with_swarms_reason(swarm_site, client):
    hub, _ = user_session(_Url(swarm_site["url"]), "frank")
    with pytest.raises(SpawnFailed, match=r"no suitable node \(scheduling constraints not satisfied"):
        hub.start_server("frank", "far", "nowhere")
        hub.wait_ready("frank", "far", time.monotonic() + 120)
    assert services_of(client, "frank") == []


def test_up_after_the_swarm_was_remade_moves_the_services_here(swarm_site, client):
    """A recorded node the swarm does not know (the swarm was left and made again): the
    stack's volumes are on this engine, so up places the services on this manager."""
    recorded = swarm_site["file"].parent / ".hubdeploy" / "swarm-node"
    here = client.info()["Swarm"]["NodeID"]
    assert recorded.read_text().strip() == here
    recorded.write_text("nosuchnode0000000000000000\n")
    proc = run_cli(swarm_site["file"], "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the swarm has no node nosuchnode" in proc.stderr
    assert recorded.read_text().strip() == here
    hub = client.services.get(f"{PROJECT}_hub")
    assert hub.attrs["Spec"]["TaskTemplate"]["Placement"]["Constraints"] == [f"node.id == {here}"]
    # up returns once every service runs its present spec: the hub answers at once, also
    # when this deploy replaced a hub task (a spec rewritten by the restart test's
    # force_update is deployed back).
    session(swarm_site, "hank")


def test_up_returns_once_swarm_replaced_a_changed_services_task(swarm_site, client):
    """A changed hub (its memory limit): swarm replaces its task a moment after the
    deploy, stop-first; up returns only when the new task is healthy and no update runs,
    so the hub answers at once. An unchanged stack is not deployed again."""
    (before,) = engine.service_containers(client, PROJECT, "hub")
    site_file = swarm_site["file"]
    site_file.write_text(site_file.read_text() + "limits:\n  hub: {memory: 1536M, cpus: 2, pids: 2048}\n")
    proc = run_cli(site_file, "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    running = engine.service_containers(client, PROJECT, "hub")
    assert [c.id for c in running] != [before.id] and len(running) == 1, running
    assert running[0].attrs["HostConfig"]["Memory"] == 1536 * 2**20
    assert (running[0].attrs["State"].get("Health") or {}).get("Status") == "healthy"
    session(swarm_site, "iris")
    assert client.services.get(f"{PROJECT}_hub").attrs["UpdateStatus"]["State"] == "completed"

    proc = run_cli(site_file, "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c.id for c in engine.service_containers(client, PROJECT, "hub")] == [running[0].id]


def test_up_refuses_a_recorded_node_the_swarm_lacks_without_the_data(tmp_path, client, swarm_manager):
    """No volumes of the stack here: the data may be on the machine that recorded the node,
    so up refuses before anything is written or started."""
    name = f"{SITE}x"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(SITE_YAML.format(name=name, port=free_port(), host="0.0.0.0", orchestrator="swarm",
                                          placement="", nowhere=""))
    state = tmp_path / ".hubdeploy"
    state.mkdir()
    (state / "swarm-node").write_text("nosuchnode0000000000000000\n")
    proc = run_cli(site_file, "up")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "which this swarm does not have" in proc.stderr and str(state / "swarm-node") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (state / "rendered").exists() and not (state / "secrets").exists()
    assert client.services.list(filters={"label": f"com.docker.stack.namespace=hubdeploy-{name}"}) == []


def session(swarm_site, user: str):
    """user_session, with the stack's containers and logs when the hub does not answer."""
    try:
        return user_session(_Url(swarm_site["url"]), user)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{diagnostics(PROJECT)}") from None


def test_down_removes_services_and_compose_still_works(swarm_site, client):
    hub, token = session(swarm_site, "gwen")
    hub.api("POST", "users/gwen/server", json={"profile": "login"}, ok=(201, 202))
    hub.wait_ready("gwen", "", time.monotonic() + 180)
    assert services_of(client, "gwen")

    run_cli(swarm_site["file"], "down", check=True, timeout=300)
    assert services_of(client, "gwen") == []
    assert client.configs.list(filters={"label": f"hubdeploy.site={SITE}"}) == []
    namespace = {"label": f"com.docker.stack.namespace={PROJECT}"}
    assert client.services.list(filters=namespace) == []
    assert client.secrets.list(filters=namespace) == [] and client.configs.list(filters=namespace) == []
    assert not client.networks.list(names=[f"hubdeploy-{SITE}-users"])
    assert client.volumes.list(filters={"name": f"hubdeploy-{SITE}-hub-data"})  # kept without --volumes

    # The same site file with orchestrator: compose: login servers are containers again.
    write_site(swarm_site["file"], swarm_site["port"], "compose")
    up(swarm_site["file"])
    hub, token = session(swarm_site, "gwen")
    hub.api("POST", "users/gwen/server", json={"profile": "login"}, ok=(201, 202))
    hub.wait_ready("gwen", "", time.monotonic() + 180)
    assert run_5x4(hub.server_url("gwen"), token) == "20"
    assert services_of(client, "gwen") == []
    assert client.containers.list(filters={"label": [f"hubdeploy.site={SITE}", "hubdeploy.user=gwen"]})
