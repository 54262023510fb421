"""What the hub adds to JupyterHub's own /hub/metrics, and the summary ``status`` shows
(``hubdeploy status --json``: ``spawns``).

JupyterHub counts finished spawns by outcome (``jupyterhub_server_spawn_duration_seconds``
with its ``status`` label) but has no gauge of starts in flight; hubdeploy's spawn queue
knows those: the starts holding a slot and the ones waiting in line for one.
"""

from __future__ import annotations

from typing import Any

STARTING = "hubdeploy_spawns_starting"
WAITING = "hubdeploy_spawns_waiting"
SPAWNS = "jupyterhub_server_spawn_duration_seconds"
RUNNING = "jupyterhub_running_servers"

_gauges: dict[str, Any] = {}


def observe(running: int, waiting: int) -> None:
    """Set the queue gauges (registered in the hub's metrics on first use)."""
    if not _gauges:
        from prometheus_client import Gauge

        _gauges[STARTING] = Gauge(STARTING, "Notebook starts in progress (each holds a slot of "
                                  "hub.concurrent_spawn_limit)")
        _gauges[WAITING] = Gauge(WAITING, "Notebook starts waiting in line for a slot")
    _gauges[STARTING].set(running)
    _gauges[WAITING].set(waiting)


def summary(text: str) -> dict[str, Any]:
    """Spawn counts by outcome, running servers and starts in flight, from the text of
    /hub/metrics (Prometheus exposition format)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"spawns": {}, "running": None, "starting": None, "waiting": None}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{SPAWNS}_count":
                status = sample.labels.get("status", "")
                out["spawns"][status] = out["spawns"].get(status, 0) + int(sample.value)
            elif sample.name in (RUNNING, STARTING, WAITING):
                key = {RUNNING: "running", STARTING: "starting", WAITING: "waiting"}[sample.name]
                out[key] = int(sample.value)
    return out
