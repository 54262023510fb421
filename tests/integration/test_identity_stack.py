"""Every user's servers run as their own POSIX account, proven from inside their kernels.

Site ``hdtident`` (identity ``auto``, the default) with a Slurm cluster of one node, so
that two users' compute jobs share it: carol and dave each run a login-node and a
compute-node server. From carol's kernels, everything that must stay dave's is tried:
his job (srun --overlap, scancel, scontrol update), his processes' environments (his
server's API token), his home, and the image's environment. Then the good paths: her
files are hers on the homes volume, survive a restart, and her compute server reads
what her login server wrote.

The same stack proves least privilege (issue #10, compose/README.md): a login-node
kernel holds no capability, cannot gain one, reaches no Slurm daemon and cannot fork past
its pids limit while the hub and dave's server keep answering; every service's main
process holds only its documented capabilities; a compute job over its --mem is killed.

And that an sbatch from a notebook gets no more than the spawn form (issue #19): over the
compute profile's time, cores or memory, more than one node, a chosen node, all of a
node's memory, the node exclusively, or past the user's job limit, Slurm refuses it with
its own message; within them it runs.
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
from stackfixture import REACH_DEF, diagnostics, run_5x4, run_py, sbatch_each, user_session

from hubdeploy.contract.layout import NODE_JOBS_DIR, NODE_SERVER_PORTS
from hubdeploy.smoke.hubclient import HubAPIError

pytestmark = pytest.mark.integration

# Other values (HUBDEPLOY_TEST_IDENT_SITE, _PORT) let two runs share one engine.
SITE = os.environ.get("HUBDEPLOY_TEST_IDENT_SITE", "hdtident")
PORT = int(os.environ.get("HUBDEPLOY_TEST_IDENT_PORT") or 0) or None
PIDS_LIMIT = 256
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
  # Three jobs per user: a notebook and two more (test_a_user_over_the_job_limit_is_refused).
  cluster: {{nodes: 1, cpus: 4, memory: 3G, max_time: "2:00:00", user_limits: {{jobs: 3}}}}
profiles:
  - {{name: login, image: base, default: true, memory: 1G, pids_limit: PIDS}}
  - {{name: compute, image: base, node: compute, cpu: 1, memory: 512M, slurm: {{time: "30"}}}}
""".replace("PIDS", str(PIDS_LIMIT))
USERS = ("carol", "dave")
servers: dict = {}


@pytest.fixture(scope="module")
def ident_stack(tmp_path_factory):
    stack = SlurmStack(tmp_path_factory.mktemp("identstack"), SITE, SITE_YAML, squeue_format="%T %u %N", port=PORT)
    with running(stack, ["c1"]) as s:
        yield s


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
import json, os, socket, sys
import docker, docker.errors
site, image, slurm_image, foreign, holder, ctld = sys.argv[1:7]
prefix = f"hubdeploy-{site}-"
client = docker.from_env(timeout=60)
def attempt(fn):
    try:
        fn()
        return "allowed"
    except docker.errors.APIError as exc:
        return [exc.status_code, str(exc.explanation)]
def raw(data):
    \"\"\"Send bytes to the engine proxy as they are; the first status line of each answer.\"\"\"
    with socket.create_connection(("engine-proxy", 2375), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return [line.decode() for line in out.split(b"\\r\\n") if line.startswith(b"HTTP/1.1 ")]
def post(path, body, eol=b"\\r\\n"):
    return (b"POST " + path.encode() + b" HTTP/1.1" + eol + b"Host: x" + eol + b"Content-Type: application/json"
            + eol + b"Content-Length: " + str(len(body)).encode() + eol + b"Connection: close" + eol + eol + body)
def create(name, host, **top):
    body = {"Image": image, "Labels": {"hubdeploy.site": site, "hubdeploy.user": "evil"}, "User": "20001:20001",
            "HostConfig": {"NetworkMode": "none", "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"],
                           "PidsLimit": 64, **host}, **top}
    return post(f"/v1.41/containers/create?name={prefix}{name}", json.dumps(body).encode())
hostconfig_twice = (b'{"Image": "' + image.encode() + b'", "Labels": {"hubdeploy.site": "' + site.encode()
                    + b'", "hubdeploy.user": "evil"}, "User": "20001:20001", "HostConfig": {"Privileged": true, '
                    b'"Binds": ["/:/host:ro"]}, "HostConfig": {"NetworkMode": "none", "CapDrop": ["ALL"], '
                    b'"SecurityOpt": ["no-new-privileges"], "PidsLimit": 64}}')
smuggled = (b"GET /_ping HTTP/1.1\\nHost: x\\n\\n" + post(f"/v1.41/containers/create?name={prefix}evil-smuggled",
            json.dumps({"Image": image, "Labels": {"hubdeploy.site": site}, "HostConfig": {"Privileged": True}}).encode(),
            eol=b"\\n"))
exec_body = lambda user, cmd, **kw: json.dumps({"AttachStdout": True, "Cmd": cmd, "User": user, **kw}).encode()
print(json.dumps({
    "socket": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
    "docker_host": os.environ.get("DOCKER_HOST"),
    # The red team's requests, byte for byte as described in issue #19.
    "binds_lowercase": raw(create("evil-binds", {"binds": ["/:/host:ro"]})),
    "capadd_lowercase": raw(create("evil-capadd", {"capadd": ["SYS_ADMIN"], "pidmode": "host"})),
    "privileged_lowercase": raw(create("evil-priv", {"privileged": True})),
    "hostconfig_twice": raw(post(f"/v1.41/containers/create?name={prefix}evil-twice", hostconfig_twice)),
    "smuggled": raw(smuggled),
    "slurm_image_as_root": raw(create("evil-slurm", {}, Image=slurm_image, User="0:0")),
    "exec_privileged_lowercase": raw(post(f"/v1.41/containers/{ctld}/exec",
                                          exec_body("20001:20001", ["squeue"], privileged=True))),
    "exec_root_munge_key": raw(post(f"/v1.41/containers/{ctld}/exec",
                                    exec_body("0:0", ["cat", "/etc/munge/munge.key"]))),
    "exec_slurm_user": raw(post(f"/v1.41/containers/{ctld}/exec", exec_body("64030:64030", ["cat", "/etc/slurm/slurm.conf"]))),
    "foreign_inspect": attempt(lambda: client.api.inspect_container(foreign)),
    "foreign_stop": attempt(lambda: client.api.stop(foreign, timeout=1)),
    "holder_exec": attempt(lambda: client.api.exec_create(holder, ["id"], user="20001:20001")),
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
    """From inside the hub (a hostile hub, as far as the engine is concerned): no Docker
    socket; through the engine proxy every bypass the red team found is refused, and the
    engine shows nothing of them, while the backends' own servers run (started through it)."""
    s = _servers(ident_stack)
    engine = docker.from_env(timeout=120)
    hub, holder, ctld = (ident_stack.container(n) for n in ("hub", "engine-proxy", "slurmctld"))
    # The backends' real work (four spawns, accounts, homes, sbatch, squeue) needed
    # nothing the proxy refuses.
    assert "refused" not in holder.logs().decode(errors="replace")
    execs_before = set(engine.api.inspect_container(ctld.id).get("ExecIDs") or ())
    foreign = engine.containers.run(hub.image.id, ["sleep", "600"], detach=True,
                                    name=f"hdte-foreign-{secrets.token_hex(4)}",
                                    labels={"hubdeploy.site": "hdteother"})
    base_image = ident_stack.container("slurm-c1").image.attrs["Config"]["Labels"]["hubdeploy.parent"]
    try:
        code, out = hub.exec_run(["python3", "-c", FROM_HUB, SITE, base_image, ctld.image.id, foreign.id, holder.id,
                                  ctld.id])
        assert code == 0, out
        got = json.loads(out.decode().strip().splitlines()[-1])
        foreign.reload()
        assert foreign.status == "running"
    finally:
        foreign.remove(force=True)
    assert got["socket"] == [] and got["docker_host"] == "tcp://engine-proxy:2375", got
    for key in ("binds_lowercase", "capadd_lowercase", "privileged_lowercase", "hostconfig_twice",
                "slurm_image_as_root", "exec_privileged_lowercase", "exec_root_munge_key", "exec_slurm_user"):
        assert len(got[key]) == 1 and got[key][0].split()[1] in ("400", "403"), (key, got[key])
    # The smuggled create: the first request's bare line feeds are a 400, and nothing follows.
    assert got["smuggled"] == ["HTTP/1.1 400 Error"], got["smuggled"]
    for key in ("foreign_inspect", "foreign_stop", "holder_exec"):
        assert got[key][0] == 403 and "(foreign-container)" in got[key][1], (key, got[key])
    # What the engine holds: none of those containers, no exec the hub did not make.
    assert not [c.name for c in engine.containers.list(all=True, filters={"name": f"hubdeploy-{SITE}-evil"})]
    new_execs = set(engine.api.inspect_container(ctld.id).get("ExecIDs") or ()) - execs_before
    for exec_id in new_execs:
        proc = engine.api.exec_inspect(exec_id)["ProcessConfig"]
        assert proc["user"] != "0:0" or proc["entrypoint"] != "cat", proc
    # The hub still lists its own notebook containers, and only those.
    assert got["own_servers"] and all(n.startswith(f"hubdeploy-{SITE}-nb-") for n in got["own_servers"]), got
    logs = holder.logs().decode(errors="replace")
    assert s["carol"]["token"] not in logs
    # The proxy itself: no capability, no way to gain one, a read-only root.
    code, out = holder.exec_run(["python3", "-c", INSIDE_PROXY])
    assert code == 0, out
    assert json.loads(out) == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1",
                               "root_writable": False}


# -- least privilege ------------------------------------------------------------------

PROC_STATUS = """\
import json
fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
pids_max = open("/sys/fs/cgroup/pids/pids.max").read().strip()
print(json.dumps({k: fields[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs")} | {"pids_max": pids_max}))
"""


def test_a_login_kernel_holds_no_capability_and_cannot_gain_one(ident_stack):
    s = _servers(ident_stack)
    got = run_py(s["carol"]["login"], s["carol"]["token"], PROC_STATUS)
    zero = "0" * 16
    assert (got["CapEff"], got["CapPrm"], got["CapBnd"], got["CapAmb"]) == (zero,) * 4, got
    assert got["NoNewPrivs"] == "1" and got["pids_max"] == str(PIDS_LIMIT), got
    # su runs but raises nothing: the image has no setuid program (images/common.j2,
    # no_setuid), and no-new-privileges would stop one a collaboration image added.
    su = run_py(s["carol"]["login"], s["carol"]["token"], """\
import json, subprocess
p = subprocess.run(["su", "-c", "id -u", "root"], input="", capture_output=True, text=True, timeout=30)
print(json.dumps([p.returncode, p.stdout.strip()]))
""")
    assert su[0] != 0 and su[1] != "0", su


REACH = "import json\n" + REACH_DEF + """\
print(json.dumps({f"{h}:{p}": reach(h, p) for h, p in [("hub", 8081), ("slurmctld", 6817), ("c1", 6818)]}))
"""


def test_a_login_kernel_reaches_the_hub_but_no_slurm_daemon(ident_stack):
    s = _servers(ident_stack)
    got = run_py(s["carol"]["login"], s["carol"]["token"], REACH)
    assert got["hub:8081"] == "open", got  # the network works: the same probe can succeed
    assert got["slurmctld:6817"] != "open" and got["c1:6818"] != "open", got
    # A compute node, by contrast, is in the cluster (its kernel reaches both).
    cpu = run_py(s["carol"]["cpu"], s["carol"]["token"], REACH)
    assert set(cpu.values()) == {"open"}, cpu


# Capability numbers (linux/capability.h) of those hubdeploy adds back.
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10,
            "SYS_PTRACE": 19}
SERVICE_KINDS = {"proxy": "proxy", "hub": "hub", "slurmctld": "slurmctld", "slurmdbd": "slurmdbd", "slurm-c1": "slurmd"}


def _status(container, pid: str = "1") -> dict[str, str]:
    res = container.exec_run(["cat", f"/proc/{pid}/status"])
    assert res.exit_code == 0, res.output
    return dict(line.split(":\t", 1) for line in res.output.decode().splitlines() if ":\t" in line)


def test_every_service_holds_only_its_documented_capabilities(ident_stack):
    from hubdeploy.render.hardening import PROFILES

    for service, kind in SERVICE_KINDS.items():
        container = ident_stack.container(service)
        status = _status(container)
        bounding = int(status["CapBnd"], 16)
        assert bounding == sum(1 << CAP_BITS[c] for c in PROFILES[kind].cap_add), (service, status["CapBnd"])
        assert status["NoNewPrivs"].strip() == "1", service
        host = container.attrs["HostConfig"]
        assert host["PidsLimit"] and host["Memory"] and host["CpuQuota"], (service, host)
        readonly = container.exec_run(["touch", "/etc/hubdeploy-probe"])
        assert (readonly.exit_code != 0) == PROFILES[kind].read_only, (service, readonly.output)
    # The proxy's main program runs as nobody, with nothing left.
    proxy = ident_stack.container("proxy")
    # By its arguments: the health check runs node too, now and then.
    top = proxy.top(ps_args="-o pid,user,args")["Processes"]
    (chp,) = [p for p in top if "configurable-http-proxy" in p[2]]
    assert chp[1] == "nobody", top


FORK_BOMB = """\
import errno, json, os, time
kids, failure, t0 = [], None, time.monotonic()
while len(kids) < {cap} and time.monotonic() - t0 < 60:
    try:
        pid = os.fork()
    except OSError as exc:
        failure = errno.errorcode.get(exc.errno, str(exc.errno))
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    kids.append(pid)
time.sleep({hold})  # full: the test checks the hub and another user's server meanwhile
for pid in kids:
    os.kill(pid, 9)
for pid in kids:
    os.waitpid(pid, 0)
print(json.dumps({{"forked": len(kids), "failure": failure}}))
"""


def test_a_fork_bomb_stops_at_the_pids_limit_and_others_keep_answering(ident_stack):
    import threading

    s = _servers(ident_stack)
    (container,) = ident_stack.client.containers.list(filters={"label": [
        f"hubdeploy.site={SITE}", "hubdeploy.user=carol", "hubdeploy.server="]})

    def pids() -> int:
        return int(container.stats(stream=False, one_shot=True)["pids_stats"].get("current", 0))

    result: dict = {}
    bomb = threading.Thread(target=lambda: result.update(run_py(
        s["carol"]["login"], s["carol"]["token"], FORK_BOMB.format(cap=4 * PIDS_LIMIT, hold=30))))
    bomb.start()
    try:
        ident_stack.wait("carol's container at its pids limit", lambda: pids() >= PIDS_LIMIT - 2, 60, every=0.5)
        # While it is full: the hub's API and dave's server answer.
        assert s["dave"]["hub"].api("GET", "user").json()["name"] == "dave"
        assert run_5x4(s["dave"]["login"], s["dave"]["token"]) == "20"
        still_full = pids()
    finally:
        bomb.join(timeout=180)
    assert not bomb.is_alive()
    assert still_full >= PIDS_LIMIT - 2, still_full  # the checks above ran while it was full
    assert result["failure"] == "EAGAIN" and result["forked"] < PIDS_LIMIT, result
    # Carol's own server recovers once her processes are gone.
    assert run_5x4(s["carol"]["login"], s["carol"]["token"]) == "20"


MEMORY_JOB = """\
import json, subprocess
# Every page written, so it counts as resident; no quotes, for the shell of --wrap.
script = "import time; b = bytearray({size} * 2**20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; time.sleep(20)"
p = subprocess.run(["sbatch", "--parsable", "--mem=128M", "-t", "5", "-o", "/tmp/hdth-mem-%j.out",
                    "--wrap", f"python3 -c '{{script}}'"], capture_output=True, text=True, timeout=120)
print(json.dumps([p.returncode, p.stdout.strip() + p.stderr]))
"""
_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL")


def _memory_job(stack, server: dict, size_mb: int) -> tuple[str, str]:
    """Submit, from the user's compute-node kernel, a --mem=128M job that holds
    ``size_mb``; return its final state and its output."""
    code, job = run_py(server["cpu"], server["token"], MEMORY_JOB.format(size=size_mb))
    assert code == 0, job

    def ended():
        rc, out = stack.ctl("scontrol", "show", "job", job)
        state = next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")
        return state if rc == 0 and state in _ENDED else None

    state = stack.wait(f"job {job} ended", ended, 240, every=2)
    node = stack.container("slurm-c1")
    output = node.exec_run(["cat", f"/tmp/hdth-mem-{job}.out"]).output.decode(errors="replace")
    return state, output


def test_a_compute_job_over_its_memory_is_killed(ident_stack):
    s = _servers(ident_stack)
    carol = s["carol"]
    # Within --mem=128M: 32M runs to its end.
    state, output = _memory_job(ident_stack, carol, 32)
    assert state == "COMPLETED", (state, output)
    # Five times over it: Slurm's sampling (JobAcctGatherParams=OverMemoryKill) kills it.
    state, output = _memory_job(ident_stack, carol, 640)
    assert state != "COMPLETED" and "exceeded memory limit" in output, (state, output)
    # Carol's notebook job, on the same node, is untouched.
    assert run_5x4(carol["cpu"], carol["token"]) == "20"


# -- an sbatch from a notebook gets no more than the form ------------------------------------

# The compute profile: 1 core, 512M, 30 minutes; a node has 4 cores and 3G.
OVER_THE_FORM = {
    "time": (["-t", "31", "--wrap", "true"], "Requested time limit is invalid"),
    "nodes": (["-N", "2", "-t", "5", "--wrap", "true"], "Node count specification invalid"),
    "nodelist": (["-w", "c1", "-t", "5", "--wrap", "true"], "choosing nodes (-w/--nodelist c1) is not allowed"),
    "mem0": (["--mem=0", "-t", "5", "--wrap", "true"], "--mem=0 (all of a node's memory) is not allowed"),
    "exclusive": (["--exclusive", "-t", "5", "--wrap", "true"], "--exclusive (a whole node) is not allowed"),
    "cores": (["-c", "2", "-t", "5", "--wrap", "true"], "QOSMaxCpuPerJobLimit"),
    "memory": (["--mem=600M", "-t", "5", "--wrap", "true"], "QOSMaxMemoryPerJob"),
    "account": (["-A", "nosuch", "-t", "5", "--wrap", "true"], "Invalid account"),
}


def test_an_sbatch_from_a_notebook_gets_no_more_than_the_form(ident_stack):
    s = _servers(ident_stack)
    carol = s["carol"]
    before = set(ident_stack.jobs())
    got = dict(zip(OVER_THE_FORM, sbatch_each(carol["cpu"], carol["token"], [a for a, _ in OVER_THE_FORM.values()])))
    for key, (code, text) in got.items():
        # Refused at once with Slurm's own words (sbatch: error: Batch job submission failed: ...).
        assert code != 0 and OVER_THE_FORM[key][1] in text and "submission failed" in text, (key, code, text)
    assert set(ident_stack.jobs()) == before
    # Within the form, a plain sbatch (no --mem: the default per core fits) runs.
    ((code, job),) = sbatch_each(carol["cpu"], carol["token"], [["-t", "5", "--wrap", "true"]])
    assert code == 0, job

    def ended():
        rc, out = ident_stack.ctl("scontrol", "show", "job", job)
        state = next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")
        return state if rc == 0 and state in _ENDED else None

    assert ident_stack.wait(f"job {job} ended", ended, 120, every=1) == "COMPLETED"


def test_a_user_over_the_job_limit_is_refused(ident_stack):
    """user_limits.jobs 3: carol's notebook and two held jobs; the fourth is refused. dave's
    are his own count."""
    s = _servers(ident_stack)
    carol, dave = s["carol"], s["dave"]
    held = ["--hold", "-t", "5", "--mem=32M", "--wrap", "true"]
    jobs = []
    try:
        got = sbatch_each(carol["cpu"], carol["token"], [held, held, held])
        jobs = [text for code, text in got if code == 0]
        assert [code == 0 for code, _ in got] == [True, True, False], got
        assert "QOSMaxSubmitJobPerUserLimit" in got[2][1] and "submission failed" in got[2][1], got
        ((code, theirs),) = sbatch_each(dave["cpu"], dave["token"], [held])
        assert code == 0, theirs
        jobs.append(theirs)
    finally:
        for job in jobs:
            ident_stack.ctl("scancel", job)
    # The hub's own notebooks count too, and still run.
    assert run_5x4(carol["cpu"], carol["token"]) == "20"


# -- nobody answers for another user's compute server; nothing leaves its job (#19) ------

SQUAT = """\
import json, os, subprocess
# As the red team's leftover process did: detached, it tries for {seconds} s to take every
# notebook port of the node (SO_REUSEADDR, before, during and after other servers' starts).
code = '''
import json, socket, time
won, tried, errors = [], 0, set()
end = time.time() + {seconds}
while time.time() < end:
    for port in range({lo}, {hi} + 1):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
            s.listen(8)
            won.append(port)
        except OSError as exc:
            s.close()
            errors.add(exc.errno)
        tried += 1
    time.sleep(0.1)
open("{out}", "w").write(json.dumps(dict(won=won, tried=tried, errors=sorted(errors))))
'''
subprocess.run(["setsid", "-f", "python3", "-c", code, "hdt-squatter"], check=True)
print(json.dumps(os.getpid()))
"""
BIND = """\
import json, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("", {port}))
    print(json.dumps("bound"))
except OSError as exc:
    print(json.dumps(exc.strerror))
"""


def _job_port(stack, job: str) -> int:
    code, out = stack.ctl("squeue", "-h", "-j", job, "-o", "%k")
    assert code == 0 and out.strip().startswith("hubdeploy:port="), out
    return int(out.strip().split("=", 1)[1])


def _running_job(stack, user: str) -> str:
    (job,) = [j for j, d in stack.jobs().items() if d.split()[:2] == ["RUNNING", user]]
    return job


def test_no_user_can_answer_for_another_users_compute_server(ident_stack):
    """The red team's attack: carol's detached process tries to take every notebook port
    while dave's compute server restarts on the same node; it gets none, dave's route
    reaches dave's server, and once his job ends nobody can listen on his old port."""
    s = _servers(ident_stack)
    carol, dave = s["carol"], s["dave"]
    lo, hi = NODE_SERVER_PORTS
    out = f"/home/carol/hdt-squat-{secrets.token_hex(3)}.json"
    run_py(carol["cpu"], carol["token"], SQUAT.format(seconds=45, lo=lo, hi=hi, out=out))
    old_port = _job_port(ident_stack, _running_job(ident_stack, "dave"))
    # Meanwhile dave's compute server restarts on the node.
    dave["hub"].stop_server("dave", "cpu", time.monotonic() + 120)
    assert run_py(carol["cpu"], carol["token"], BIND.format(port=old_port)) == "Permission denied"
    dave["hub"].api("POST", "users/dave/servers/cpu", json={"profile": "compute"}, ok=(201, 202))
    dave["hub"].wait_ready("dave", "cpu", time.monotonic() + 240)
    new_port = _job_port(ident_stack, _running_job(ident_stack, "dave"))
    # Through the proxy, dave's server answers, as dave.
    assert run_py(dave["cpu"], dave["token"], WHO)[2] == "dave"
    assert run_py(carol["cpu"], carol["token"], BIND.format(port=new_port)) == "Permission denied"
    node = ident_stack.container("slurm-c1")

    def squatter_done():
        res = node.exec_run(["cat", out])
        return json.loads(res.output) if res.exit_code == 0 else None

    got = ident_stack.wait("the squatter's report", squatter_done, 120, every=3)
    assert got["won"] == [] and got["tried"] > 1000 and got["errors"] == [13], got  # EACCES, every time
    servers["dave"]["job"] = _running_job(ident_stack, "dave")


ESCAPE_JOB = """\
import json, subprocess
p = subprocess.run(["sbatch", "--parsable", "--mem=128M", "-t", "5", "-o", "/dev/null", "--wrap",
                    "setsid -f python3 -c 'import time; time.sleep(300)' hdt-escapee; sleep 120"],
                   capture_output=True, text=True, timeout=120)
print(json.dumps([p.returncode, p.stdout.strip() + p.stderr]))
"""


def _node_ps(stack, pattern: str) -> list[str]:
    """Processes on c1 whose command line holds ``pattern``: pid, parent, user, state, args."""
    res = stack.container("slurm-c1").exec_run(["ps", "-eo", "pid=,ppid=,user:16=,stat=,args="])
    return [line for line in res.output.decode().splitlines() if pattern in line and "ps -eo" not in line]


def test_a_process_that_leaves_a_batch_job_is_ended(ident_stack):
    """setsid -f in a plain batch job (no hubdeploy launcher): the process leaves the job's
    tree; the node's agent ends it within seconds, while the job itself runs on."""
    s = _servers(ident_stack)
    code, job = run_py(s["carol"]["cpu"], s["carol"]["token"], ESCAPE_JOB)
    assert code == 0, job
    try:
        ident_stack.wait("the batch job running", lambda: ident_stack.jobs().get(job, "").startswith("RUNNING"), 60)
        time.sleep(4)  # several sweeps
        assert _node_ps(ident_stack, "hdt-escapee") == []
        assert _node_ps(ident_stack, "sleep 120"), "the job's own process must live on"
        logs = ident_stack.container("slurm-c1").logs(tail=200).decode(errors="replace")
        assert "left its job" in logs, logs[-2000:]
        # Nothing waits as a zombie: the node's init reaps what the agent ends.
        assert not [p for p in _node_ps(ident_stack, "") if p.split()[3].startswith("Z")]
    finally:
        ident_stack.ctl("scancel", job)


LEAVE_BEHIND = """\
import json, os, subprocess, time
open("/tmp/hdt-carol-tmp", "w").write("x")
open("/dev/shm/hdt-carol-shm", "w").write("x")
open(os.path.join(os.environ["TMPDIR"], "x"), "w").write("x")
subprocess.run(["setsid", "-f", "python3", "-c", "import time; time.sleep(600)", "hdt-kept"], check=True)
print(json.dumps(os.environ["TMPDIR"]))
"""
GROW = """\
import json, subprocess
# Detached, and over the job's --mem (512M) on its own.
code = "import time; b = bytearray(900 * 2**20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; time.sleep(300)"
subprocess.run(["setsid", "-f", "python3", "-c", code, "hdt-grower"], check=True)
print(json.dumps("started"))
"""


def test_what_a_notebook_detaches_counts_against_its_job_and_ends_with_it(ident_stack):
    """In carol's compute notebook: a detached process stays in the job (the launcher is a
    subreaper), one that grows past the job's memory gets the job killed, and when the job
    ends nothing of carol's is left on the node: processes, /tmp, /dev/shm, TMPDIR."""
    s = _servers(ident_stack)
    carol = s["carol"]
    tmpdir = run_py(carol["cpu"], carol["token"], LEAVE_BEHIND)
    assert tmpdir.startswith(f"{NODE_JOBS_DIR}/"), tmpdir
    time.sleep(3)  # several sweeps: it is in the job, so it stays
    (kept,) = _node_ps(ident_stack, "hdt-kept")
    launcher = [p for p in _node_ps(ident_stack, "PR_SET_CHILD_SUBREAPER") if p.split()[2] == "carol"]
    assert launcher and kept.split()[1] == launcher[0].split()[0], (kept, launcher)
    job = _running_job(ident_stack, "carol")
    run_py(carol["cpu"], carol["token"], GROW)

    def ended():
        rc, out = ident_stack.ctl("scontrol", "show", "job", job)
        state = next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")
        return state if state in _ENDED else None

    assert ident_stack.wait("carol's notebook job killed", ended, 120, every=2) in ("OUT_OF_MEMORY", "FAILED",
                                                                                  "CANCELLED")
    node = ident_stack.container("slurm-c1")

    def nothing_left():
        procs = [p for p in _node_ps(ident_stack, "") if p.split()[2] == "carol"]
        files = node.exec_run(["ls", "-d", "/tmp/hdt-carol-tmp", "/dev/shm/hdt-carol-shm", tmpdir]).output.decode()
        return not procs and files.count("No such file") == 3

    ident_stack.wait("nothing of carol's on the node", nothing_left, 60, every=2)
    # Her next compute server starts as usual, once the hub has seen the job end (a start
    # sent while the hub's own poll is stopping the dead server races JupyterHub's two
    # stops of it: a 500 there is JupyterHub's, not the path under test).
    ident_stack.wait("the hub sees carol's server ended",
                     lambda: carol["hub"].server_model("carol", "cpu") is None, 120, every=2)
    try:
        carol["hub"].api("POST", "users/carol/servers/cpu", json={"profile": "compute"}, ok=(201, 202))
    except HubAPIError as exc:
        pytest.fail(f"{exc}\n{diagnostics(ident_stack.project)}")
    carol["hub"].wait_ready("carol", "cpu", time.monotonic() + 240)
    assert run_py(carol["cpu"], carol["token"], WHO)[2] == "carol"


def test_the_red_teams_usernames_through_the_stacks_login_form(ident_stack):
    """Full-width ａｄｍｉｎ is admin; a 10,000-character name is refused; root logs in but
    runs as u<uid>, never as the system's root."""
    from hubdeploy.smoke.hubclient import HubClient

    hub = HubClient(ident_stack.url)
    hub.login("\uff41\uff44\uff4d\uff49\uff4e", "")
    assert hub.api("GET", "user").json()["name"] == "admin"
    with pytest.raises(HubAPIError):
        HubClient(ident_stack.url).login("x" * 10_000, "")
    root, token = user_session(ident_stack, "root")
    root.api("POST", "users/root/server", json={"profile": "login"}, ok=(201, 202))
    root.wait_ready("root", "", time.monotonic() + 240)
    try:
        uid, _, name, home, _ = run_py(root.server_url("root"), token, WHO)
        assert uid >= 20000 and name == f"u{uid}" and home == f"/home/u{uid}", (uid, name, home)
    finally:
        root.stop_server("root", "", time.monotonic() + 120)


# Last: it takes the stack down.
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
