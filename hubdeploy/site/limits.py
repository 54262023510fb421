"""The ``limits`` section: memory, CPU and process bounds of the stack's own containers."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hubdeploy.site.fields import Closed, Memory


class ServiceLimits(Closed):
    """Bounds of one service's container (compose ``mem_limit``, a CPU quota, ``pids_limit``)."""

    memory: Memory = Field(description="Memory limit, e.g. 1G (no swap on top).")
    cpus: float = Field(gt=0, le=1024, description="CPU limit in cores (a CFS quota: may exceed the host's cores).")
    pids: int = Field(ge=32, le=1_000_000, description="Most processes and threads at once.")


def _limits(memory: str, cpus: float, pids: int) -> Any:
    return Field(default_factory=lambda: ServiceLimits(memory=memory, cpus=cpus, pids=pids))


class StackLimits(Closed):
    """Per-service bounds of the stack's own containers. Compute nodes take theirs from
    ``slurm.cluster`` (its memory plus room for the daemons, its cpus); notebooks from
    their profiles."""

    hub: ServiceLimits = _limits("2G", 2, 2048)
    proxy: ServiceLimits = _limits("512M", 1, 256)
    engine_proxy: ServiceLimits = _limits("256M", 1, 128)
    idle_culler: ServiceLimits = _limits("256M", 0.5, 64)
    database: ServiceLimits = _limits("1G", 1, 256)
    slurmctld: ServiceLimits = _limits("512M", 1, 512)
    # slurmdbd and its MariaDB (a 128M buffer pool, a few dozen threads).
    slurmdbd: ServiceLimits = _limits("1G", 1, 512)
    services: ServiceLimits = Field(
        default_factory=lambda: ServiceLimits(memory="512M", cpus=1, pids=256),
        description="Each container service of services.extra.",
    )
