"""Operating one real stack: status of every backend's servers, ``logs --user``,
ownership of the stack by its site directory, and backup -> ``down --volumes`` ->
restore -> ``up`` bringing the same hub back.

Site ``hdtobak`` (HUBDEPLOY_TEST_OPS_SITE) with a one-node Slurm cluster, public port
8631 (HUBDEPLOY_TEST_OPS_PORT). The tests run in order on one module-scoped stack and
share ``state``: ann runs a login-node server and a compute-node server ``cpu``.
Three site directories: ``one`` creates the stack, ``two`` has a site file with the
same name, ``three`` receives the restore.
"""

from __future__ import annotations

import json
import os
import tarfile
import time

import docker
import pytest
import requests
from slurmstack import SlurmStack
from stackfixture import diagnostics, run_cli, tear_down_site

from hubdeploy.contract.layout import LABEL_OWNER_DIR
from hubdeploy.smoke.hubclient import HubClient
from hubdeploy.ops.userlogs import job_output

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_OPS_SITE", "hdtobak")
PORT = int(os.environ.get("HUBDEPLOY_TEST_OPS_PORT", "8631"))
PROJECT = f"hubdeploy-{SITE}"
USER = "ann"
# What every Jupyter server logs when it starts: in the container's log and the job's file.
STARTUP = "is running at"
SITE_YAML = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  admin_users: [admin]
  authenticator: {{class: dummy}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
slurm:
  cluster: {{nodes: 1, cpus: 2, memory: 2G}}
profiles:
  - {{name: login, image: base, default: true, memory: 1G}}
  - {{name: compute, image: base, node: compute, cpu: 1, memory: 512M, slurm: {{time: "30"}}}}
"""
state: dict = {}


def _site_dir(root, name):
    d = root / name
    d.mkdir()
    (d / "site.yaml").write_text(SITE_YAML.format(name=SITE, port=PORT))
    return d / "site.yaml"


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    stack = SlurmStack(root, SITE, SITE_YAML)
    stack.port, stack.url = PORT, f"http://127.0.0.1:{PORT}/"
    stack.site_file = _site_dir(root, "one")
    stack.dir = stack.site_file.parent
    state.update(root=root, two=_site_dir(root, "two"), three=root / "three" / "site.yaml")
    try:
        # An interrupted earlier run's leftovers belong to its own (gone) directory.
        stack.cli("down", "--volumes", "--take-over", timeout=300)
        proc = stack.cli("up", timeout=1800)
        assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(PROJECT)
        stack.wait("node c1 idle", lambda: stack.ctl("sinfo", "-h", "-N", "-o", "%t")[1].strip() == "idle", 120)
        yield stack
    finally:
        tear_down_site(stack.site_file, SITE)


def _servers(ops) -> dict:
    """ann's login-node server ('') and compute-node server 'cpu', started once."""
    if "job" not in state:
        hub = HubClient(ops.url, request_timeout=PATIENCE)
        hub.login(USER, "")
        token, _ = hub.create_token(USER, scopes=None, expires_in=3600)
        hub.api("POST", f"users/{USER}/server", json={"profile": "login"}, ok=(201, 202))
        hub.api("POST", f"users/{USER}/servers/cpu", json={"profile": "compute"}, ok=(201, 202))
        for name in ("", "cpu"):
            ops.wait_ready(hub, USER, name, 240)
        (job,) = ops.jobs()
        state.update(hub=hub, token=token, job=job)
    return state


# The engine is shared: under another run's load a request may wait long for the hub.
PATIENCE = 180


def _admin(ops) -> HubClient:
    admin = HubClient(ops.url, request_timeout=PATIENCE)
    try:
        admin.login("admin", "")
    except Exception:
        print(diagnostics(PROJECT))
        raise
    return admin


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_status_lists_the_compute_node_server_with_its_job(ops):
    job = _servers(ops)["job"]
    data = _json(ops.cli("status", "--json"))
    rows = {r["owner"]: r for r in data["servers"]}
    assert set(rows) == {USER, f"{USER}/cpu"}, rows
    # The hub's metrics: both servers' spawns succeeded, none is starting or waiting.
    spawns = data["spawns"]
    assert spawns["spawns"].get("success", 0) >= 2 and spawns["running"] == len(rows), spawns
    assert (spawns["starting"], spawns["waiting"]) == (0, 0), spawns
    cpu = rows[f"{USER}/cpu"]
    assert (cpu["backend"], cpu["id"], cpu["node"], cpu["state"]) == ("slurm", job, "c1", "RUNNING"), cpu
    assert rows[USER]["backend"] == "docker" and rows[USER]["state"] == "running", rows[USER]
    table = ops.cli("status").stdout
    assert job in table and "c1" in table and "RUNNING" in table, table
    assert f"{spawns['spawns']['success']} success" in table and "0 starting, 0 waiting" in table, table


def test_logs_user_of_a_login_node_server(ops):
    _servers(ops)
    proc = ops.cli("logs", "--user", USER)
    assert proc.returncode == 0, proc.stderr
    assert STARTUP in proc.stdout, proc.stdout


def test_logs_user_of_a_compute_node_server_is_its_job_output(ops):
    job = _servers(ops)["job"]
    proc = ops.cli("logs", "--user", USER, "--server", "cpu", "--tail", "all")
    assert proc.returncode == 0, proc.stderr
    assert STARTUP in proc.stdout, proc.stdout
    # The file is its user's alone: the directory 0700, and another uid cannot read it.
    node = ops.container("slurm-c1")
    code, shown = ops.ctl("scontrol", "show", "job", "-o", job)
    assert code == 0, shown
    path = job_output(shown)["path"]
    assert path.endswith(f"/{USER}/.hubdeploy/logs/slurm-{job}.log"), path
    out = node.exec_run(["stat", "-c", "%U %a", os.path.dirname(path), path]).output.decode().split("\n")
    assert out[0] == f"{USER} 700", out
    assert out[1].startswith(f"{USER} "), out
    other = node.exec_run(["cat", path], user="65534:65534")
    assert other.exit_code != 0 and b"Permission denied" in other.output, other.output


@pytest.mark.parametrize("args, words", [
    (["--user", "nobody-here"], "of user 'nobody-here': the user is unknown or has no running server"),
    (["--user", USER, "--server", "gpu"], "no running server 'gpu' of user 'ann'; theirs: the default server, --server cpu"),
])
def test_logs_user_of_an_unknown_server(ops, args, words):
    _servers(ops)
    proc = ops.cli("logs", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert words in " ".join(proc.stderr.split()), proc.stderr


def _started(client) -> dict[str, tuple[str, str]]:
    return {c.name: (c.id, c.attrs["State"]["StartedAt"])
            for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})}


def test_another_directory_with_the_same_name_is_refused(ops):
    _servers(ops)
    client = docker.from_env()
    before = _started(client)
    two = state["two"]
    for cmd in (["up"], ["down"], ["down", "--volumes"]):
        proc = run_cli(two, *cmd, timeout=300)
        assert proc.returncode == 1, (cmd, proc.stdout, proc.stderr)
        said = " ".join(proc.stderr.split())
        assert str(ops.site_file.parent) in said and "--take-over" in said, said
    # Nothing done: not a file in the second directory, no container recreated.
    assert sorted(p.name for p in two.parent.iterdir()) == ["site.yaml"]
    assert _started(client) == before
    assert ops.jobs()[state["job"]].startswith("RUNNING"), ops.jobs()


def test_backup_is_one_private_archive_without_secrets_in_its_output(ops):
    s = _servers(ops)
    admin = _admin(ops)
    admin.api("POST", "groups/team", json={"users": [USER]}, ok=(201,))
    archive = state["root"] / "hub.tar.gz"
    t0 = time.monotonic()
    proc = ops.cli("backup", "-o", str(archive), "--json")
    print(f"backup in {time.monotonic() - t0:.1f} s")
    report = _json(proc)
    print(f"archive: {report['bytes']} bytes, {len(report['members'])} files")
    assert archive.stat().st_mode & 0o777 == 0o600
    assert {"database/jupyterhub.sqlite", "secrets/cookie_secret", "site/site.yaml",
            "hub-data/hubdeploy-identities.json"} <= set(report["members"]), report
    for value in [p.read_text().strip() for p in (ops.dir / ".hubdeploy" / "secrets").iterdir() if p.is_file()]:
        assert value not in proc.stdout + proc.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert (manifest["format"], manifest["version"], manifest["site"]) == ("hubdeploy-backup", 1, SITE)
    state["archive"] = archive
    assert s["token"]


def test_restore_after_down_volumes_brings_the_same_hub_back(ops):
    token, archive, three = state["token"], state["archive"], state["three"]
    proc = ops.cli("down", "--volumes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = docker.from_env()
    assert not client.volumes.list(filters={"name": f"{PROJECT}-hub-data"})

    t0 = time.monotonic()
    proc = run_cli(None, "restore", str(archive), "--site", str(three), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"restore in {time.monotonic() - t0:.1f} s")
    # A second restore would overwrite what the first wrote: refused, nothing changed.
    again = run_cli(None, "restore", str(archive), "--site", str(three), timeout=300)
    assert again.returncode == 1 and "--force" in again.stderr, again.stderr
    secrets = three.parent / ".hubdeploy" / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    assert (secrets / "cookie_secret").read_bytes() == (ops.dir / ".hubdeploy" / "secrets" / "cookie_secret").read_bytes()
    assert (secrets / "cookie_secret").stat().st_mode & 0o777 == 0o600

    proc = run_cli(three, "up", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(PROJECT)
    me = requests.get(f"{ops.url}hub/api/user", headers={"Authorization": f"token {token}"}, timeout=PATIENCE)
    assert me.status_code == 200 and me.json()["name"] == USER, me.text
    admin = _admin(ops)
    ann = admin.api("GET", f"users/{USER}", params={"include_stopped_servers": "1"}).json()
    assert ann["groups"] == ["team"], ann
    assert set(ann["servers"]) == {"", "cpu"}, ann["servers"]
    assert not any(s["ready"] or s["pending"] for s in ann["servers"].values()), ann["servers"]
    # The restored named server starts again, on the new cluster.
    admin.api("POST", f"users/{USER}/servers/cpu", json={"profile": "compute"}, ok=(201, 202))
    ops.wait_ready(admin, USER, "cpu", 240)


def test_take_over(ops):
    """The restored stack is the third directory's: the first is refused until it takes
    the stack over (services recreated with its files and labels; its secrets are the same)."""
    proc = ops.cli("up")
    assert proc.returncode == 1 and str(state["three"].parent) in " ".join(proc.stderr.split()), proc.stderr
    proc = ops.cli("up", "--take-over")
    assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(PROJECT)
    client = docker.from_env()
    owners = {c.labels.get(LABEL_OWNER_DIR) for c in client.containers.list(
        filters={"label": [f"com.docker.compose.project={PROJECT}", "com.docker.compose.service=hub"]})}
    assert owners == {str(ops.site_file.parent)}, owners
    me = requests.get(f"{ops.url}hub/api/user", headers={"Authorization": f"token {state['token']}"}, timeout=PATIENCE)
    assert me.status_code == 200, me.text
    assert run_cli(state["three"], "down").returncode == 1
