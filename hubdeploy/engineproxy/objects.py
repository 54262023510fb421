"""Whose objects are whose: the site a proxy serves, and the ownership rules every
endpoint shares (volumes and networks by their labels, binds by the site's declared host
paths, listings narrowed to the site's label)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

from hubdeploy.contract.labels import COMPOSE_PROJECT, STACK_NAMESPACE
from hubdeploy.contract.layout import LABEL_SITE, project_name
from hubdeploy.engineproxy.shapes import Refused

# lookup(kind, ref) -> the engine's inspect document, or None when there is no such object.
Lookup = Callable[[str, str], "dict | None"]


@dataclass(frozen=True)
class SitePolicy:
    """Whose engine proxy this is: from the proxy's own arguments, never the request."""

    site: str
    # Host paths the site declared (identity.homes_host, profile volumes): bind mounts
    # of these or of paths below them are the only ones allowed.
    bind_paths: tuple[str, ...] = ()
    # Volume names the site declared (profile volumes), whatever their labels.
    volumes: tuple[str, ...] = ()
    # The site's notebook images, as the profiles name them (tags or registry digests):
    # the only images a container or service may run.
    images: frozenset[str] = field(default_factory=frozenset)

    @property
    def prefix(self) -> str:
        return project_name(self.site) + "-"



def with_site_filter(query: str, site: str) -> str:
    """The listing's query with the site's label added to its filters: other sites'
    objects are never listed, whatever the hub asked for."""
    params = parse_qs(query, keep_blank_values=True)
    try:
        filters = json.loads(params.get("filters", ["{}"])[0] or "{}")
    except ValueError:
        raise Refused("bad-request", "filters is not JSON") from None
    if not isinstance(filters, dict):
        raise Refused("bad-request", "filters is not a JSON object")
    labels = filters.get("label") or []
    if isinstance(labels, dict):  # the engine's older form: {"k=v": true}
        labels = [k for k, v in labels.items() if v]
    filters["label"] = [*labels, f"{LABEL_SITE}={site}"]
    params["filters"] = [json.dumps(filters, sort_keys=True)]
    return urlencode(params, doseq=True)


def check_mount_list(mounts, policy: SitePolicy, lookup: Lookup) -> None:
    """Mounts in the Engine API's shape (already closed by their Shape): binds of
    declared host paths and the site's volumes only."""
    for mount in mounts:
        kind = mount.get("Type") or "volume"
        if kind == "tmpfs":
            if mount.get("Source"):
                raise Refused("mount", "a tmpfs mount has no source")
            continue
        check_source(mount.get("Source") or "", kind, policy, lookup)


def owned(info: dict, policy: SitePolicy) -> bool:
    """A volume or network is the site's by its labels: compose's project or swarm's
    stack namespace (the stack's own) or the site label (what the backends create). A
    name prefix alone is not enough: site ``a``'s prefix ``hubdeploy-a-`` is also the
    head of site ``a-b``'s names."""
    labels = info.get("Labels") or {}
    project = project_name(policy.site)
    return (labels.get(LABEL_SITE) == policy.site
            or labels.get(COMPOSE_PROJECT) == project
            or labels.get(STACK_NAMESPACE) == project)


def check_network(name: str, policy: SitePolicy, lookup: Lookup) -> None:
    if not name.startswith(policy.prefix):
        raise Refused("network", f"network {name!r} is not one of this site's networks")
    info = lookup("network", name)
    if info is None or not owned(info, policy) or info.get("Name") != name:
        raise Refused("network", f"network {name!r} is not labelled as this site's")


def check_source(source: str, kind: str, policy: SitePolicy, lookup: Lookup) -> None:
    if kind == "bind":
        parts = source.split("/")
        norm = "/" + "/".join(p for p in parts if p and p != ".")
        if not source.startswith("/") or ".." in parts or not any(
                norm == p.rstrip("/") or norm.startswith(p.rstrip("/") + "/") for p in policy.bind_paths):
            raise Refused("bind", f"bind mount of host path {source} is outside the site's declared paths")
        return
    if source in policy.volumes:
        return  # declared by the site (profile volumes; the engine makes them unlabelled)
    if not source.startswith(policy.prefix):
        raise Refused("volume", f"volume {source!r} is not this site's")
    info = lookup("volume", source)
    # An absent one is made new and empty by the create; an existing one must be ours.
    if info is not None and not owned(info, policy):
        raise Refused("volume", f"volume {source!r} is not labelled as this site's")


def check_name_and_label(what: str, name: str, labels: dict, policy: SitePolicy, name_rule: str = "name") -> None:
    """A new object of this site: its name has the site's prefix, it carries the site label."""
    if not name.startswith(policy.prefix):
        raise Refused(name_rule, f"{what} name {name!r} does not start with {policy.prefix!r}")
    if labels.get(LABEL_SITE) != policy.site:
        raise Refused("labels", f"the {what} must carry the label {LABEL_SITE}={policy.site}")
