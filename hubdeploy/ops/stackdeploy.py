"""The stack of orchestrator swarm on the engine: deploy it, wait for it, read it, remove it.

``up`` hands ``rendered/stack.yaml`` (:mod:`hubdeploy.render.swarmstack`) to ``docker
stack deploy``, the CLI operators also have, and waits until every service's task runs
and passes its health check. Services, tasks and containers are found by swarm's own
labels (:func:`hubdeploy.contract.labels.stack_filter`); a service's
short name is the compose service's name, so ``status`` and ``logs`` read the same for
both orchestrators.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

import docker.errors

from hubdeploy.contract.labels import stack_filter
from hubdeploy.contract.layout import swarm_service
from hubdeploy.errors import OperationError

STACK_FILE = "stack.yaml"
# Where the state directory records the manager the stack's services run on.
CONTROL_NODE_FILE = "swarm-node"
# Seconds for `docker stack deploy` itself (it returns once the specs are sent).
DEPLOY_TIMEOUT = 300
# Seconds `down` waits for the tasks, networks, secrets and configs to go.
REMOVE_WAIT = 90
# Seconds after a deploy for swarm's manager to begin the updates it decides on.
SETTLE = 2
# UpdateStatus.State values of an update still under way, and of one swarm undid.
IN_PROGRESS = {"updating", "paused", "rollback_started", "rollback_paused"}
ROLLED_BACK = {"rollback_completed", "rollback_paused"}
# Where the state directory keeps the hash of the stack file last deployed and healthy.
DEPLOYED_FILE = "swarm-deployed"
# swarm's words when a secret or config of the same name holds other bytes.
IMMUTABLE = "only updates to Labels are allowed"


def control_node(state: Path, client=None) -> str:
    """The node id of the manager the site's services run on: the one recorded by the
    first ``up``, else this engine's own when it manages a swarm, else ''."""
    path = state / CONTROL_NODE_FILE
    if path.is_file():
        return path.read_text().strip()
    if client is None:
        from hubdeploy.ops.engine import docker_client

        try:
            client = docker_client()
        except OperationError:
            return ""
    swarm = client.info().get("Swarm") or {}
    return swarm.get("NodeID", "") if swarm.get("ControlAvailable") else ""


def record_control_node(state: Path, node_id: str) -> None:
    path = state / CONTROL_NODE_FILE
    if node_id and (not path.is_file() or path.read_text().strip() != node_id):
        path.write_text(node_id + "\n")


def confirm_control_node(client, project: str, recorded: str, state: Path) -> str:
    """The node the stack's services are placed on, checked against this swarm.

    A recorded node this swarm does not know means its swarm is gone (a swarm forgets a
    node only when it is removed): placed there, every service would wait for a node that
    never comes. When this engine holds the stack's volumes, the data lives here, so the
    services move to this manager (``up`` records it); otherwise refuse, as the data may
    be on the machine that recorded the node.
    """
    try:
        client.nodes.get(recorded)
        return recorded
    except docker.errors.NotFound:
        pass
    path = state / CONTROL_NODE_FILE
    if client.volumes.list(filters={"label": stack_filter(project)}):
        return client.info()["Swarm"]["NodeID"]
    raise OperationError(
        f"{path} places the stack's services on swarm node {recorded}, which this swarm does not have, "
        "and the stack's volumes are not on this engine",
        hint=f"run up on the manager that holds the site's data, or remove {path} to start the services "
             "on this manager",
    )


def _digest(stack_file: Path) -> str:
    return hashlib.sha256(stack_file.read_bytes()).hexdigest()


def deployed_unchanged(state: Path, stack_file: Path, rows: list[dict[str, Any]], expected: set[str]) -> bool:
    """Whether the stack file is the one last deployed (and found healthy) and every
    service it names runs healthy now (``rows``: :func:`service_rows`): then ``up`` sends
    nothing to the swarm. As compose keeps a container whose configuration hash is
    unchanged, a service an operator changed by hand stays as it is until the site
    changes; one that is missing or down is deployed again."""
    path = state / DEPLOYED_FILE
    if not path.is_file() or path.read_text().strip() != _digest(stack_file):
        return False
    return expected <= {r["service"] for r in rows if r["state"] == "running" and r["health"] in (None, "healthy")}


def record_deployed(state: Path, stack_file: Path) -> None:
    (state / DEPLOYED_FILE).write_text(_digest(stack_file) + "\n")


def forget_deployed(state: Path) -> None:
    (state / DEPLOYED_FILE).unlink(missing_ok=True)


def deploy(project: str, stack_file: Path) -> None:
    """``docker stack deploy``: create or update every service, network, secret and
    config of the file, and remove services the file no longer has (``--prune``)."""
    argv = ["docker", "stack", "deploy", "--compose-file", str(stack_file), "--prune",
            "--resolve-image", "never", project]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT,
                              cwd=stack_file.parent, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(f"docker stack deploy did not run: {exc}") from None
    if proc.returncode != 0:
        said = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()][-5:]
        hint = None
        if any(IMMUTABLE in line for line in said):
            hint = ("a secret changed since the stack was deployed, and swarm secrets cannot change: "
                    "`hubdeploy down`, then `up` (volumes are kept)")
        raise OperationError("docker stack deploy failed:" + "".join(f"\n  {line}" for line in said), hint=hint)


def _short(project: str, name: str) -> str:
    return name.removeprefix(swarm_service(project, ""))


def is_manager(client) -> bool:
    return bool((client.info().get("Swarm") or {}).get("ControlAvailable"))


def stack_services(client, project: str) -> list:
    """The stack's swarm services; none on an engine that manages no swarm."""
    if not is_manager(client):
        return []
    return client.services.list(filters={"label": stack_filter(project)})


def _current_task(service) -> dict[str, Any] | None:
    """The task that should be running (desired state running), else the newest one."""
    tasks = service.tasks()
    if not tasks:
        return None
    wanted = [t for t in tasks if t.get("DesiredState") == "running"]
    return max(wanted or tasks, key=lambda t: t.get("UpdatedAt", ""))


def _health(client, container_id: str) -> str | None:
    try:
        state = client.api.inspect_container(container_id).get("State") or {}
    except docker.errors.NotFound:
        return None
    return (state.get("Health") or {}).get("Status")


def service_rows(client, project: str, since: str | None = None) -> list[dict[str, Any]]:
    """One row per service, in the shape compose's services have (service, state,
    health, container), with swarm's error for a task that failed, and the state of the
    service's update (``updating``...) when one began at or after ``since``."""
    rows = []
    for svc in stack_services(client, project):
        task = _current_task(svc)
        status = (task or {}).get("Status") or {}
        cid = (status.get("ContainerStatus") or {}).get("ContainerID") or ""
        state = status.get("State", "pending")
        rows.append({
            "service": _short(project, svc.name),
            "state": state,
            "health": _health(client, cid) if cid and state == "running" else None,
            "container": cid[:12] or None,
            "error": status.get("Err") or None,
            "update": _update_state(svc, since),
        })
    return sorted(rows, key=lambda r: r["service"])


def _update_state(service, since: str | None) -> str | None:
    """The state of the service's rolling update (``updating``, ``completed``,
    ``rollback_completed``...) if one began at or after ``since`` (an engine time), else
    None."""
    status = service.attrs.get("UpdateStatus") or {}
    began = _engine_time(status.get("StartedAt"))
    return status.get("State") if since and began and began >= _engine_time(since) else None


def engine_now(client) -> str:
    """The engine's clock (RFC 3339), which swarm's update times are in."""
    return client.info()["SystemTime"]


def _engine_time(text: str | None) -> str:
    """The engine's RFC 3339 UTC time (Go trims the fraction's trailing zeros) as a string
    that sorts as the time does: the fraction padded to nanoseconds; '' for none."""
    if not text:
        return ""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return f"{whole}.{fraction:0<9}"


def wait_healthy(client, project: str, expected: set[str], timeout: float, *,
                 deployed_at: str | None = None) -> list[dict[str, Any]]:
    """Wait until every expected service's task runs and is healthy (when it has a check);
    the rows then, or OperationError with each unhealthy service's state, error and log.

    After a deploy (``deployed_at``, :func:`engine_now` just before it), a healthy task may
    be one swarm is about to replace: the manager compares each service's new spec with
    its tasks' on its own and starts an update (stop-first: the old task goes first) a
    moment later, if at all. So wait :data:`SETTLE` seconds for updates to begin, then
    until none that began since is in progress; an update swarm rolled back fails ``up``
    with swarm's message.
    """
    started = time.monotonic()
    deadline = started + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = service_rows(client, project, deployed_at)
        rolled = [r for r in rows if r["update"] in ROLLED_BACK]
        if rolled:
            raise OperationError("swarm rolled back an update of " + ", ".join(r["service"] for r in rolled)
                                 + ":\n" + unhealthy_report(project, rows))
        ready = {r["service"] for r in rows if r["state"] == "running" and r["health"] in (None, "healthy")
                 and r["update"] not in IN_PROGRESS}
        if expected <= ready and (deployed_at is None or time.monotonic() - started >= SETTLE):
            return rows
        time.sleep(1)
    raise OperationError("the stack did not become healthy:\n" + unhealthy_report(project, rows))


def unhealthy_report(project: str, rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        update = f" (update {r['update']})" if r["update"] and r["update"] != "completed" else ""
        lines.append(f"  {r['service']}: {r['state']} {r['health'] or ''} {r['error'] or ''}".rstrip() + update)
        if r["state"] != "running" or r["health"] not in (None, "healthy"):
            proc = subprocess.run(["docker", "service", "logs", "--no-trunc", "--tail", "15",
                                   swarm_service(project, r["service"])],
                                  capture_output=True, text=True, timeout=60, check=False)
            lines += [f"    | {line}" for line in (proc.stdout + proc.stderr).splitlines()[-15:]]
    return "\n".join(lines)


def logs(project: str, services: list[str], follow: bool, tail: str) -> int:
    """``docker service logs`` of each service, all at once with ``follow``, on standard
    output as compose prints them (swarm keeps a task's stderr on stderr); the worst exit
    code."""
    argv = ["docker", "service", "logs", "--tail", tail] + (["--follow"] if follow else [])
    procs = [subprocess.Popen([*argv, swarm_service(project, s)], stderr=subprocess.STDOUT) for s in services]
    try:
        return max((p.wait() for p in procs), default=0)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 0


def remove(client, project: str, *, volumes: bool) -> list[str]:
    """``docker stack rm``, then wait (bounded) until its tasks, networks, secrets and
    configs are gone; with ``volumes`` also its volumes. Returns the volumes removed."""
    if stack_services(client, project) or _leftovers(client, project):
        proc = subprocess.run(["docker", "stack", "rm", project], capture_output=True, text=True, timeout=120,
                              check=False)
        if proc.returncode != 0:
            raise OperationError(f"docker stack rm failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    deadline = time.monotonic() + REMOVE_WAIT
    while _leftovers(client, project) and time.monotonic() < deadline:
        time.sleep(1)
    left = _leftovers(client, project)
    if left:
        raise OperationError(f"docker stack rm left {', '.join(left)} after {REMOVE_WAIT} s")
    removed = []
    if volumes:
        for v in client.volumes.list(filters={"label": stack_filter(project)}):
            v.remove(force=True)
            removed.append(v.name)
    return removed


def _leftovers(client, project: str) -> list[str]:
    """What of the stack still exists: task containers, networks, secrets, configs."""
    label = {"label": stack_filter(project)}
    out = [f"container {c.name}" for c in client.containers.list(all=True, filters=label)]
    out += [f"network {n.name}" for n in client.networks.list(filters=label)]
    out += [f"secret {s.name}" for s in client.secrets.list(filters=label)]
    out += [f"config {c.name}" for c in client.configs.list(filters=label)]
    return out
