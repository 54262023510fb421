"""Prometheus in the stack: its scrape configuration and its compose service.

It scrapes the hub's ``/hub/metrics`` with the ``prometheus`` service's token, which has
the ``read:metrics`` scope only (:data:`hubdeploy.contract.services.PROMETHEUS`). The
token reaches Prometheus as a file (``credentials_file``), never in this configuration or
in compose.yaml. Its HTTP API is published, if at all, on the loopback address only:
Prometheus has no authentication of its own.
"""

from __future__ import annotations

from typing import Any

from hubdeploy.contract.layout import (
    HUB_PORT,
    HUB_SERVICE,
    PROMETHEUS_CONFIG_PATH,
    PROMETHEUS_DATA_DIR,
    PROMETHEUS_DATA_VOLUME,
    PROMETHEUS_ENTRYPOINT_PATH,
    PROMETHEUS_PORT,
    PROMETHEUS_TOKEN_PATH,
    METRICS_NETWORK,
    project_name,
    stack_name,
)
from hubdeploy.contract.services import PROMETHEUS
from hubdeploy.site.model import Site

CONFIG_FILE = "prometheus/prometheus.yml"
ENTRYPOINT_FILE = "prometheus/entrypoint.sh"
JOB = "jupyterhub"


def enabled(site: Site) -> bool:
    return site.services.prometheus.enabled


def scrape_config(site: Site) -> dict[str, Any]:
    """prometheus.yml as data."""
    interval = f"{site.services.prometheus.scrape_interval}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": JOB,
            "metrics_path": "/hub/metrics",
            "authorization": {"type": "Bearer", "credentials_file": PROMETHEUS_TOKEN_PATH},
            "static_configs": [{"targets": [f"{HUB_SERVICE}:{HUB_PORT}"]}],
        }],
    }


def service(site: Site, refs: dict[str, str], config_hash: str, labels: dict[str, str]) -> dict[str, Any]:
    """The compose service: on the internal network (where the hub is), and on a network
    of its own when it publishes its port, never on the users' network."""
    opts = site.services.prometheus
    svc: dict[str, Any] = {
        "image": refs["prometheus"],
        "pull_policy": "never",
        "entrypoint": ["/bin/sh", PROMETHEUS_ENTRYPOINT_PATH],
        "command": [f"--storage.tsdb.retention.time={opts.retention}"],
        "networks": {"internal": {}},
        "secrets": [PROMETHEUS.secret],
        "volumes": [
            f"./{CONFIG_FILE}:{PROMETHEUS_CONFIG_PATH}:ro",
            f"./{ENTRYPOINT_FILE}:{PROMETHEUS_ENTRYPOINT_PATH}:ro",
            f"{PROMETHEUS_DATA_VOLUME}:{PROMETHEUS_DATA_DIR}",
        ],
        "tmpfs": [PROMETHEUS_TOKEN_PATH.rsplit("/", 1)[0]],
        "labels": {**labels},
        # Prometheus's own client asks its query API (this promtool has no "check healthy").
        "healthcheck": {
            "test": ["CMD", "promtool", "query", "instant", f"http://127.0.0.1:{PROMETHEUS_PORT}", "vector(1)"],
            "interval": "5s", "timeout": "5s", "retries": 5, "start_period": "60s",
        },
        "depends_on": {HUB_SERVICE: {"condition": "service_healthy"}},
        "restart": "unless-stopped",
    }
    if opts.port is not None:
        svc["ports"] = [f"127.0.0.1:{opts.port}:{PROMETHEUS_PORT}"]
        svc["networks"][METRICS_NETWORK] = {}
    return svc


def networks(site: Site) -> dict[str, Any]:
    """The network a published Prometheus needs (internal networks publish no ports)."""
    if not enabled(site) or site.services.prometheus.port is None:
        return {}
    return {METRICS_NETWORK: {"name": stack_name(project_name(site.name), METRICS_NETWORK)}}


def volumes(site: Site) -> dict[str, Any]:
    if not enabled(site):
        return {}
    return {PROMETHEUS_DATA_VOLUME: {"name": stack_name(project_name(site.name), PROMETHEUS_DATA_VOLUME)}}
