"""Collaboration images on compute nodes: the example site
``config/example/site-compute-images.yaml`` (as site ``hdtrt``), whose compute profiles run
the ``astro`` and ``astro-r`` images through Charliecloud's ``ch-run`` on the stack's own
Slurm nodes, which themselves run the base image.

Brought up by the CLI (``up`` stages both images onto the nodes' read-only volume). Two
users start the astro profile; from carol's kernel inside ch-run: numpy (only astro has
it), her own uid on a node, and the attacks of issue #20 point 6. The astro-r kernels (a
collaboration on a collaboration: Python venv, R, bash) run through ``smoke``. Staging is
skipped when unchanged, keeps an image a running job uses, removes it after, and replaces
one whose build changed. The tests share one stack and run in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import docker
import pytest
from slurmstack import SlurmStack, running
from stackfixture import run_cli, run_py, user_session

from hubdeploy.smoke.kernel import KernelError

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_RUNTIME_SITE", "hdtrt")
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example" / "site-compute-images.yaml"
USERS = ("carol", "dave")
SERVER = "astro"


def _site_yaml() -> str:
    """The example with the test's name and port, its shared volume renamed to match."""
    text = EXAMPLE.read_text().replace("{", "{{").replace("}", "}}")
    for old, new in (("name: demo-images", "name: {name}"), ("port: 8010", "port: {port}"),
                     ("hubdeploy-demo-images-shared", "hubdeploy-{name}-shared")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def _without_profile(text: str, name: str) -> str:
    """The site text with profile ``name`` (a '  - name:' item of the profiles list) left out."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == f"- name: {name}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("  - ", "  #"))), len(lines))
    return "".join(lines[:start] + lines[end:])


servers: dict = {}


@pytest.fixture(scope="module")
def rt_stack(tmp_path_factory):
    stack = SlurmStack(tmp_path_factory.mktemp("rtstack"), SITE, _site_yaml(), squeue_format="%T %u %N")
    try:
        with running(stack, ["c1", "c2"]) as s:
            yield s
    finally:
        # The profile's named volume is site data, which `down --volumes` keeps.
        with contextlib.suppress(docker.errors.NotFound):
            stack.client.volumes.get(f"hubdeploy-{SITE}-shared").remove()


def _servers(stack) -> dict:
    """carol's and dave's astro servers (one per node: each node has one CPU), started once."""
    if servers:
        return servers
    for user in USERS:
        hub, token = user_session(stack, user)
        hub.api("POST", f"users/{user}/servers/{SERVER}", json={"profile": "compute-astro"}, ok=(201, 202))
        stack.wait_ready(hub, user, SERVER, 240)
        servers[user] = {"hub": hub, "token": token, "url": hub.server_url(user, SERVER)}
    return servers


def _stage(stack, site_text: str | None = None) -> dict:
    """``images stage --json`` for the stack's site, or for ``site_text`` (a variant of it)."""
    site_file = stack.site_file
    if site_text is not None:
        site_file = stack.dir / "site-variant.yaml"
        site_file.write_text(site_text)
    proc = run_cli(site_file, "images", "stage", "--json", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _node(stack, node: str, *argv: str) -> tuple[int, str]:
    res = stack.container(f"slurm-{node}").exec_run(list(argv), user="root", environment={"USER": "root"})
    return res.exit_code, res.output.decode(errors="replace")


def test_nodes_get_ch_run_a_seccomp_profile_and_nothing_more(rt_stack):
    for node in ("c1", "c2"):
        code, out = _node(rt_stack, node, "ch-run", "--version")
        assert code == 0, out
        # Debian's package installs nothing setuid; the image strips every such bit anyway.
        code, out = _node(rt_stack, node, "find", "/", "-xdev", "-perm", "/6000", "-type", "f")
        assert code == 0 and out.strip() == "", out
        host = rt_stack.container(f"slurm-{node}").attrs["HostConfig"]
        assert host["Privileged"] is False
        # The nodes' own capabilities (slurmd's), nothing for the runtime: ch-run needs none.
        assert host["CapDrop"] == ["ALL"] and "CAP_SYS_ADMIN" not in (host.get("CapAdd") or []), host
        assert not host.get("Devices"), host.get("Devices")
        (seccomp,) = [opt for opt in host["SecurityOpt"] if opt.startswith("seccomp=")]
        profile = json.loads(seccomp.removeprefix("seccomp="))
        ours = [rule for rule in profile["syscalls"] if rule.get("comment", "").startswith("hubdeploy:")]
        assert {name for rule in ours for name in rule["names"]} >= {"unshare", "mount", "pivot_root"}, ours
        mounts = {m["Destination"]: m for m in rt_stack.container(f"slurm-{node}").attrs["Mounts"]}
        assert mounts["/var/lib/hubdeploy/images"]["RW"] is False
        assert mounts["/srv/shared"]["RW"] is False


def test_staging_again_changes_nothing_and_keeps_owners(rt_stack):
    got = _stage(rt_stack)
    assert sorted(got["unchanged"]) == ["astro", "astro-r"] and not got["staged"] and not got["removed"], got
    code, out = _node(rt_stack, "c1", "sh", "-c", "stat -c '%u %n' /var/lib/hubdeploy/images/*/home/jovyan "
                      "/var/lib/hubdeploy/images/*/opt/venv")
    assert code == 0, out
    owners = dict(reversed(line.split(" ", 1)) for line in out.splitlines())
    assert len(owners) == 4, owners
    for path, uid in owners.items():
        assert uid == ("1000" if path.endswith("/home/jovyan") else "0"), owners


INSIDE = r"""
import json, os, socket
out = {"uid": os.getuid(), "host": socket.gethostname(), "home": os.environ["HOME"],
       "root": open("/proc/self/mountinfo").readline().split()[3]}
try:
    import numpy
    out["numpy"] = numpy.__version__
except ImportError as exc:
    out["numpy"] = repr(exc)
print(json.dumps(out))
"""


def test_astro_runs_on_a_node_as_its_user_in_its_own_image(rt_stack):
    s = _servers(rt_stack)
    jobs = rt_stack.jobs()
    nodes = set()
    for user in USERS:
        got = run_py(s[user]["url"], s[user]["token"], INSIDE)
        assert not got["numpy"].startswith("ImportError"), got  # the nodes run base: no numpy there
        assert got["host"] in ("c1", "c2") and got["home"] == f"/home/{user}", got
        # The root of the server's file system is astro's staged directory.
        assert "+" + SITE + "-astro+" in got["root"], got
        # Its uid is the account the job runs as on the node (Slurm's view of the job).
        (job,) = [j for j, desc in jobs.items() if desc.split()[1] == user]
        code, out = rt_stack.ctl("scontrol", "show", "job", job)
        assert code == 0 and f"UserId={user}({got['uid']})" in out, out
        assert got["uid"] >= 20000
        nodes.add(got["host"])
    assert nodes == {"c1", "c2"}


ATTACKS = r"""
import ctypes, errno, json, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def err(ret):
    return "ok" if ret == 0 else errno.errorcode[ctypes.get_errno()]
def tryopen(path, mode="r"):
    try:
        open(path, mode).close()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
def status(field):
    return next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":"))
def in_child(code):
    p = subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=60)
    return [p.returncode, (p.stdout + p.stderr).strip()[-200:]]
out = {"capeff": status("CapEff"), "nnp": status("NoNewPrivs"),
       "other_home": tryopen("/home/OTHER/."), "other_home_ls": in_child("import os; os.listdir('/home/OTHER')")[0],
       "munge_here": tryopen("/etc/munge/munge.key"),
       "shared": tryopen("/srv/shared/x", "w"), "image": tryopen("/usr/x", "w"),
       "userns": err(libc.unshare(0x10000000)),
       "userns_net": err(libc.unshare(0x10000000 | 0x40000000)),
       "node_root": tryopen("/proc/1/root/etc/munge/munge.key")}
# A user+mount namespace of its own is what ch-run itself makes (the seccomp profile's
# one allowed unshare); inside it, no new file system may be mounted.
out["nested_mount"] = in_child(
    "import ctypes, errno; libc = ctypes.CDLL(None, use_errno=True);"
    "r = libc.unshare(0x10000000 | 0x00020000); print('unshare', r, errno.errorcode.get(ctypes.get_errno()));"
    "r = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None); print('mount', r, errno.errorcode.get(ctypes.get_errno()))")
print(json.dumps(out))
"""


def test_what_a_user_must_not_reach_from_inside_ch_run(rt_stack):
    s = _servers(rt_stack)
    got = run_py(s["carol"]["url"], s["carol"]["token"], ATTACKS.replace("OTHER", "dave"))
    assert got["capeff"] == "0000000000000000" and got["nnp"] == "1", got  # not root, no way up
    assert got["other_home"] == "EACCES" and got["other_home_ls"] != 0, got
    assert got["munge_here"] == "ENOENT" and got["node_root"] == "EACCES", got
    assert got["shared"] == "EROFS" and got["image"] == "EROFS", got
    assert got["userns"] == "EPERM" and got["userns_net"] == "EPERM", got
    code, text = got["nested_mount"]
    assert "mount -1 EPERM" in text, got["nested_mount"]


def test_a_job_over_its_memory_ends_inside_ch_run_too(rt_stack):
    s = _servers(rt_stack)
    dave = s["dave"]
    (job,) = [j for j, desc in rt_stack.jobs().items() if desc.split()[1] == "dave"]
    # Over the profile's 1G from inside ch-run: Slurm's sampling (OverMemoryKill) ends the
    # job, as it does a native one (test_identity_stack), with the server in it.
    with contextlib.suppress(KernelError):
        run_py(dave["url"], dave["token"], "import json, time; b = bytearray(1600 * 2**20); time.sleep(90); "
               "print(json.dumps('survived'))")

    def ended():
        code, out = rt_stack.ctl("sacct", "-X", "-n", "-P", "-o", "State", "-j", job)
        return code == 0 and out.split() and out.split()[0] not in ("RUNNING", "PENDING") and out.split()[0]

    assert rt_stack.wait("dave's job ended", ended, 120) in ("FAILED", "OUT_OF_MEMORY", "CANCELLED")
    rt_stack.wait("dave's server reported stopped", lambda: SERVER not in dave["hub"].api(
        "GET", "users/dave").json()["servers"], 120)


# Kernel code: a process in a session of its own that outlives the kernel; prints the node.
DETACH = """
import json, socket, subprocess
subprocess.Popen(["sleep", "617"], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(json.dumps(socket.gethostname()))
"""
# Node code (as root): the pids whose command line is that process's.
FIND_LEFT = """
import glob, json
left = []
for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        if open(path, "rb").read() == b"sleep\\x00617\\x00":
            left.append(path.split("/")[2])
    except OSError:
        pass
print(json.dumps(left))
"""


def test_staging_keeps_an_image_a_job_uses_and_removes_it_after(rt_stack):
    s = _servers(rt_stack)
    without_astro = _without_profile(rt_stack.site_file.read_text(), "compute-astro")
    assert "compute-astro-r" in without_astro and "name: compute-astro\n" not in without_astro
    got = _stage(rt_stack, without_astro)
    assert len(got["kept"]) == 1 and "-astro+" in got["kept"][0] and not got["removed"], got
    # Before it stops, carol's kernel leaves a detached process (its own session) behind.
    node = run_py(s["carol"]["url"], s["carol"]["token"], DETACH)
    rt_stack.wait("the detached process running", lambda: _node(rt_stack, node, "python3", "-c", FIND_LEFT)[1]
                  .strip() != "[]", 10)
    # carol's server stops (dave's ended over its memory); the hub's stop cancels its job.
    s["carol"]["hub"].api("DELETE", f"users/carol/servers/{SERVER}", ok=(202, 204))
    rt_stack.wait("astro jobs ended", lambda: not rt_stack.jobs(), 60)
    # It ended with the job, though it ran inside ch-run: nothing of it is left on the node.
    rt_stack.wait("the detached process gone", lambda: _node(rt_stack, node, "python3", "-c", FIND_LEFT)[1].strip()
                  == "[]", 30)
    servers.clear()
    # An interrupted staging leaves only a .tmp- directory; the next run removes it.
    rt_stack.client.containers.run(
        rt_stack.container("slurm-c1").image.id, ["mkdir", "/v/.tmp-interrupted"], entrypoint=[], remove=True,
        user="root", network_mode="none", volumes={f"hubdeploy-{SITE}-compute-images": {"bind": "/v", "mode": "rw"}})
    got = _stage(rt_stack, without_astro)
    assert [name.split("+")[0:2] for name in got["removed"]] == [[".tmp-interrupted"], ["hubdeploy", f"{SITE}-astro"]] \
        and not got["kept"], got
    code, out = _node(rt_stack, "c1", "ls", "-a", "/var/lib/hubdeploy/images")
    assert code == 0 and ".tmp-" not in out and "-astro+" not in out and "-astro-r+" in out, out
    # Back in the site: staged again.
    got = _stage(rt_stack)
    assert got["staged"] == ["astro"] and got["unchanged"] == ["astro-r"], got


def test_a_collaboration_on_a_collaboration_runs_every_kernel_on_a_node(rt_stack):
    proc = rt_stack.cli("smoke", "--profile", "compute-astro-r", "--json", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    kernels = {step["name"].removeprefix("kernel "): step["status"] for step in report["steps"]
               if step["name"].startswith("kernel ")}
    assert kernels == {"python3": "ok", "astro-r-py": "ok", "astro-r-r": "ok", "astro-r-bash": "ok"}, report
