"""A compute node that dies under a running notebook: site ``hdtlost`` with a 2-node
Slurm cluster in the stack, brought up and taken down by the CLI.

A user's compute server runs; `status --json` lists its job with id, node and state;
the node's container is killed (`docker kill`), so Slurm stops hearing from it while it
still lists the job as RUNNING. Within a bounded wait the hub reports the server stopped
and its log and `status` name the node; the same user starts again at once and runs on
the other node; `down` names the server it stopped. The tests run in order.

The server runs in the base image through Charliecloud (``runtime: charliecloud``), so
a lost node is shown to end a runtime's job as it ends a native one (test_stack_slurm's
servers are native): the hub sees the job, not what the job runs.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from slurmstack import SlurmStack, running
from stackfixture import run_5x4, user_session

from hubdeploy.smoke.hubclient import escape_path

pytestmark = pytest.mark.integration

# Another value (HUBDEPLOY_TEST_LOST_SITE) lets two runs share one engine.
SITE = os.environ.get("HUBDEPLOY_TEST_LOST_SITE", "hdtlost")
USER = "lost@"
NODES = ["c1", "c2"]
# The kill -> stopped bound: Slurm's ping (SlurmdTimeout=60 s / 3), the backend's grace
# (20 s) and the hub's poll (5 s here), with room for a loaded 2-core machine.
LOST_WITHIN = 90
SITE_YAML = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  admin_users: [admin]
  authenticator: {{class: dummy}}
  # Poll servers often, so that a lost node shows within seconds of the backend's verdict.
  config: {{Spawner: {{poll_interval: 5}}}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
slurm:
  cluster: {{nodes: 2, cpus: 1, memory: 1G, partitions: [compute]}}
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
      time: "60"
      runtime: charliecloud
"""
state: dict = {}


@pytest.fixture(scope="module")
def lost_stack(tmp_path_factory):
    with running(SlurmStack(tmp_path_factory.mktemp("loststack"), SITE, SITE_YAML, squeue_format="%T %N"),
                 NODES) as s:
        yield s


def _status(stack) -> dict:
    proc = stack.cli("status", "--json")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: a node's service is down
    return json.loads(proc.stdout)


def _my_job_row(status: dict, job: str) -> dict | None:
    return next((r for r in status["servers"] if r["backend"] == "slurm" and r["id"] == job), None)


def _start(stack, hub) -> tuple[str, str]:
    """Start USER's compute server; (job id, node) once it is ready."""
    t0 = time.monotonic()
    hub.api("POST", f"users/{escape_path(USER)}/server", json={"profile": "compute"}, ok=(201, 202))
    stack.wait_ready(hub, USER, "", 180)
    running_jobs = {j: d for j, d in stack.jobs().items() if d.startswith("RUNNING")}
    model = hub.server_model(USER, "")
    job = model["state"]["hubdeploy"]["state"]["job_id"] if model.get("state") else None
    job = job or max(running_jobs, key=int)
    node = running_jobs[job].split()[1]
    print(f"compute server ready in {time.monotonic() - t0:.1f} s: job {job} on {node}")
    return job, node


def test_status_lists_the_compute_job_with_id_node_and_state(lost_stack):
    hub, token = user_session(lost_stack, USER)
    job, node = _start(lost_stack, hub)
    state.update(hub=hub, token=token, job=job, node=node)
    row = _my_job_row(_status(lost_stack), job)
    assert row is not None, _status(lost_stack)
    assert (row["state"], row["node"], row["owner"], row["tracked"]) == ("RUNNING", node, USER, True), row
    assert run_5x4(hub.server_url(USER), token) == "20"


def _stopped(hub) -> bool:
    model = hub.server_model(USER, "")
    return not model or not (model.get("ready") or model.get("pending"))


def test_killed_node_is_reported_within_bounds_and_the_user_starts_again_at_once(lost_stack):
    if "job" not in state:
        pytest.skip("needs the server of the test before")
    hub, job, node = state["hub"], state["job"], state["node"]
    other = next(n for n in NODES if n != node)
    said = f"node {node} is not responding"
    killed_at, t0 = int(time.time()), time.monotonic()
    lost_stack.container(f"slurm-{node}").kill()
    stopped_after = status_after = None
    while time.monotonic() - t0 < LOST_WITHIN + 30 and (stopped_after is None or status_after is None):
        if stopped_after is None and _stopped(hub):
            stopped_after = time.monotonic() - t0
        if status_after is None:
            row = _my_job_row(_status(lost_stack), job)
            if row is not None and said in row["detail"]:
                status_after = time.monotonic() - t0
        time.sleep(1)
    print(f"kill -> hub reports the server stopped: {stopped_after} s; status names the node: {status_after} s")
    assert stopped_after is not None and stopped_after <= LOST_WITHIN, (stopped_after, lost_stack.jobs())
    assert status_after is not None, _status(lost_stack)
    # Slurm itself still had the job on the node when the hub gave up on it.
    hub_log = lost_stack.container("hub").logs(since=killed_at).decode(errors="replace")
    assert said in hub_log, hub_log[-3000:]

    # At once: no "pending stop", no wait on the dead node.
    t1 = time.monotonic()
    new_job, new_node = _start(lost_stack, hub)
    print(f"restart after the lost node: ready in {time.monotonic() - t1:.1f} s on {new_node}")
    assert new_job != job and new_node == other
    assert run_5x4(hub.server_url(USER), state["token"]) == "20"
    state.update(job=new_job, node=new_node)


def test_down_stops_every_server_and_says_which(lost_stack):
    if "job" not in state:
        pytest.skip("needs the server of the tests before")
    proc = lost_stack.cli("down", "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["not_stopped"] == [], report
    stopped = {(r["backend"], r["id"]): r["owner"] for r in report["stopped_servers"]}
    assert stopped.get(("slurm", state["job"])) == USER, report
    state.clear()
