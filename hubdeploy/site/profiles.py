"""The ``profiles`` section: what a user may start, where (a login-node container or a
compute job), with which image, limits, volumes and, for compute, Slurm job settings;
:func:`allowance` says the most one job of a compute profile may get.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from hubdeploy.contract.values import DEFAULT_PIDS_LIMIT, memory_bytes, parse_time
from hubdeploy.site.fields import AbsPath, Closed, EnvName, Memory, Name, SlurmName, SlurmTime


class Volume(Closed):
    source: str = Field(description="Absolute host path, or a Docker volume name.")
    target: str = Field(description="Absolute path in the notebook container.")
    read_only: bool = True

    @field_validator("target")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not PurePosixPath(v).is_absolute() or ".." in PurePosixPath(v).parts:
            raise ValueError("target must be an absolute path without '..'")
        return v

    @field_validator("source")
    @classmethod
    def _src(cls, v: str) -> str:
        if v.startswith("/"):
            if ".." in PurePosixPath(v).parts:
                raise ValueError("source path must not contain '..'")
        elif not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", v):
            raise ValueError("source must be an absolute host path or a Docker volume name")
        return v


class SlurmLimits(Closed):
    """The most a user may ask for in the spawn form; each set limit adds its form field."""

    max_cpu: int | None = Field(None, ge=1, le=1024, description="Most cores a user may ask for.")
    max_memory: Memory | None = Field(None, description="Most memory a user may ask for.")
    max_time: SlurmTime | None = Field(None, description="Longest time limit a user may ask for.")
    max_gpus: int | None = Field(None, ge=0, le=64)


class ProfileSlurm(Closed):
    """How a compute profile's server is submitted (read by slurm_script.job_options).

    ``partitions`` are the choices the spawn form offers (the first is the default when
    ``partition`` is not set); values a user sends are checked by the spawner against
    these lists and ``limits``, never written into the job script unchecked.
    """

    partition: SlurmName | None = None
    partitions: list[SlurmName] = Field(default_factory=list, description="Partitions offered in the spawn form.")
    account: SlurmName | None = None
    qos: SlurmName | None = None
    time: SlurmTime | None = Field(None, description="Default time limit, e.g. 60 or 8:00:00.")
    gpus: int = Field(0, ge=0, le=64)
    runtime: Literal["native", "apptainer", "charliecloud", "podman-hpc", "shifter"] = Field(
        "native", description="native: the node's own environment; otherwise a container runtime on the node. "
        "On the stack's own cluster: native (the nodes' image) or charliecloud (any site image, staged by "
        "`hubdeploy images stage`).")
    image: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_/][A-Za-z0-9_./:@+-]{0,511}$",
        description="Image for apptainer/podman-hpc/shifter; default: the profile's image. charliecloud on a "
        "site's own cluster: the image's directory or .sqfs on the nodes (an absolute path); on the stack's "
        "cluster: unset (the profile's image, staged).",
    )
    path_prepend: list[AbsPath] = Field(default_factory=list, description="Directories put first in PATH on the node.")
    limits: SlurmLimits = Field(default_factory=SlurmLimits)

    @model_validator(mode="after")
    def _consistent(self) -> "ProfileSlurm":
        if self.runtime == "charliecloud" and self.image is not None and not self.image.startswith("/"):
            raise ValueError(f"image {self.image!r}: charliecloud runs an image directory or SquashFS file on the "
                             "nodes, given as an absolute path")
        if self.partition and self.partitions and self.partition not in self.partitions:
            raise ValueError(f"partition {self.partition!r} is not in partitions {self.partitions}")
        if len(set(self.partitions)) != len(self.partitions):
            raise ValueError("partitions lists a partition twice")
        return self


@dataclass(frozen=True)
class Allowance:
    """The most one job of a compute profile may get through the spawn form: cores,
    memory (None: the profile sets none, so the cluster's default per core) and
    minutes (None: the profile sets none, so its partition's limit)."""

    cpus: int
    mem_bytes: int | None
    minutes: int | None


def allowance(p: "Profile") -> Allowance:
    """A compute profile's :class:`Allowance`: each limit where the form offers a choice,
    else the fixed value (cores as slurm_script rounds them: up, at least 1)."""
    s = p.slurm or ProfileSlurm()
    cpus = s.limits.max_cpu or max(1, math.ceil((p.cpu or 0) - 1e-9))
    memory = s.limits.max_memory or p.memory
    time = s.limits.max_time or s.time
    return Allowance(cpus, memory_bytes(memory) if memory else None, parse_time(time) if time else None)


# A swarm placement constraint (`node.labels.role==login`, `node.hostname!=ln3`); one
# word, no spaces, as `docker service create --constraint` takes it.
Constraint = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+ ?(==|!=) ?[A-Za-z0-9_.:/-]+$")]


class SwarmPlacement(Closed):
    """Where swarm may run a login profile's servers (orchestrator: swarm)."""

    constraints: list[Constraint] = Field(default_factory=list, description="e.g. node.labels.role==login")
    spread: list[Annotated[str, StringConstraints(pattern=r"^node\.(labels\.)?[A-Za-z0-9_.-]+$")]] = Field(
        default_factory=list, description="Node labels to spread servers over, e.g. node.labels.rack.")


class Reserve(Closed):
    """What swarm sets aside for each server: a node without it free is not chosen."""

    cpu: float | None = Field(None, gt=0, le=1024, description="Cores.")
    memory: Memory | None = Field(None, description="e.g. 1G.")


class Profile(Closed):
    name: Name
    display_name: str | None = None
    description: str = ""
    image: Name = Field(description="'base' or a collaboration image name.")
    node: Literal["login", "compute"] = Field(
        "login", description="Where the server runs: login (a container, docker backend) or compute (a Slurm job)."
    )
    cpu: float | None = Field(None, gt=0, le=1024, description="CPU limit in cores.")
    memory: Memory | None = Field(None, description="Memory limit, e.g. 2G.")
    pids_limit: int = Field(
        DEFAULT_PIDS_LIMIT, ge=32, le=1_000_000,
        description="Most processes and threads in a login-node server's container (a fork bomb stops "
        "there); a JupyterLab server with a few kernels uses under 100.")
    home: bool = Field(True, description="Mount the user's home (identity.home; /home/jovyan with the shared account).")
    volumes: list[Volume] = Field(default_factory=list)
    environment: dict[EnvName, str] = Field(default_factory=dict)
    default: bool = False
    spawner_config: dict[str, Any] = Field(
        default_factory=dict, description="Pass-through Spawner traits for this profile."
    )
    slurm: ProfileSlurm | None = Field(None, description="Slurm job settings of a compute profile.")
    placement: SwarmPlacement | None = Field(None, description="Swarm placement of a login profile (orchestrator: swarm).")
    reserve: Reserve | None = Field(None, description="Swarm reservations of a login profile (orchestrator: swarm).")

    @model_validator(mode="after")
    def _node(self) -> "Profile":
        if self.slurm is not None and self.node != "compute":
            raise ValueError("'slurm' only applies to a profile with node: compute")
        if (self.placement or self.reserve) and self.node != "login":
            raise ValueError("'placement' and 'reserve' only apply to login profiles")
        return self
