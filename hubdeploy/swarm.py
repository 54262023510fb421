"""The operator's side of ``orchestrator: swarm``: what ``up`` checks and ``down`` removes.

The hub starts login-node servers as swarm services (hubdeploy.backends.swarm); the rest
of the stack is compose on the manager. ``down`` removes what compose does not know:
services the hub could not stop, their account configs, and the attachable overlay
network a just-stopped task was still leaving when compose tried.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import docker.errors

from hubdeploy.contract.layout import LABEL_SITE, LABEL_USER
from hubdeploy.errors import OperationError

# Seconds to wait for the manager to let go of a removed service's configs and networks.
RELEASE_WAIT = 30


def require_manager(client) -> None:
    """hubdeploy never creates or joins a swarm: which machines belong to the facility's
    swarm is the operator's decision."""
    state = client.info().get("Swarm") or {}
    if state.get("LocalNodeState") != "active" or not state.get("ControlAvailable"):
        raise OperationError(
            "orchestrator is swarm, but this Docker engine is not a swarm manager",
            hint="docker swarm init --advertise-addr ADDRESS (or run up on a manager), or set orchestrator: compose",
        )


def remove_leftovers(client, site: str) -> list[str]:
    """Remove the site's notebook services and their configs; the services' names."""
    services = client.services.list(filters={"label": [f"{LABEL_SITE}={site}", LABEL_USER]})
    for svc in services:
        svc.remove()
    _remove_when_free(client.configs.list(filters={"label": f"{LABEL_SITE}={site}"}))
    return [svc.name for svc in services]


def remove_project_networks(client, project: str) -> None:
    _remove_when_free(client.networks.list(filters={"label": f"com.docker.compose.project={project}"}))


def _remove_when_free(objects: Iterable) -> None:
    """Remove each object, retrying while the engine says it is still in use (bounded)."""
    deadline = time.monotonic() + RELEASE_WAIT
    for obj in objects:
        while True:
            try:
                obj.remove()
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
