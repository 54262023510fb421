"""What a swarm service's tasks say about its one notebook server (pure functions).

A notebook server is a one-replica service with restart condition ``none``: its task
runs once, and when it ends the service stays with no running task. Swarm keeps a
task that no node can take in ``pending`` with the scheduler's reason in ``Status.Err``
(``no suitable node (scheduling constraints not satisfied on 1 node)``), forever; the
backend shows that reason and fails the start with it instead of a bare timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hubdeploy.contract.hubjson import Profile

# Task states from the Engine API (swarm/api/types.proto), in lifecycle order.
STARTING = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting")
RUNNING = "running"
ENDED = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")


@dataclass(frozen=True)
class TaskView:
    """The newest task of a service, as the backend needs it.

    ``phase``: ``starting``, ``running``, ``ended``, ``unschedulable`` (pending with a
    scheduler error) or ``none`` (no task yet); ``reason`` is swarm's own text.
    """

    phase: str
    state: str = ""
    reason: str = ""
    exit_code: int = 0
    node: str = ""
    container_id: str = ""


def newest(tasks: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The most recently created task (a restarted service leaves older ones behind)."""
    tasks = list(tasks)
    if not tasks:
        return None
    return max(tasks, key=lambda t: ((t.get("Version") or {}).get("Index", 0), t.get("CreatedAt", "")))


def view(tasks: Iterable[Mapping[str, Any]]) -> TaskView:
    """Judge a service's tasks (``GET /tasks?filters={"service": ...}``)."""
    task = newest(tasks)
    if task is None:
        return TaskView("none")
    status = task.get("Status") or {}
    state = str(status.get("State") or "")
    err = str(status.get("Err") or "")
    cstat = status.get("ContainerStatus") or {}
    common = {
        "state": state,
        "node": str(task.get("NodeID") or ""),
        "container_id": str(cstat.get("ContainerID") or ""),
    }
    if state == RUNNING:
        return TaskView("running", **common)
    if state in ENDED:
        reason = err or str(status.get("Message") or state)
        return TaskView("ended", reason=reason, exit_code=int(cstat.get("ExitCode") or 0), **common)
    if state == "pending" and err:
        return TaskView("unschedulable", reason=err, **common)
    return TaskView("starting", reason=err or str(status.get("Message") or ""), **common)


def placement(profile: Profile) -> dict[str, Any]:
    """``docker.types.Placement`` arguments from a profile's ``placement`` (schema:
    ``constraints``: ``node.labels.role==login`` and the like, ``spread``: label names
    to spread servers over, e.g. ``node.labels.rack``)."""
    spec = profile.placement
    out: dict[str, Any] = {}
    if spec is not None and spec.constraints:
        out["constraints"] = list(spec.constraints)
    if spec is not None and spec.spread:
        out["preferences"] = [("spread", label) for label in spec.spread]
    return out


def resources(profile: Profile) -> dict[str, Any]:
    """The task's ``Resources`` (Engine API shape): limits from the profile's ``cpu`` and
    ``mem_limit``, reservations from its ``reserve`` (``cpu`` cores, ``mem`` bytes), and
    its pids limit, so one user's fork bomb stops inside their own server."""
    limits: dict[str, Any] = {"Pids": profile.pids_limit}
    if profile.cpu:
        limits["NanoCPUs"] = int(profile.cpu * 1e9)
    if profile.mem_limit:
        limits["MemoryBytes"] = profile.mem_limit
    reserve = profile.reserve
    reservations: dict[str, Any] = {}
    if reserve is not None and reserve.cpu:
        reservations["NanoCPUs"] = int(reserve.cpu * 1e9)
    if reserve is not None and reserve.mem:
        reservations["MemoryBytes"] = reserve.mem
    out: dict[str, Any] = {}
    if limits:
        out["Limits"] = limits
    if reservations:
        out["Reservations"] = reservations
    return out
