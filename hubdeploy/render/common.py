"""What every service of compose.yaml is made of: its labels, its health check, the
homes' mount."""

from __future__ import annotations

from typing import Any

from hubdeploy.contract.layout import HOMES_VOLUME, LABEL_CONFIG_HASH, LABEL_SITE
from hubdeploy.site.model import Site


def homes_mount(site: Site, target: str) -> str:
    return f"{site.identity.homes_host or HOMES_VOLUME}:{target}"


def healthcheck(test: list[str]) -> dict[str, Any]:
    return {"test": test, "interval": "5s", "timeout": "5s", "retries": 5, "start_period": "60s"}


def labels(site: Site, config_hash: str | None = None) -> dict[str, str]:
    labels = {LABEL_SITE: site.name}
    if config_hash is not None:
        labels[LABEL_CONFIG_HASH] = config_hash
    return labels
