"""Compute-node (Slurm) spawn latency against its floor, measured in the same run.

Hub path: POST /hub/api/users/U/servers/bench with the compute profile -> the hub says
ready and the proxy answers the server's /api ("ready"), then -> first kernel result
(`5*4` over the kernel websocket, through the proxy).

Floor, interleaved with the hub runs (floor, hub, hub, floor, ...), so both see the same
machine: sbatch of a trivial job, run in the slurmctld container as the notebook user as
the hub does, whose script only execs `jupyter server` (the same image's program, a
token, a fixed port) on the node Slurm picks; timed until that server's /api answers,
then the same kernel round trip straight to it. Also reported alone: sbatch -> RUNNING.

How the floor is timed, with the least overhead we found:
- one `docker exec` into the controller runs a small fixed Python program (FLOOR_PROBE)
  that stamps the wall clock just before sbatch, submits, and polls squeue every 20 ms
  until RUNNING, printing the job's BatchHost. The clock starts inside the container, so
  the cost of `docker exec` itself is not charged to the floor (containers share the
  host's clock).
- this process reads the node name from that output and polls the node's /api from the
  host, which reaches the compute network's addresses directly (as spawn_latency.py does for
  its floor), every 50 ms. A throwaway container on the network would add its own start;
  an exec per probe would add ~0.1 s per probe.
The floor job asks for what the hub's job asks (cores, memory, partition) and passes its
token as the stack's hub passes its variables, `--export=ALL` (with a name list, even
`ALL,NAME`, Slurm builds the user's login environment on the node first, an `su` that
takes about a second; the stack's cluster sets the backend's export_all).
The hub's own costs (its submit path, its polling, the port report, the proxy route) and
the extra start of the program it runs (jupyterhub-singleuser, measured separately below)
are what the difference shows.

Between runs the cluster is left idle (no job in squeue), so every start finds a free
node. Reports p50/p95 of hub and floor, hub - floor (target: within 1.5 s) and the
ratio. Needs a running site with a Slurm cluster, a compute profile and the dummy
authenticator (``make up`` brings up the example site).

    python benchmarks/compute_spawn_latency.py [--site config/example/site.yaml] [--repeat 8]
        [--profile NAME] [--staging-repeat 3] [--json benchmarks/results/compute_spawn.json]

A profile that runs through Charliecloud (config/example/site-compute-images.yaml's
compute-astro) has the same ch-run command in its floor job, its own target (floor +
1 s), and staging its image after a change timed beside `docker save` (_staging.py).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ADMIN,
    IMPORT_PROBE,
    SERVER_APP,
    SINGLEUSER,
    hub_spawn,
    kernel_round_trip,
    pct,
    print_report,
    versus,
    wait_http,
)
from _staging import measure_staging
from benchhomes import remove_home

from hubdeploy.ops import stack
from hubdeploy.backends.slurm_script import JobOptions, charliecloud_argv, job_options
from hubdeploy.contract import slurmcmd
from hubdeploy.contract.hubjson import HubJson
from hubdeploy.contract.labels import compose_filter
from hubdeploy.contract.layout import (
    COMPUTE_NETWORK,
    NOTEBOOK_USER,
    SLURM_WORKDIR,
    SLURMCTLD_SERVICE,
    slurm_node_service,
    stack_name,
)
from hubdeploy.contract.strict import read
from hubdeploy.images.plan import image_refs
from hubdeploy.smoke.hubclient import HubAPIError, HubClient

TARGET_S = 1.5
# Through a container runtime the target is the floor (the same runtime command
# under sbatch) + 1 s.
RUNTIME_TARGET_S = 1.0
FLOOR_PORT = 8899
SERVER = "bench"
JOB_NAME = "hubdeploy-bench-floor"

# Runs in the controller's container: argv = [job name]; the job script on stdin. Fixed
# text, argv lists only. Prints "submitted T0 JOBID", then "running T HOST" (wall clock).
FLOOR_PROBE = r"""
import subprocess, sys, time
script = sys.stdin.read()
t0 = time.time()
r = subprocess.run(["sbatch", "--parsable", "--job-name=" + sys.argv[1], "--output=/dev/null",
                    "--export=ALL", "/dev/stdin"], input=script, capture_output=True, text=True)
if r.returncode != 0:
    sys.exit("sbatch failed: " + r.stderr)
job = r.stdout.strip().split(";")[0]
print("submitted", repr(t0), job, flush=True)
deadline = t0 + 120
while time.time() < deadline:
    q = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%B"], capture_output=True, text=True)
    t = time.time()
    state, _, host = q.stdout.strip().partition("|")
    if state == "RUNNING":
        print("running", repr(t), host, flush=True)
        sys.exit(0)
    if q.returncode != 0 or state not in ("PENDING", "CONFIGURING"):
        sys.exit("job %s is %r: %s" % (job, state, q.stderr))
    time.sleep(0.02)
sys.exit("job %s not running after 120 s" % job)
"""


# Why the hub's server starts slower than the floor's on the same node: the hub runs


def floor_script(o: JobOptions) -> str:
    """A trivial job asking for what the hub's job asks, that only execs the notebook server."""
    lines = ["#!/bin/bash", "#SBATCH --nodes=1", "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={o.cpus}"]
    if o.mem_mib:
        lines.append(f"#SBATCH --mem={o.mem_mib}M")
    if o.partition:
        lines.append(f"#SBATCH --partition={o.partition}")
    # The same runtime command the hub's job runs (without the node agent's binds: the
    # floor serves on a plain port), then the image's Jupyter.
    runtime = shlex.join(charliecloud_argv(o)) + " " if o.runtime == "charliecloud" else ""
    if runtime:
        lines.append('export USER="$(id -un)"')  # ch-run refuses to start without it
    # /opt/venv/bin: where hubdeploy's images keep Jupyter (the hub's jobs prepend it too).
    lines.append(f"exec {runtime}/opt/venv/bin/jupyter server --ip=0.0.0.0 --port={FLOOR_PORT} --no-browser")
    return "\n".join(lines) + "\n"


class Cluster:
    """The stack's Slurm containers, found by compose labels."""

    def __init__(self, client, project: str, network: str):
        self.client, self.project, self.network = client, project, network

    def container(self, service: str):
        found = self.client.containers.list(
            filters={"label": compose_filter(self.project, service)})
        if not found:
            raise RuntimeError(f"service {service} of {self.project} is not running")
        return found[0]

    def node_ip(self, node: str) -> str:
        c = self.container(slurm_node_service(node))
        return c.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    def ctl(self, *argv: str) -> str:
        res = self.container(SLURMCTLD_SERVICE).exec_run(list(argv), user=NOTEBOOK_USER)
        if res.exit_code != 0:
            raise RuntimeError(f"{argv[0]} exited {res.exit_code}: {res.output.decode()[-300:]}")
        return res.output.decode()

    def associate(self, accounts: list[str]) -> None:
        """The floor's account gets the association the hub gives each user before their
        first job (the stack's cluster enforces associations)."""
        if not accounts:
            return
        res = self.container(SLURMCTLD_SERVICE).exec_run(slurmcmd.add_user_argv(NOTEBOOK_USER, accounts))
        said = res.output.decode()
        if res.exit_code != 0 and not any(word in said for word in slurmcmd.UNCHANGED):
            raise RuntimeError(f"sacctmgr exited {res.exit_code}: {said[-300:]}")

    def wait_idle(self, limit: float = 90) -> None:
        """Until squeue lists no job (completing ones included): every node is free."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.ctl("squeue", "-h", "-o", "%i").strip():
                return
            time.sleep(0.2)
        raise TimeoutError("the cluster still has jobs")

    def cancel_ours(self) -> None:
        self.ctl("scancel", f"--name={JOB_NAME}")

    def import_seconds(self, node: str, module: str) -> float:
        """How long the node's notebook Python takes to import ``module`` (timed inside)."""
        res = self.container(slurm_node_service(node)).exec_run(
            ["/opt/venv/bin/python", "-c", IMPORT_PROBE, module], user=NOTEBOOK_USER, workdir=SLURM_WORKDIR)
        if res.exit_code != 0:
            raise RuntimeError(f"import {module} failed: {res.output.decode()[-300:]}")
        return float(res.output.decode().split()[-1])


def floor_once(cluster: Cluster, script: str) -> dict:
    token = secrets.token_hex(16)
    ctl = cluster.container(SLURMCTLD_SERVICE)
    # -e NAME passes the value from our environment: the token is not in any argv.
    argv = ["docker", "exec", "-i", "-u", NOTEBOOK_USER, "-w", SLURM_WORKDIR, "-e", "JUPYTER_TOKEN",
            ctl.id, "python3", "-c", FLOOR_PROBE, JOB_NAME]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "JUPYTER_TOKEN": token})
    try:
        out, err = proc.communicate(script, timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    try:
        words = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
        if proc.returncode != 0 or "running" not in words:
            raise RuntimeError(f"floor job did not run: {err.strip()[-300:] or out[-300:]}")
        t0 = float(words["submitted"][0])
        running = float(words["running"][0]) - t0
        base = f"http://{cluster.node_ip(words['running'][1])}:{FLOOR_PORT}/"
        wait_http(base + "api/status", {"Authorization": f"token {token}"})
        ready = time.time() - t0
        total = ready + kernel_round_trip(base, token)
        return {"ready": ready, "first_result": total, "sbatch_running": running}
    finally:
        cluster.cancel_ours()
        cluster.wait_idle()


def hub_once(api: HubClient, cluster: Cluster, user: str, profile: str) -> dict:
    try:
        return hub_spawn(api, user, SERVER, profile)
    finally:
        cluster.wait_idle()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="config/example/site.yaml")
    ap.add_argument("--repeat", type=int, default=8, help="hub spawns and floor jobs, each")
    ap.add_argument("--json", dest="json_out", default="benchmarks/results/compute_spawn.json")
    ap.add_argument("--profile", help="compute profile (default: the site's first)")
    ap.add_argument("--staging-repeat", type=int, default=3,
                    help="for a profile staged for a runtime: restage its image this often, beside docker save")
    args = ap.parse_args()

    prep = stack.prepare(Path(args.site))
    if prep.site.hub.authenticator.class_ != "dummy":
        print("the benchmark logs users in through the dummy authenticator's form", file=sys.stderr)
        return 2
    profile = next((p for p in prep.site.profiles if p.node == "compute" and args.profile in (None, p.name)), None)
    if profile is None or prep.site.slurm is None or prep.site.slurm.cluster is None:
        print("the site needs a Slurm cluster in the stack and a compute profile", file=sys.stderr)
        return 2
    # The floor job asks for what the profile's job asks (slurm_script.job_options).
    hub = read(HubJson, json.loads(prep.files["hub/hub.json"]), "hub/hub.json")
    hub_profile = next(p for p in hub.spawner.profiles if p.name == profile.name)
    script = floor_script(job_options(hub_profile))

    client = docker.from_env()
    cluster = Cluster(client, prep.project, stack_name(prep.project, COMPUTE_NETWORK))
    admin = HubClient(prep.url)
    admin.login(ADMIN, str(prep.site.hub.authenticator.config.get("password", "")))
    admin_token, _ = admin.create_token(ADMIN, scopes=None, expires_in=3600, note="benchmark")
    api = HubClient(prep.url, token=admin_token)
    user = "bench-compute"
    api.create_user(user)
    # A server or job left by an interrupted earlier run would refuse the first start.
    api.stop_server(user, SERVER, time.monotonic() + 120)
    cluster.cancel_ours()
    cluster.wait_idle()
    cluster.associate(list(hub.spawner.backends.get("slurm", {}).get("association_accounts") or []))

    hub: list[dict] = []
    floor: list[dict] = []
    imports: list[dict] = []
    failures: list[str] = []

    def attempt(kind: str, fn, into: list) -> bool:
        try:
            into.append(fn())
            return True
        except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, it does not stop
            failures.append(f"{kind}: {type(exc).__name__}: {str(exc)[:300]}")
            return False

    try:
        # Warm both paths once (page cache of the image on the nodes, the hub's imports).
        attempt("warm-up floor", lambda: floor_once(cluster, script), [])
        attempt("warm-up hub", lambda: hub_once(api, cluster, user, profile.name), [])
        for i in range(args.repeat):
            # Alternate which goes first, so neither always follows the other's cleanup.
            pair = [("floor", lambda: floor_once(cluster, script), floor),
                    ("hub", lambda: hub_once(api, cluster, user, profile.name), hub)]
            for kind, fn, into in (pair if i % 2 == 0 else pair[::-1]):
                ok = attempt(kind, fn, into)
                print(f"{kind:>5} {i}: " + (" ".join(f"{k} {v:.2f}s" for k, v in into[-1].items())
                                            if ok else failures[-1]), flush=True)
            # The cluster is idle here: time both programs' imports on the node jobs use.
            attempt("imports", lambda: {m: cluster.import_seconds("c1", m) for m in (SINGLEUSER, SERVER_APP)},
                    imports)
    finally:
        # Clean up whatever happened above; a failure here is reported, not raised.
        for what, fn in (("delete user", lambda: api.delete_user(user)),
                         ("cancel floor jobs", cluster.cancel_ours)):
            try:
                fn()
            except (RuntimeError, HubAPIError, docker.errors.DockerException) as exc:
                failures.append(f"cleanup, {what}: {exc}")
        remove_home(client, prep, user)

    staged = prep.site.staged(profile)
    target = RUNTIME_TARGET_S if staged else TARGET_S
    staging = None
    if staged and args.staging_repeat > 0:
        refs = image_refs(prep.plans)
        try:
            staging = measure_staging(client, Path(args.site), profile.image, refs[profile.image],
                                      refs["base"], args.staging_repeat)
        except (RuntimeError, subprocess.SubprocessError, docker.errors.DockerException) as exc:
            failures.append(f"staging: {type(exc).__name__}: {str(exc)[:300]}")
    result = {
        "case": "compute node, concurrency 1" + (f", through {hub_profile.slurm.runtime}" if staged else ""),
        "profile": profile.name,
        "target_diff_s": target,
        "staging": staging,
        "load_average": os.getloadavg(),
        "failures": failures,
        "ready": versus([r["ready"] for r in hub], [r["ready"] for r in floor]),
        "first_result": versus([r["first_result"] for r in hub], [r["first_result"] for r in floor]),
        "floor_sbatch_to_running": {
            "p50": round(pct([r["sbatch_running"] for r in floor], 0.5), 3),
            "p95": round(pct([r["sbatch_running"] for r in floor], 0.95), 3),
        },
        "singleuser_extra_import": {
            "p50": round(pct([r[SINGLEUSER] - r[SERVER_APP] for r in imports], 0.5), 3),
            "note": f"import {SINGLEUSER} minus import {SERVER_APP} on a node: the part of the "
                    "difference that is the program the hub starts, not hubdeploy's path",
        },
        "samples": {"hub": hub, "floor": floor, "imports": imports},
    }
    s = result["floor_sbatch_to_running"]
    diff = result["ready"]["diff_p50"]
    lines = [f"sbatch -> RUNNING (floor job): p50 {s['p50']:.3f}s p95 {s['p95']:.3f}s", "on a node",
             f"target: ready p50 within {target} s of the floor -> {diff:+.2f}s "
             f"({'met' if diff <= target else 'not met'})"]
    if staging:
        lines.append(f"staging a changed {staging['image']}: p50 {staging['stage_p50_s']:.1f}s vs docker save "
                     f"{staging['docker_save_p50_s']:.1f}s = {staging['ratio']:.2f}x (target <= "
                     f"{staging['target_ratio']:.0f}x: {'met' if staging['met'] else 'not met'})")
    print_report(result, failures, lines[0], lines[1], "\n".join(lines[2:]), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
