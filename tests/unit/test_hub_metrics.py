"""The hub's spawn metrics: the queue's gauges in JupyterHub's registry, and the summary
``status`` reads from /hub/metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, generate_latest

from hubdeploy.cli.stack import _describe_spawns
from hubdeploy.hub import metrics
from hubdeploy.hub.spawnqueue import SpawnQueue

TEXT = """\
# HELP jupyterhub_server_spawn_duration_seconds Time taken for server spawning operation
# TYPE jupyterhub_server_spawn_duration_seconds histogram
jupyterhub_server_spawn_duration_seconds_bucket{le="0.5",status="success"} 1.0
jupyterhub_server_spawn_duration_seconds_count{status="success"} 12.0
jupyterhub_server_spawn_duration_seconds_sum{status="success"} 30.5
jupyterhub_server_spawn_duration_seconds_count{status="failure"} 1.0
jupyterhub_server_spawn_duration_seconds_sum{status="failure"} 3.0
# HELP jupyterhub_running_servers the number of user servers currently running
# TYPE jupyterhub_running_servers gauge
jupyterhub_running_servers 9.0
# TYPE hubdeploy_spawns_starting gauge
hubdeploy_spawns_starting 2.0
# TYPE hubdeploy_spawns_waiting gauge
hubdeploy_spawns_waiting 3.0
"""


def test_summary_of_the_hubs_metrics():
    got = metrics.summary(TEXT)
    assert got == {"spawns": {"success": 12, "failure": 1}, "running": 9, "starting": 2, "waiting": 3}
    assert _describe_spawns(got) == "spawns: 1 failure, 12 success; 2 starting, 3 waiting"
    assert _describe_spawns(metrics.summary("")) == "spawns: none yet"
    assert "unknown" in _describe_spawns(None)


def test_the_queue_publishes_starting_and_waiting():
    async def scenario():
        queue = SpawnQueue(1)
        queue.on_change = metrics.observe
        first, second = queue.enter("a"), queue.enter("b")
        during = metrics.summary(generate_latest(REGISTRY).decode())
        first.release()
        await asyncio.sleep(0)
        after_one = metrics.summary(generate_latest(REGISTRY).decode())
        second.release()
        return during, after_one, metrics.summary(generate_latest(REGISTRY).decode())

    during, after_one, after = asyncio.run(scenario())
    assert (during["starting"], during["waiting"]) == (1, 1)
    assert (after_one["starting"], after_one["waiting"]) == (1, 0)
    assert (after["starting"], after["waiting"]) == (0, 0)
