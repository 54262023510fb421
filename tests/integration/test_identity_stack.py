"""Every user's servers run as their own POSIX account, proven from inside their kernels.

Site ``hdtident`` (identity ``auto``, the default) with a Slurm cluster of one node, so
that two users' compute jobs share it: carol and dave each run a login-node and a
compute-node server. From carol's kernels, everything that must stay dave's is tried:
his job (srun --overlap, scancel, scontrol update), his processes' environments (his
server's API token), his home, and the image's environment. Then the good paths: her
files are hers on the homes volume, survive a restart, and her compute server reads
what her login server wrote.
"""

from __future__ import annotations

import json
import os
import secrets
import time

import docker
import docker.errors
import pytest
from slurmstack import SlurmStack, running
from stackfixture import user_session

from hubdeploy.smoke.kernel import ServerClient

pytestmark = pytest.mark.integration

# Another value (HUBDEPLOY_TEST_IDENT_SITE) lets two sessions share one engine.
SITE = os.environ.get("HUBDEPLOY_TEST_IDENT_SITE", "hdtident")
SITE_YAML = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  authenticator: {{class: dummy}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
slurm:
  cluster: {{nodes: 1, cpus: 4, memory: 3G, max_time: "2:00:00"}}
profiles:
  - {{name: login, image: base, default: true, memory: 1G}}
  - {{name: compute, image: base, node: compute, cpu: 1, memory: 512M, slurm: {{time: "30"}}}}
"""
USERS = ("carol", "dave")
servers: dict = {}


@pytest.fixture(scope="module")
def ident_stack(tmp_path_factory):
    stack = SlurmStack(tmp_path_factory.mktemp("identstack"), SITE, SITE_YAML, squeue_format="%T %u %N")
    with running(stack, ["c1"]) as s:
        yield s


def run_py(url: str, token: str, code: str) -> dict:
    """Run ``code`` in a python3 kernel of the server; it must print one JSON line."""
    client = ServerClient(url, token)
    kid = client.start_kernel("python3")
    try:
        out, error = client.execute(kid, code, timeout=120)
        assert error is None, error
        return json.loads(out.strip().splitlines()[-1])
    finally:
        client.delete_kernel(kid)


def _servers(stack) -> dict:
    """carol's and dave's login-node ('') and compute-node ('cpu') servers, started once."""
    if servers:
        return servers
    for user in USERS:
        hub, token = user_session(stack, user)
        hub.api("POST", f"users/{user}/server", json={"profile": "login"}, ok=(201, 202))
        hub.api("POST", f"users/{user}/servers/cpu", json={"profile": "compute"}, ok=(201, 202))
        for name in ("", "cpu"):
            hub.wait_ready(user, name, time.monotonic() + 240)
        servers[user] = {"hub": hub, "token": token, "login": hub.server_url(user), "cpu": hub.server_url(user, "cpu")}
    jobs = stack.jobs()
    for user in USERS:
        (job,) = [j for j, desc in jobs.items() if desc.split()[1] == run_py(
            servers[user]["login"], servers[user]["token"], "import json,getpass;print(json.dumps(getpass.getuser()))")]
        servers[user]["job"] = job
    return servers


WHO = "import json,os,pwd;print(json.dumps([os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name, " \
      "os.environ['HOME'], os.getcwd()]))"


def test_every_server_runs_as_its_users_own_account(ident_stack):
    s = _servers(ident_stack)
    seen = {}
    for user in USERS:
        login = run_py(s[user]["login"], s[user]["token"], WHO)
        cpu = run_py(s[user]["cpu"], s[user]["token"], WHO)
        assert login == cpu, (login, cpu)  # the same account on a login node and a compute node
        uid, gid, name, home, cwd = login
        assert uid >= 20000 and name == user and home == cwd == f"/home/{user}"
        seen[user] = uid
    assert seen["carol"] != seen["dave"]


ATTACK = """\
import glob, json, os, subprocess
def rc(*argv):
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:  # a login node has no Slurm commands
        return [127, "not found"]
    return [p.returncode, (p.stdout + p.stderr)[-300:]]
out = {{
    "srun": rc("srun", "--jobid={job}", "--overlap", "-N1", "-n1", "cat", "/proc/self/environ"),
    "scontrol": rc("scontrol", "update", "JobId={job}", "Comment=mine"),
    "scancel": rc("scancel", "{job}"),
    "squeue": rc("squeue", "-h", "-o", "%i %u"),
}}
theirs, readable = 0, []
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        if os.stat(os.path.dirname(path)).st_uid != {uid}:
            continue
    except OSError:
        continue
    theirs += 1
    try:
        readable.append(open(path, "rb").read()[:100].decode(errors="replace"))
    except OSError:
        pass
out["their_processes"], out["readable_environ"] = theirs, readable
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
out["write_their_home"] = writable("{home}/planted.txt")
out["list_their_home"] = os.access("{home}", os.R_OK)
out["write_venv"] = writable("/opt/venv/lib/planted.py")
print(json.dumps(out))
"""


def test_carol_cannot_touch_daves_job_processes_home_or_the_image(ident_stack):
    s = _servers(ident_stack)
    dave_uid = run_py(s["dave"]["cpu"], s["dave"]["token"], WHO)[0]
    code = ATTACK.format(job=s["dave"]["job"], uid=dave_uid, home="/home/dave")
    for where in ("cpu", "login"):
        got = run_py(s["carol"][where], s["carol"]["token"], code)
        assert got["write_their_home"] is False and got["list_their_home"] is False, got
        assert got["write_venv"] is False, got
        if where == "cpu":
            # Slurm refuses every way into, or onto, another user's job.
            for key in ("srun", "scontrol", "scancel"):
                assert got[key][0] != 0, (key, got[key])
            assert s["dave"]["token"] not in json.dumps(got)
            # Both jobs share the node, so dave's processes are there, but closed.
            assert got["their_processes"] > 0 and got["readable_environ"] == [], got
            # PrivateData=jobs: carol's squeue lists only her own jobs.
            owners = {line.split()[1] for line in got["squeue"][1].splitlines() if line.strip()}
            assert owners == {"carol"}, got["squeue"]
    # dave's server is untouched: running, reachable, his comment unchanged.
    assert ident_stack.jobs()[s["dave"]["job"]].startswith("RUNNING dave")
    assert run_py(s["dave"]["cpu"], s["dave"]["token"], WHO)[2] == "dave"


FILES = """\
import json, os
path = os.path.expanduser("~/from-login.txt")
if {write}:
    open(path, "w").write("carol's notes")
st = os.stat(path)
print(json.dumps([open(path).read(), st.st_uid, oct(st.st_mode & 0o777), oct(os.stat(os.path.expanduser("~")).st_mode & 0o777)]))
"""


def test_her_files_are_hers_survive_a_restart_and_follow_her_to_compute_nodes(ident_stack):
    s = _servers(ident_stack)
    carol = s["carol"]
    uid = run_py(carol["login"], carol["token"], WHO)[0]
    assert run_py(carol["login"], carol["token"], FILES.format(write=True)) == ["carol's notes", uid, "0o644", "0o700"]
    # Read on the compute node: the same home on the same storage.
    assert run_py(carol["cpu"], carol["token"], FILES.format(write=False))[:2] == ["carol's notes", uid]
    # A new login server (the container is replaced) finds them again.
    hub = carol["hub"]
    hub.stop_server("carol", "", time.monotonic() + 120, remove=False)
    hub.api("POST", "users/carol/server", json={"profile": "login"}, ok=(201, 202))
    hub.wait_ready("carol", "", time.monotonic() + 120)
    assert run_py(carol["login"], carol["token"], FILES.format(write=False))[:2] == ["carol's notes", uid]
    # The uid is the same after the restart (allocated once, kept by the hub).
    assert run_py(carol["login"], carol["token"], WHO)[0] == uid


# -- the hub reaches the engine only through the engine proxy -----------------------------

FROM_HUB = """\
import json, os, sys
import docker, docker.errors
site, image, foreign, holder = sys.argv[1:5]
prefix = f"hubdeploy-{site}-"
client = docker.from_env(timeout=60)
def attempt(fn):
    try:
        fn()
        return "allowed"
    except docker.errors.APIError as exc:
        return [exc.status_code, str(exc.explanation)]
def create(name, **kw):
    return lambda: client.containers.create(image, ["id"], name=prefix + name, labels={"hubdeploy.site": site},
                                            network=prefix + "users", **kw)
print(json.dumps({
    "socket": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
    "docker_host": os.environ.get("DOCKER_HOST"),
    "privileged": attempt(create("evil-priv", privileged=True)),
    "bind_root": attempt(create("evil-root", volumes={"/": {"bind": "/host"}})),
    "foreign_inspect": attempt(lambda: client.api.inspect_container(foreign)),
    "foreign_stop": attempt(lambda: client.api.stop(foreign, timeout=1)),
    "foreign_exec": attempt(lambda: client.api.exec_create(foreign, ["id"])),
    "holder_exec": attempt(lambda: client.api.exec_create(holder, ["id"])),
    "own_servers": sorted(c.name for c in client.containers.list(filters={"label": "hubdeploy.user"})),
}))
"""
INSIDE_PROXY = """\
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
try:
    open("/planted", "w")
    writable = True
except OSError:
    writable = False
print(json.dumps({k: status[k].strip() for k in ("CapEff", "CapBnd", "NoNewPrivs")} | {"root_writable": writable}))
"""


def test_the_hub_holds_no_socket_and_its_engine_refuses_what_is_not_the_sites(ident_stack):
    """From inside the hub: no Docker socket; through DOCKER_HOST (the engine proxy) a
    privileged container, a bind of / and another site's container are all refused,
    while the docker and Slurm backends' own servers run (started through it above)."""
    s = _servers(ident_stack)
    engine = docker.from_env(timeout=120)
    hub = ident_stack.container("hub")
    holder = ident_stack.container("engine-proxy")
    # The backends' real work (four spawns, accounts, homes, sbatch, squeue) needed
    # nothing the proxy refuses.
    assert "refused" not in holder.logs().decode(errors="replace")
    foreign = engine.containers.run(hub.image.id, ["sleep", "600"], detach=True,
                                    name=f"hdte-foreign-{secrets.token_hex(4)}",
                                    labels={"hubdeploy.site": "hdteother"})
    try:
        code, out = hub.exec_run(["python3", "-c", FROM_HUB, SITE, hub.image.id, foreign.id, holder.id])
        assert code == 0, out
        got = json.loads(out.decode().strip().splitlines()[-1])
        foreign.reload()
        assert foreign.status == "running"
    finally:
        foreign.remove(force=True)
    assert got["socket"] == [] and got["docker_host"] == "tcp://engine-proxy:2375", got
    rules = {"privileged": "privileged", "bind_root": "bind", "foreign_inspect": "foreign-container",
             "foreign_stop": "foreign-container", "foreign_exec": "foreign-container", "holder_exec": "engine-holder"}
    for key, rule in rules.items():
        assert got[key][0] == 403 and f"({rule})" in got[key][1], (key, got[key])
    # The hub still lists its own notebook containers, and only those.
    assert got["own_servers"] and all(n.startswith(f"hubdeploy-{SITE}-nb-") for n in got["own_servers"]), got
    for name in ("evil-priv", "evil-root"):
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(f"hubdeploy-{SITE}-{name}")
    # Each refusal is one line of the proxy's log, with its rule.
    logs = holder.logs().decode(errors="replace")
    assert sum("refused" in line for line in logs.splitlines()) == len(rules), logs
    assert s["carol"]["token"] not in logs
    # The proxy itself: no capability, no way to gain one, a read-only root.
    code, out = holder.exec_run(["python3", "-c", INSIDE_PROXY])
    assert code == 0, out
    assert json.loads(out) == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1",
                               "root_writable": False}


def test_status_orphans_and_down_still_work(ident_stack):
    _servers(ident_stack)
    proc = ident_stack.cli("status", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = {svc["service"]: svc for svc in json.loads(proc.stdout)["services"]}
    assert services["engine-proxy"]["state"] == "running", services
    proc = ident_stack.cli("orphans", "list", "--all", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The hub lists both backends' servers (through the proxy and dexec), all its own.
    listed = json.loads(proc.stdout)
    assert {"docker", "slurm"} <= set(listed["backends"]), listed
    by_backend = {b: [r for r in listed["servers"] if r["backend"] == b] for b in ("docker", "slurm")}
    assert len(by_backend["docker"]) == len(by_backend["slurm"]) == len(USERS), listed
    assert all(r["tracked"] for r in listed["servers"]), listed
    # down asks the hub to stop every server: through the proxy, the login containers go.
    proc = ident_stack.cli("down", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    engine = docker.from_env()
    assert engine.containers.list(all=True, filters={"label": f"hubdeploy.site={SITE}"}) == []
    servers.clear()
