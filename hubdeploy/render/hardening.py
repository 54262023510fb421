"""Least privilege for every service of the rendered stack (compose/README.md explains
each choice): no capabilities but the ones a service needs, no privilege gain at
execve, bounded processes, memory and CPU, and a read-only root where the program
writes only to volumes and tmpfs.

One table, :data:`PROFILES`, names each kind of service's added capabilities with the
reason it needs each; the renderer applies it with :func:`harden`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubdeploy.contract.values import memory_bytes
from hubdeploy.site.limits import ServiceLimits
from hubdeploy.site.model import Site

# Why each added capability is there. Every service starts from `cap_drop: [ALL]`.
REASONS = {
    # Compose secrets and the operator's files are bind mounts that keep the host owner
    # (the account that ran `hubdeploy up`, mode 0600): root in the container reads them
    # only with DAC_OVERRIDE unless that account is root.
    "DAC_OVERRIDE": "read the operator's owner-only secret files; reach into users' 0700 homes",
    "SETUID": "drop from root to the service's own account after reading its secrets",
    "SETGID": "drop from root to the service's own group (and supplementary groups)",
    "CHOWN": "give files it creates (homes, spool, key copies) to their owning account",
    "FOWNER": "set the mode of files it hands to another account (homes 0700, the munge key 0400)",
    "KILL": "signal processes of other uids: users' jobs; the database daemons, to stop them",
    # Without it slurmstepd reads no job process of another uid: no memory samples, so
    # OverMemoryKill never fires (verified on this engine). Confined to the container's
    # own PID namespace.
    "SYS_PTRACE": "sample the memory of users' job processes (/proc/PID), so a job over its --mem is killed",
    # The nodes make ports below 1024 root's again (Docker makes them anyone's): the node
    # agent binds notebook servers' ports there, so no user's process can take one.
    "NET_BIND_SERVICE": "bind notebook servers' ports below 1024 (the node agent), which no user can",
}


@dataclass(frozen=True)
class Hardening:
    """What one kind of service gets besides `cap_drop: [ALL]` and no-new-privileges."""

    cap_add: tuple[str, ...] = ()
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


# The hub image's wrapper (hubdeploy.hub.run) reads a token as root, then becomes nobody.
_TOKEN_WRAPPER = Hardening(("DAC_OVERRIDE", "SETGID", "SETUID"), read_only=True, tmpfs=("/tmp",))

PROFILES: dict[str, Hardening] = {
    # setpriv to nobody after reading the token; a TLS key copy (install, then chown: no FOWNER).
    "proxy": Hardening(("CHOWN", "DAC_OVERRIDE", "SETGID", "SETUID"), read_only=True, tmpfs=("/tmp",)),
    # Creates users' homes (mkdir, chown, chmod 0700) and writes the cluster's accounts;
    # /tmp holds per-user ssh certificates and ssh's control sockets.
    "hub": Hardening(("CHOWN", "DAC_OVERRIDE", "FOWNER"), read_only=True, tmpfs=("/tmp",)),
    # Opens the engine's socket (root's, 0660) and nothing else: no capability needed.
    "engine-proxy": Hardening(read_only=True),
    "culler": _TOKEN_WRAPPER,
    "service": _TOKEN_WRAPPER,
    # A site's own image: nothing is known of what it needs, so it gets nothing back.
    "foreign": Hardening(),
    # initdb and the start: chown/chmod of PGDATA, setpriv to postgres.
    "db": Hardening(("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")),
    # The entrypoint installs the munge key (owner munge, 0400) and runs munged as munge;
    # slurmctld drops to SlurmUser.
    "slurmctld": Hardening(("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")),
    # As slurmctld (slurmdbd.conf goes to slurm, 0600), and MariaDB's data directory to
    # mysql on a fresh volume; mariadbd drops to mysql, slurmdbd to slurm, and the
    # entrypoint watches both and stops them (signals across uids: KILL).
    "slurmdbd": Hardening(("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID")),
    # slurmd starts each job as its user (setuid, initgroups), samples its memory and
    # signals it at its end.
    "slurmd": Hardening(("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID",
                         "SYS_PTRACE")),
}

# Room for slurmd, slurmstepd and munged above the memory Slurm schedules on a node.
NODE_DAEMON_MEMORY = 512 * 2**20
# Processes (threads count) a node may hold: notebooks and kernels of many jobs.
NODE_PIDS = 4096


def harden(service: dict[str, Any], kind: str, limits: ServiceLimits | dict[str, Any]) -> dict[str, Any]:
    """``service`` with the security options of ``kind`` and ``limits`` (the site's, or
    :func:`resource_limits`' keys) added."""
    h = PROFILES[kind]
    service["cap_drop"] = ["ALL"]
    if h.cap_add:
        service["cap_add"] = sorted(h.cap_add)
    service["security_opt"] = ["no-new-privileges:true"]
    if h.read_only:
        service["read_only"] = True
    if h.tmpfs:
        # nosuid/nodev/noexec: scratch space only, nothing to run from it.
        service["tmpfs"] = [f"{path}:rw,nosuid,nodev,noexec" for path in h.tmpfs]
    if isinstance(limits, ServiceLimits):
        limits = resource_limits(memory_bytes(limits.memory), limits.cpus, limits.pids)
    service.update(limits)
    return service


def resource_limits(memory: int, cpus: float, pids: int) -> dict[str, Any]:
    """compose keys for a memory, CPU and process bound.

    CPU as a CFS quota, not ``cpus``: the engine refuses ``cpus`` above the host's core
    count, and a site file is written once for machines of any size.
    """
    return {
        "mem_limit": memory,
        # Equal to mem_limit: no swap on top of the bound.
        "memswap_limit": memory,
        "cpu_period": 100000,
        "cpu_quota": round(cpus * 100000),
        "pids_limit": pids,
    }


def node_limits(site: Site) -> dict[str, Any]:
    """A compute node's container: what Slurm schedules on it, plus its daemons' room."""
    assert site.slurm is not None and site.slurm.cluster is not None
    c = site.slurm.cluster
    return resource_limits(memory_bytes(c.memory) + NODE_DAEMON_MEMORY, c.cpus, NODE_PIDS)
