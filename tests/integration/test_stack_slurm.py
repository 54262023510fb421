"""Compute-node notebooks through the real stack: site ``hdtslurm`` with a Slurm cluster
in the stack (slurmctld + 2 slurmd containers), brought up and taken down by the CLI.

A user spawns a compute profile through the hub API, runs ``5*4`` through the proxy on
the node, and the server survives a hub restart and an absent controller; a stop cancels
the job, and a job cancelled behind the hub's back is reported stopped with its route gone.
One user cannot hold both nodes (slurm.cluster.user_limits.nodes defaults to one fewer
than the cluster has): a second job from the notebook waits while the other node takes
another user's server.
The tests share one server and run in order (each also works alone: ``_need_server``).
"""

from __future__ import annotations

import json
import os
import time

import docker
import pytest
from slurmstack import SlurmStack, running
from stackfixture import run_5x4, sbatch_each, user_session

from hubdeploy.smoke.hubclient import HubClient, escape_path

pytestmark = pytest.mark.integration

# Other values (HUBDEPLOY_TEST_SLURM_SITE, _PORT) let two runs share one engine.
SITE = os.environ.get("HUBDEPLOY_TEST_SLURM_SITE", "hdtslurm")
PORT = int(os.environ.get("HUBDEPLOY_TEST_SLURM_PORT") or 0) or None
PROJECT = f"hubdeploy-{SITE}"
USER = "has@"
SITE_YAML = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  admin_users: [admin]
  authenticator: {{class: dummy}}
  # Poll servers often, so that the faults below show within seconds.
  config: {{Spawner: {{poll_interval: 5}}}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
slurm:
  cluster: {{nodes: 2, cpus: 1, memory: 1G, partitions: [compute, debug]}}
profiles:
  - name: login
    image: base
    default: true
  - name: compute
    image: base
    node: compute
    cpu: 1
    memory: 512M
    slurm:
      partitions: [compute, debug]
      time: "60"
      limits: {{max_cpu: 1, max_memory: 1G, max_time: "2:00:00"}}
"""
state: dict = {}


@pytest.fixture(scope="module")
def slurm_stack(tmp_path_factory):
    with running(SlurmStack(tmp_path_factory.mktemp("slurmstack"), SITE, SITE_YAML, port=PORT), ["c1", "c2"]) as s:
        yield s


def _spawn(stack, hub) -> str:
    t0 = time.monotonic()
    hub.api("POST", f"users/{escape_path(USER)}/server",
            json={"profile": "compute", "partition": "debug", "time": "30"}, ok=(201, 202))
    hub.wait_ready(USER, "", time.monotonic() + 240)
    jobs = stack.jobs()
    assert len(jobs) == 1, jobs
    job_id, desc = next(iter(jobs.items()))
    assert desc.startswith("RUNNING debug c"), desc
    print(f"compute-node server ready in {time.monotonic() - t0:.1f} s (job {job_id}: {desc})")
    return job_id


def _need_server(stack):
    if "job" not in state or state["job"] not in stack.jobs():
        hub, token = user_session(stack, USER)
        state.update(hub=hub, token=token, job=_spawn(stack, hub), url=hub.server_url(USER))
    return state["url"], state["token"]


def test_cluster_is_up_with_a_private_munge_key(slurm_stack):
    key = slurm_stack.dir / ".hubdeploy" / "secrets" / "munge_key"
    assert key.stat().st_mode & 0o777 == 0o600
    for service in ("slurmctld", "slurm-c1", "slurm-c2"):
        res = slurm_stack.container(service).exec_run(["stat", "-c", "%U %a", "/etc/munge/munge.key"])
        assert res.output.decode().strip() == "munge 400", (service, res.output)
    # Only the proxy publishes a port; the controller is on the slurm network only, the
    # nodes also on compute (where the proxy and the hub reach their notebooks), and
    # neither on the login notebooks' users network.
    for service, nets in (("slurmctld", {"slurm"}), ("slurm-c1", {"slurm", "compute"})):
        c = slurm_stack.container(service)
        assert not (c.attrs["HostConfig"]["PortBindings"] or {})
        assert set(c.attrs["NetworkSettings"]["Networks"]) == {f"{PROJECT}-{n}" for n in nets}


def test_credentials_carry_the_address_the_controller_knows(slurm_stack):
    """slurmctld looks up each credential's origin; one on a network it is not on has no
    name there and the lookup outlives the job's own ``scontrol update`` (the job failed
    with "Unexpected message received" whenever docker wrote the compute address first
    into the node's /etc/hosts)."""
    for node in ("c1", "c2"):
        c = slurm_stack.container(f"slurm-{node}")
        slurm_ip = c.attrs["NetworkSettings"]["Networks"][f"{PROJECT}-slurm"]["IPAddress"]
        res = c.exec_run(["sh", "-c", "munge -n | unmunge"], user="nobody")
        out = res.output.decode(errors="replace")
        assert res.exit_code == 0, out
        assert f"({slurm_ip})" in next(line for line in out.splitlines() if line.startswith("ENCODE_HOST:")), out


def test_choice_outside_the_limits_is_refused(slurm_stack):
    hub, _ = user_session(slurm_stack, "refused")
    for options, words in (
        ({"profile": "compute", "time": "9:00:00"}, "asks for 540 minutes; its limit is 2:00:00"),
        ({"profile": "compute", "partition": "gpu"}, "not offered"),
        ({"profile": "login", "cpu": "1"}, "login node"),
    ):
        resp = hub.request("POST", "hub/api/users/refused/server", json=options, ok=(400,))
        assert words in resp.text, resp.text
    assert slurm_stack.jobs() == {}


def test_compute_profile_spawns_on_a_node_and_runs_5x4(slurm_stack):
    url, token = _need_server(slurm_stack)
    assert run_5x4(url, token) == "20"


def _healthy_since_start(container) -> bool:
    """Healthy by a check that ran after the container's last start (not a stale status)."""
    st = container.attrs["State"]
    log = (st.get("Health") or {}).get("Log") or []
    return bool(log) and log[-1].get("ExitCode") == 0 and log[-1].get("Start", "") > st.get("StartedAt", "")


def test_hub_restart_keeps_the_job(slurm_stack):
    url, token = _need_server(slurm_stack)
    job = state["job"]
    restarted = int(time.time()) - 1
    slurm_stack.container("hub").restart(timeout=20)
    slurm_stack.wait("hub healthy since its restart", lambda: _healthy_since_start(slurm_stack.container("hub")), 120)
    assert run_5x4(url, token) == "20"
    admin = HubClient(slurm_stack.url)
    admin.login(USER, "")
    model = admin.server_model(USER, "")
    # The restarted hub's own account of its check of the server (poll, then a request to
    # its URL) says why, should it have let the server go.
    assert model is not None and model["ready"] is True, (
        f"{model}\njobs: {slurm_stack.jobs()}\n--- hub since its restart\n"
        + slurm_stack.container("hub").logs(since=restarted).decode(errors="replace")[-20000:]
    )
    assert job in slurm_stack.jobs()


def test_controller_away_keeps_the_server(slurm_stack):
    url, token = _need_server(slurm_stack)
    job = state["job"]
    ctl = slurm_stack.container("slurmctld")
    stopped_at = int(time.time())
    ctl.stop(timeout=10)
    try:
        # The hub polls (every 5 s here) and cannot reach the scheduler: it says so, and
        # keeps the server.
        slurm_stack.wait("the hub's poll to find the scheduler away", lambda: "cannot tell whether" in
                         slurm_stack.container("hub").logs(since=stopped_at).decode(errors="replace"), 60)
        assert run_5x4(url, token) == "20"
        assert state["hub"].server_model(USER, "")["ready"] is True
    finally:
        ctl.start()
    slurm_stack.wait("slurmctld back", lambda: slurm_stack.ctl("scontrol", "ping")[0] == 0, 60)
    slurm_stack.wait("job running again", lambda: slurm_stack.jobs().get(job, "").startswith("RUNNING"), 60)
    assert run_5x4(url, token) == "20"
    assert state["hub"].server_model(USER, "")["ready"] is True


def _cli_json(stack, *args, ok=(0,)):
    proc = stack.cli(*args, "--json")
    assert proc.returncode in ok, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_untracked_servers_are_listed_and_removed_only_on_request(slurm_stack):
    """A job and a container named like the hub's but owned by no hub server (a lost
    database): status lists them, a removal naming a tracked job removes nothing, and
    only `orphans remove` cancels / removes them; the tracked server keeps running."""
    url, token = _need_server(slurm_stack)
    tracked = state["job"]
    # status exits 1 until every service is healthy (the controller may be restarting).
    slurm_stack.wait("stack healthy", lambda: slurm_stack.cli("status").returncode == 0, 120, every=3)
    # The ghost is the same user's (an account the hub runs as, with its association):
    # the hub cancels a job as its owner, and never as a reserved id such as jovyan's.
    code, owner = slurm_stack.ctl("squeue", "-h", "-j", tracked, "-o", "%U:%G")
    assert code == 0, owner
    res = slurm_stack.container("slurmctld").exec_run(
        ["sbatch", "--parsable", f"--job-name={PROJECT}-nb-ghost", "--time=10", "--mem=100M", "--wrap", "sleep 600"],
        user=owner.strip(), workdir="/tmp",
    )
    assert res.exit_code == 0, res.output
    ghost_job = res.output.decode().strip().split(";")[0]
    image = slurm_stack.container("slurm-c1").image
    ghost = slurm_stack.client.containers.run(
        image, ["600"], entrypoint=["sleep"], name=f"{PROJECT}-nb-ghost", detach=True,
        labels={"hubdeploy.site": SITE, "hubdeploy.user": "ghost"},
    )
    try:
        status = _cli_json(slurm_stack, "status")
        assert status["untracked_error"] is None
        untracked = {(r["backend"], r["id"]) for r in status["untracked"]}
        assert untracked == {("slurm", ghost_job), ("docker", ghost.id)}, status["untracked"]

        listed = _cli_json(slurm_stack, "orphans", "list", "--all")
        owners = {r["id"]: r["owner"] for r in listed["servers"]}
        assert owners[tracked] == USER and owners[ghost_job] is None, listed

        proc = slurm_stack.cli("orphans", "remove", ghost_job, tracked)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "tracked by the hub" in proc.stderr and "nothing removed" in proc.stderr, (
            proc.stderr, slurm_stack.jobs(), slurm_stack.cli("orphans", "list", "--all", "--json").stdout)
        assert ghost_job in slurm_stack.jobs()

        removed = _cli_json(slurm_stack, "orphans", "remove", "--all")["removed"]
        assert sorted(removed) == sorted([ghost_job, ghost.id])
        slurm_stack.wait("ghost job gone", lambda: ghost_job not in slurm_stack.jobs(), 30)
        with pytest.raises(docker.errors.NotFound):
            ghost.reload()
        assert slurm_stack.jobs()[tracked].startswith("RUNNING")
        assert run_5x4(url, token) == "20"
        assert _cli_json(slurm_stack, "status")["untracked"] == []
    finally:
        slurm_stack.ctl("scancel", ghost_job)
        try:
            ghost.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_one_user_cannot_hold_every_node(slurm_stack):
    """has@'s notebook holds c1's one core; a second job from it could run on c2, but the
    user's node limit (1 of 2) keeps it waiting, and c2 takes another user's server."""
    url, token = _need_server(slurm_stack)
    ((code, job),) = sbatch_each(url, token, [["-c", "1", "--mem=100M", "-t", "5", "--wrap", "sleep 300"]])
    assert code == 0, job
    other = "second"
    try:
        # Pending with reason None until the scheduler's next pass looks at it.
        slurm_stack.wait("the job waits for the user's node limit", lambda: slurm_stack.ctl(
            "squeue", "-h", "-j", job, "-o", "%T %r")[1].split() == ["PENDING", "QOSMaxNodePerUserLimit"], 60)
        hub, other_token = user_session(slurm_stack, other)
        hub.api("POST", f"users/{other}/server", json={"profile": "compute", "partition": "debug", "time": "30"},
                ok=(201, 202))
        slurm_stack.wait_ready(hub, other, "", 240)
        assert run_5x4(hub.server_url(other), other_token) == "20"
        assert slurm_stack.jobs()[job].startswith("PENDING")
        nodes = {desc.split()[-1] for desc in slurm_stack.jobs().values() if desc.startswith("RUNNING")}
        assert nodes == {"c1", "c2"}, slurm_stack.jobs()
        hub.stop_server(other, "", time.monotonic() + 90, remove=False)
    finally:
        slurm_stack.ctl("scancel", job)
    # has@'s notebook is untouched.
    assert run_5x4(url, token) == "20"


def test_stop_cancels_the_job(slurm_stack):
    _need_server(slurm_stack)
    job = state["job"]
    state["hub"].stop_server(USER, "", time.monotonic() + 90, remove=False)
    assert job not in slurm_stack.jobs()
    state.pop("job")


def test_job_cancelled_outside_the_hub_is_reported_stopped(slurm_stack):
    _need_server(slurm_stack)
    job = state["job"]
    code, out = slurm_stack.ctl("scancel", job)
    assert code == 0, out
    hub = state["hub"]
    slurm_stack.wait("hub sees the server stopped", lambda: not (hub.server_model(USER, "") or {}).get("ready"), 60)
    admin, _ = user_session(slurm_stack, "admin")
    routes = admin.api("GET", "proxy").json()
    prefix = "/user/" + escape_path(USER)
    assert not [r for r in routes if r.startswith(prefix)], routes
    state.clear()
