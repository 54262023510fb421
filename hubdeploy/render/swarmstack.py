"""stack.yaml: the compose document as ``docker stack deploy`` takes it (orchestrator swarm).

The services are the ones :mod:`~hubdeploy.render.compose` renders; this module only says
them in swarm's terms, so compose and swarm never drift apart:

- ``restart`` becomes ``deploy.restart_policy``, and every service gets an
  ``update_config`` that stops the old task before starting the new one (one hub, one
  database: never two at once) and rolls back a failed update;
- memory, CPU and process limits become ``deploy.resources.limits``;
- files rendered into the state directory and bind-mounted read-only become swarm
  *configs*, named after their content hash: a changed file is a new config, and swarm
  replaces the service's task (configs are immutable);
- secrets become swarm secrets, readable by root only (0400): every service that reads
  one starts as root and drops its privileges after reading (hubdeploy.hub.run,
  the proxy's and the database's entrypoints);
- networks become overlay networks (``encrypted`` with ``swarm.encrypted``);
- every service is placed on the manager that runs ``up`` (``node.id``): its named
  volumes (the hub's database) and the host paths a site names live there.

What swarm cannot say on this engine (API 1.41) is left out and listed in
:data:`DROPPED`, with why: the README's swarm section repeats it for operators.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from hubdeploy.contract.layout import project_name
from hubdeploy.site.model import Site

# Compose keys a swarm service has no counterpart for (engine 20.10, API 1.41).
DROPPED = {
    "pull_policy": "a swarm node pulls by the service's image reference (a digest with swarm.registry)",
    "depends_on": "swarm starts services in any order; each one retries until what it needs answers",
    "cpu_shares": "a swarm task has CPU limits and reservations, no relative weight",
    "security_opt": "no-new-privileges needs API 1.44 for services; capabilities are still dropped",
    "memswap_limit": "swarm sets no swap limit of its own",
    "restart": "becomes deploy.restart_policy",
    "cpu_period": "becomes deploy.resources.limits.cpus",
    "cpu_quota": "becomes deploy.resources.limits.cpus",
    "mem_limit": "becomes deploy.resources.limits.memory",
    "pids_limit": "becomes deploy.resources.limits.pids",
    "tmpfs": "becomes a tmpfs mount",
    "labels": "kept on the containers and copied to the services",
}
STACK_FILE_VERSION = "3.9"
# Seconds a task may take to stop before it is killed (compose down uses 20 as well).
STOP_GRACE = "20s"


def _name_of(prefix: str, kind: str, source: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()[:12]
    stem = source.strip("./").replace("/", "-").replace(".", "-").replace("_", "-")
    return f"{prefix}-{kind}-{stem}-{digest}"


def _limits(svc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cpu_quota" in svc:
        out["cpus"] = f"{svc['cpu_quota'] / svc.get('cpu_period', 100000):g}"
    if "mem_limit" in svc:
        out["memory"] = str(svc["mem_limit"])
    if "pids_limit" in svc:
        out["pids"] = svc["pids_limit"]
    return out


def _mounts(svc: dict[str, Any], files: dict[str, bytes], prefix: str,
            configs: dict[str, Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """(volumes, config references): a rendered file becomes a config; named volumes and
    host paths stay mounts; tmpfs becomes a tmpfs mount."""
    volumes: list[Any] = []
    refs: list[dict[str, Any]] = []
    for spec in svc.get("volumes", []):
        source, _, rest = spec.partition(":")
        target = rest.rsplit(":", 1)[0] if rest.endswith((":ro", ":rw")) else rest
        if source.startswith("./"):
            rel = source[2:]
            name = _name_of(prefix, "config", rel, files[rel])
            configs[name] = {"file": source, "name": name}
            refs.append({"source": name, "target": target, "mode": 0o444})
        else:
            volumes.append(spec)
    for entry in svc.get("tmpfs", []):
        volumes.append({"type": "tmpfs", "target": entry.split(":", 1)[0]})
    return volumes, refs


def _service(svc: dict[str, Any], files: dict[str, bytes], prefix: str, node_id: str,
             configs: dict[str, Any]) -> dict[str, Any]:
    out = {k: copy.deepcopy(v) for k, v in svc.items() if k not in DROPPED and k not in ("volumes", "secrets")}
    out["labels"] = dict(svc.get("labels", {}))
    volumes, config_refs = _mounts(svc, files, prefix, configs)
    if volumes:
        out["volumes"] = volumes
    if config_refs:
        out["configs"] = config_refs
    if svc.get("secrets"):
        out["secrets"] = [{"source": s, "target": s, "uid": "0", "gid": "0", "mode": 0o400}
                          for s in svc["secrets"]]
    if "ports" in svc:
        out["ports"] = [_port(p) for p in svc["ports"]]
    for net in (out.get("networks") or {}).values():
        if isinstance(net, dict):
            net.pop("priority", None)
    deploy: dict[str, Any] = {
        "labels": dict(svc.get("labels", {})),
        # Names resolve to the task's own address, as with compose: the proxy binds its
        # API to the address of proxy-api (a virtual IP could not be bound).
        "endpoint_mode": "dnsrr",
        "placement": {"constraints": [f"node.id == {node_id}" if node_id else "node.role == manager"]},
        "restart_policy": {"condition": "any", "delay": "2s"},
        "update_config": {"order": "stop-first", "failure_action": "rollback"},
        "rollback_config": {"order": "stop-first"},
    }
    limits = _limits(svc)
    if limits:
        deploy["resources"] = {"limits": limits}
    out["deploy"] = deploy
    out["stop_grace_period"] = STOP_GRACE
    return out


def _port(spec: str) -> dict[str, Any]:
    """``HOST:PUBLISHED:TARGET`` as a host-mode port: published on the node that runs the
    task (the manager), not through the routing mesh on every node."""
    parts = spec.rsplit(":", 2)
    published, target = int(parts[-2]), int(parts[-1])
    return {"target": target, "published": published, "protocol": "tcp", "mode": "host"}


def _networks(site: Site, compose_nets: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, net in compose_nets.items():
        if key == "edge":
            continue  # overlay networks that are not internal lead out through the node
        entry = {"name": net["name"], "driver": "overlay", "attachable": True}
        if net.get("internal"):
            entry["internal"] = True
        if site.swarm.encrypted:
            entry["driver_opts"] = {"encrypted": ""}
        out[key] = entry
    return out


def stack_data(site: Site, compose: dict[str, Any], files: dict[str, bytes], node_id: str,
               secret_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The stack document for ``docker stack deploy``, from the compose document
    :func:`~hubdeploy.render.compose.compose_data` made and the rendered ``files``
    (relative path -> bytes). ``node_id`` is the manager the services run on (any
    manager when it is not known yet);
    ``secret_names`` the swarm name of each secret (default ``PROJECT-NAME``)."""
    prefix = project_name(site.name)
    configs: dict[str, Any] = {}
    services = {name: _service(svc, files, prefix, node_id, configs)
                for name, svc in compose["services"].items()}
    for svc in services.values():
        if "edge" in (svc.get("networks") or {}):
            del svc["networks"]["edge"]
    secrets = {}
    for key, entry in compose.get("secrets", {}).items():
        secrets[key] = {"file": entry["file"], "name": (secret_names or {}).get(key, f"{prefix}-{key}")}
    return {
        # Docker 20.10's own CLI reads no file without a version; 3.9 has every key used here.
        "version": STACK_FILE_VERSION,
        "services": services,
        "networks": _networks(site, compose["networks"]),
        "volumes": copy.deepcopy(compose.get("volumes", {})),
        "secrets": secrets,
        "configs": dict(sorted(configs.items())),
    }
