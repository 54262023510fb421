"""compose.yaml's services of the stack's own Slurm cluster: slurmdbd, slurmctld and one
slurmd per node."""

from __future__ import annotations

from typing import Any

from hubdeploy.contract.layout import (
    COMPUTE_IMAGES_VOLUME,
    MUNGE_KEY,
    NODE_IMAGES_DIR,
    NODE_CONFIG_DIR,
    NODE_NSS_DIR,
    NSS_VOLUME,
    SLURMCTLD_SERVICE,
    SLURMCTLD_STATE_VOLUME,
    SLURMDBD_DATA_VOLUME,
    SLURMDBD_HEALTH,
    SLURMDBD_SERVICE,
    UNPRIVILEGED_PORT_START,
    project_name,
    secret_path,
    slurm_node_service,
    stack_name,
)
from hubdeploy.render import slurm
from hubdeploy.render.common import healthcheck, homes_mount, labels
from hubdeploy.render.hardening import harden, node_limits
from hubdeploy.render.seccomp import NODE_PROFILE_FILE
from hubdeploy.site.model import Site


def slurm_services(site: Site, refs: dict[str, str], hashes: dict[str, str]) -> dict[str, Any]:
    """slurmdbd and slurmctld on the slurm network; one slurmd container per node on the
    slurm network and the compute network, where the proxy and the hub reach notebooks
    by NodeName. ``hashes``: the config hash of each (render: slurm is the nodes')."""
    assert site.slurm is not None and site.slurm.cluster is not None
    services: dict[str, Any] = {
        SLURMDBD_SERVICE: slurmdbd_service(site, refs, hashes["slurmdbd"]),
        SLURMCTLD_SERVICE: slurmctld_service(site, refs, hashes["slurmctld"]),
    }
    for node in slurm.node_names(site):
        services[slurm_node_service(node)] = slurmd_service(site, refs, hashes["slurm"], node)
    return services


def _slurm_common(site: Site, image: str, config_hash: str) -> dict[str, Any]:
    # A fresh dict per service: shared dicts would come out as YAML anchors.
    return {
        "image": image,
        "pull_policy": "never",
        "secrets": [MUNGE_KEY],
        # The entrypoint installs the key as /etc/munge/munge.key, owner munge, 0400.
        "environment": {"HUBDEPLOY_MUNGE_KEY": secret_path(MUNGE_KEY)},
        "labels": labels(site, config_hash),
        "restart": "unless-stopped",
        # Docker's init as PID 1: it reaps what users' jobs leave behind (slurmd does not).
        "init": True,
    }


def _slurm_conf_mounts(names: tuple[str, ...]) -> list[str]:
    return [f"./{name}:{NODE_CONFIG_DIR}/{name.split('/', 1)[1]}:ro" for name in names]


def _node_accounts(site: Site) -> list[str]:
    """The accounts the hub has resolved (libnss-extrausers): controller and nodes know
    every job's owner."""
    return [f"{NSS_VOLUME}:{NODE_NSS_DIR}:ro"] if site.identity.source != "shared" else []


def slurmdbd_service(site: Site, refs: dict[str, str], config_hash: str) -> dict[str, Any]:
    """The accounting database: slurmdbd and its MariaDB in one container, the data on a
    volume that ``down`` keeps. Only the controller (and sacctmgr there) talks to it."""
    return harden({
        **_slurm_common(site, refs["slurmdbd"], config_hash),
        "hostname": SLURMDBD_SERVICE,
        "networks": {"slurm": {"aliases": [SLURMDBD_SERVICE]}},
        "volumes": [*_slurm_conf_mounts(slurm.DBD_FILES), f"{SLURMDBD_DATA_VOLUME}:/var/lib/mysql"],
        "healthcheck": healthcheck(["CMD", SLURMDBD_HEALTH]),
    }, "slurmdbd", site.limits.slurmdbd)


def slurmctld_service(site: Site, refs: dict[str, str], config_hash: str) -> dict[str, Any]:
    """The controller; its entrypoint waits for slurmdbd and sets the cluster's accounts
    and limits there before slurmctld starts."""
    return harden({
        **_slurm_common(site, refs["slurm"], config_hash),
        "command": ["slurmctld"],
        "hostname": SLURMCTLD_SERVICE,
        "networks": {"slurm": {"aliases": [SLURMCTLD_SERVICE]}},
        # job_submit plugins run in slurmctld only.
        "volumes": [*_slurm_conf_mounts(slurm.CONTROLLER_FILES), f"{SLURMCTLD_STATE_VOLUME}:/var/spool/slurmctld",
                    *_node_accounts(site)],
        "healthcheck": healthcheck(["CMD", "scontrol", "ping"]),
        "depends_on": {SLURMDBD_SERVICE: {"condition": "service_started"}},
    }, "slurmctld", site.limits.slurmctld)


def slurmd_service(site: Site, refs: dict[str, str], config_hash: str, node: str) -> dict[str, Any]:
    # The nodes run jobs in their users' homes.
    homes = [homes_mount(site, site.identity.homes_dir)] if site.identity.source != "shared" else []
    service = harden({
        **_slurm_common(site, refs["slurm"], config_hash),
        "command": ["slurmd"],
        "hostname": node,
        # slurm first where the engine honours it; the entrypoint also gives munged the
        # address facing the controller (slurmctld looks every credential's origin up).
        "networks": {"slurm": {"aliases": [node], "priority": 10}, "compute": {"aliases": [node]}},
        "volumes": [*_slurm_conf_mounts(slurm.NODE_FILES), *_node_accounts(site), *homes, *_runtime_mounts(site)],
        # Ports below it are root's again: notebook servers' ports, which the node's
        # agent binds and no user's process can take (see images/slurm/node-agent.py).
        "sysctls": {"net.ipv4.ip_unprivileged_port_start": UNPRIVILEGED_PORT_START},
        # A node's bounds follow what Slurm schedules on it.
    }, "slurmd", node_limits(site))
    if site.staged_profiles:
        # Docker's default profile plus what ch-run needs (hubdeploy.render.seccomp);
        # compose reads the file relative to compose.yaml and hands the engine its text.
        service["security_opt"].append(f"seccomp=./{NODE_PROFILE_FILE}")
    return service


def _runtime_mounts(site: Site) -> list[str]:
    """With Charliecloud: the staged images, and each staged profile's volumes at their
    targets (hub.json's binds start there), read-only on the node where the profile says
    so. ch-run 0.31 has no read-only bind: a bind keeps its source's read-only flag, which
    a user cannot lift inside their namespace (MNT_LOCK_READONLY)."""
    if not site.staged_profiles:
        return []
    out = [f"{COMPUTE_IMAGES_VOLUME}:{NODE_IMAGES_DIR}:ro"]
    for source, target, read_only in site.staged_volumes:
        out.append(f"{source}:{target}" + (":ro" if read_only else ""))
    return out


def runtime_volumes(site: Site) -> dict[str, Any]:
    """compose's volumes for Charliecloud, all external (compose neither creates nor
    removes them): the staged images, which ``images stage`` creates and fills before the
    nodes start (hubdeploy.images.stage), and the staged profiles' named volumes, which
    are the site's own, as for login-node servers (staging makes missing ones)."""
    if not site.staged_profiles:
        return {}
    name = stack_name(project_name(site.name), COMPUTE_IMAGES_VOLUME)
    out: dict[str, Any] = {COMPUTE_IMAGES_VOLUME: {"name": name, "external": True}}
    for source, _, _ in site.staged_volumes:
        if not source.startswith("/"):
            out[source] = {"name": source, "external": True}
    return out
