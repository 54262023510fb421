"""The notebook backends' names, and what the spawner keeps of a server's backend state.

The names are the backends' entry points (``hubdeploy.backends`` in pyproject.toml),
which hub.json's ``spawner.backend`` and ``spawner.backends`` name and ``hubdeploy
orphans`` reports. The saved state is what :class:`hubdeploy.hub.spawner.HubdeploySpawner`
puts into JupyterHub's spawner state, which the hub database keeps across restarts and
:mod:`hubdeploy.hub.orphans` reads back through the hub's REST API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

# Login-node containers on the stack's engine.
DOCKER = "docker"
# Jobs on a Slurm cluster: the stack's own or a site's.
SLURM = "slurm"
# Services of a Docker swarm (orchestrator swarm).
SWARM = "swarm"

# The key of hubdeploy's part of a server's spawner state.
STATE_KEY = "hubdeploy"


class SavedState(TypedDict):
    """hubdeploy's part of a server's spawner state."""

    backend: str  # the name of the backend that started the server
    state: dict[str, Any]  # that backend's per-server state (opaque here)


def saved_state(backend: str, state: Mapping[str, Any]) -> SavedState:
    """What the spawner saves under :data:`STATE_KEY`."""
    return {"backend": backend, "state": dict(state)}


def read_saved_state(spawner_state: Mapping[str, Any] | None) -> SavedState | None:
    """hubdeploy's part of a spawner state, or None when it has none (a server that never
    started, a state saved by another spawner)."""
    saved = (spawner_state or {}).get(STATE_KEY)
    if not isinstance(saved, Mapping) or not saved:
        return None
    return {"backend": saved.get("backend") or "", "state": dict(saved.get("state") or {})}
