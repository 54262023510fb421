"""Swarm login-node spawn latency against its floor, measured in the same run.

Hub path: POST /hub/api/users/U/servers/bench with the site's default profile, which the
swarm backend runs as a one-replica swarm service -> the hub says ready and the proxy
answers the server's /api/status ("ready"), then -> first kernel result (`5*4` over the
kernel websocket, through the proxy).

Floor, interleaved with the hub runs (floor, hub, hub, floor, ...), so both see the same
machine: `docker service create` (the same Engine API call, through the docker SDK) of
the same image running plain `jupyter server` with a token, one replica, restart
condition none, dnsrr endpoints as the backend uses, on the site's users overlay
network -> its /api/status answers, then the same kernel round trip straight to it.

How the floor is reached: this host has no address on an overlay network, but a swarm
task on an overlay network with a way out also has an address on ``docker_gwbridge``, a
bridge on the node that runs it. The floor is pinned to this node (the manager the
benchmark talks to) and polled there every 50 ms, from the moment its container exists.
That way skips the overlay hop the proxy takes to the hub's server, so the floor is, if
anything, a little faster than a server reached as users reach it.

The difference is the hub's own path (its spawn request, the backend's account configs,
task polling, the route) plus the extra start of the program it runs
(jupyterhub-singleuser over jupyter server, measured separately below). Target (issue
#11): ready p50 at most 1.3x the floor.

Needs a running site with ``orchestrator: swarm`` and the dummy authenticator on an
engine that is a swarm manager; the benchmark never makes or leaves a swarm and exits 2
when the engine is not a manager. On a machine of your own:

    docker swarm init --advertise-addr 127.0.0.1     # once, if `docker info` says inactive
    hubdeploy --site config/example/site-swarm.yaml up
    python benchmarks/swarm_spawn_latency.py --site config/example/site-swarm.yaml [--repeat 8]
        [--json benchmarks/results/swarm_spawn.json]
    hubdeploy --site config/example/site-swarm.yaml down

Every floor service it creates carries its name prefix and is removed after each sample,
and again at the end (also on Ctrl-C, SIGTERM or a failure).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

import docker
import docker.errors
from docker.types import EndpointSpec, RestartPolicy, ServiceMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    FLOOR_CMD,
    SERVER_APP,
    SINGLEUSER,
    Bench,
    hub_spawn,
    image_import_seconds,
    kernel_round_trip,
    open_site,
    pct,
    print_report,
    remove_users,
    site_args,
    versus,
    wait_http,
)

from hubdeploy.ops import stack, swarm
from hubdeploy.contract.labels import SWARM_SERVICE_ID
from hubdeploy.errors import OperationError

TARGET_RATIO = 1.3
SERVER = "bench"
USER = "bench-swarm"
GWBRIDGE = "docker_gwbridge"
# Seconds to wait for a removed floor service's container to be gone, so the next sample
# starts on an idle node.
GONE_WAIT = 30


def floor_prefix(bench: Bench) -> str:
    return f"{bench.project}-swfloor-"


def floor_once(bench: Bench, node_id: str, limit: float = 120) -> dict:
    """One floor service: seconds to /api/status ("ready"), to the first kernel result
    ("first_result"), and to its task's container existing ("container"). Removed after."""
    token = secrets.token_hex(16)
    api = bench.client.api
    t0 = time.monotonic()
    svc = bench.client.services.create(
        bench.image, command=FLOOR_CMD, name=floor_prefix(bench) + secrets.token_hex(4),
        env=[f"JUPYTER_TOKEN={token}"], networks=[bench.network],
        mode=ServiceMode("replicated", replicas=1), restart_policy=RestartPolicy(condition="none"),
        endpoint_spec=EndpointSpec(mode="dnsrr"), constraints=[f"node.id=={node_id}"],
    )
    try:
        cid = wait_container(api, svc.id, t0 + limit)
        created = time.monotonic() - t0
        base = f"http://{gwbridge_ip(api, cid, t0 + limit)}:8888/"
        left = max(1.0, t0 + limit - time.monotonic())
        wait_http(base + "api/status", {"Authorization": f"token {token}"}, limit=left)
        ready = time.monotonic() - t0
        first = ready + kernel_round_trip(base, token)
        return {"ready": ready, "first_result": first, "container": created}
    finally:
        remove_service(bench, svc.id)


def wait_container(api, service_id: str, deadline: float) -> str:
    """The id of the service's task container once the task runs; RuntimeError with
    swarm's reason when the task ends first, TimeoutError at ``deadline``."""
    last = "no task yet"
    while time.monotonic() < deadline:
        for task in api.tasks(filters={"service": service_id}):
            status = task.get("Status", {})
            cid = status.get("ContainerStatus", {}).get("ContainerID")
            if status.get("State") == "running" and cid:
                return cid
            if status.get("State") in ("failed", "rejected", "shutdown", "complete", "orphaned"):
                raise RuntimeError(f"floor task {status.get('State')}: {status.get('Err') or status.get('Message')}")
            last = f"{status.get('State')}: {status.get('Message')}"
        time.sleep(0.05)
    raise TimeoutError(f"floor task did not run ({last})")


def gwbridge_ip(api, container_id: str, deadline: float) -> str:
    """The container's address on this node's docker_gwbridge."""
    while time.monotonic() < deadline:
        ep = api.inspect_network(GWBRIDGE).get("Containers", {}).get(container_id)
        if ep and ep.get("IPv4Address"):
            return ep["IPv4Address"].split("/")[0]
        time.sleep(0.05)
    raise TimeoutError(f"the floor's container has no address on {GWBRIDGE}")


def remove_service(bench: Bench, service_id: str) -> None:
    """Remove a floor service and wait (bounded) until its container is gone."""
    try:
        bench.client.api.remove_service(service_id)
    except docker.errors.NotFound:
        return
    deadline = time.monotonic() + GONE_WAIT
    label = f"{SWARM_SERVICE_ID}={service_id}"
    while time.monotonic() < deadline and bench.client.api.containers(all=True, filters={"label": label}):
        time.sleep(0.2)


def remove_floor_services(bench: Bench) -> list[str]:
    """Every floor service of this site's benchmark, also an interrupted run's."""
    gone = []
    for svc in bench.client.services.list(filters={"name": floor_prefix(bench)}):
        if svc.name.startswith(floor_prefix(bench)):  # the name filter matches more than prefixes
            remove_service(bench, svc.id)
            gone.append(svc.name)
    return gone


def report(hub: list[dict], floor: list[dict], imports: list[dict], failures: list[str], profile: str) -> dict:
    """The run's JSON result (pure: samples in, summary out)."""
    ready = versus([r["ready"] for r in hub], [r["ready"] for r in floor])
    return {
        "case": "swarm login node, concurrency 1",
        "profile": profile,
        "target_ratio_p50": TARGET_RATIO,
        "target_met": ready["ratio_p50"] <= TARGET_RATIO,
        "failures": failures,
        "ready": ready,
        "first_result": versus([r["first_result"] for r in hub], [r["first_result"] for r in floor]),
        "floor_create_to_container": {"p50": round(pct([r["container"] for r in floor], 0.5), 3),
                                      "p95": round(pct([r["container"] for r in floor], 0.95), 3)},
        "singleuser_extra_import": {
            "p50": round(pct([r[SINGLEUSER] - r[SERVER_APP] for r in imports], 0.5), 3),
            "note": f"import {SINGLEUSER} minus import {SERVER_APP} in the profile's image: the part "
                    "of the difference that is the program the hub starts, not hubdeploy's path",
        },
        "samples": {"hub": hub, "floor": floor, "imports": imports},
    }


def _terminate(signum, frame):
    # SIGTERM (make, CI) cleans up as Ctrl-C does: through the finally blocks.
    raise KeyboardInterrupt


def main() -> int:
    ap = site_args(__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=8, help="hub spawns and floor services, each")
    ap.set_defaults(json_out="benchmarks/results/swarm_spawn.json")
    args = ap.parse_args()
    if args.repeat < 1:
        print("--repeat: at least 1", file=sys.stderr)
        return 2

    # Both checks before any side effect: the benchmark never makes or leaves a swarm.
    if stack.prepare(Path(args.site)).site.orchestrator != "swarm":
        print(f"{args.site}: orchestrator: the benchmark needs a site with orchestrator: swarm", file=sys.stderr)
        return 2
    try:
        swarm.require_manager(docker.from_env())
    except OperationError as exc:
        print(exc, file=sys.stderr)
        return 2
    bench = open_site(args.site, token_seconds=3600)
    node_id = bench.client.info()["Swarm"]["NodeID"]
    signal.signal(signal.SIGTERM, _terminate)

    api = bench.api
    api.create_user(USER)
    # A server or floor left by an interrupted earlier run would skew the first sample.
    api.stop_server(USER, SERVER, time.monotonic() + 120)
    remove_floor_services(bench)

    hub: list[dict] = []
    floor: list[dict] = []
    imports: list[dict] = []
    failures: list[str] = []
    interrupted = False

    def attempt(kind: str, fn, into: list) -> bool:
        try:
            into.append(fn())
            return True
        except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, it does not stop
            failures.append(f"{kind}: {type(exc).__name__}: {str(exc)[:300]}")
            return False

    def floor_run():
        return floor_once(bench, node_id)

    def hub_run():
        return hub_spawn(api, USER, SERVER, bench.profile.name)

    try:
        # Warm both paths once (the image's pages, the hub's and the manager's caches).
        attempt("warm-up floor", floor_run, [])
        attempt("warm-up hub", hub_run, [])
        for i in range(args.repeat):
            # Alternate which goes first, so neither always follows the other's cleanup.
            pair = [("floor", floor_run, floor), ("hub", hub_run, hub)]
            for kind, fn, into in (pair if i % 2 == 0 else pair[::-1]):
                ok = attempt(kind, fn, into)
                print(f"{kind:>5} {i}: " + (" ".join(f"{k} {v:.2f}s" for k, v in into[-1].items())
                                            if ok else failures[-1]), flush=True)
        for _ in range(min(args.repeat, 5)):
            attempt("imports", lambda: {m: image_import_seconds(bench.client, bench.image, m)
                                        for m in (SINGLEUSER, SERVER_APP)}, imports)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            left = remove_floor_services(bench)
            if left:
                failures.append(f"cleanup: removed floor services {left}")
        except docker.errors.DockerException as exc:
            failures.append(f"cleanup, floor services: {exc}")
        remove_users(bench, [USER])

    if interrupted:
        print("interrupted; the benchmark's floor services and user are removed", file=sys.stderr)
        return 130
    result = {**report(hub, floor, imports, failures, bench.profile.name), "load_average": os.getloadavg()}
    c = result["floor_create_to_container"]
    print_report(result, failures,
                 f"service create -> task container (floor): p50 {c['p50']:.3f}s p95 {c['p95']:.3f}s",
                 "same image",
                 f"target: ready p50 at most {TARGET_RATIO}x the floor -> {result['ready']['ratio_p50']:.2f}x "
                 f"({'met' if result['target_met'] else 'not met'})",
                 args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
