"""The site description: one closed pydantic model per level.

Every model forbids unknown keys (``extra="forbid"``) so that a misspelt key is an
error rather than a silent no-op (the-littlest-jupyterhub once accepted unknown
top-level keys because its ``additionalProperties: false`` sat at the wrong depth).
The deliberate escape hatches are ``hub.config``, ``hub.authenticator.config`` and
``profiles[].spawner_config``: free-form JupyterHub traits, like z2jh's ``hub.config``.

Nothing here touches the disk or a daemon; :mod:`hubdeploy.site.loader` turns YAML into
these models and pydantic errors into messages with file, line and column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    field_validator,
    model_validator,
)

from hubdeploy.contract.identity import normal_username, reserved_overlap
from hubdeploy.contract import ldap as ldap_settings
from hubdeploy.contract.layout import STACK_IMAGES
from hubdeploy.contract.slurmcmd import QOS
from hubdeploy.contract.services import RESERVED_NAMES
from hubdeploy.contract.values import (
    DEFAULT_PIDS_LIMIT,
    ENV_NAME_PATTERN,
    MEMORY_PATTERN,
    SLURM_NAME_PATTERN,
    SLURM_TIME_PATTERN,
    memory_bytes,
    parse_time,
)

EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]
# Names end up in container, volume, network and image names: keep them to the
# characters every one of those accepts, and short enough to leave room for suffixes.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z](?:[a-z0-9-]{0,29}[a-z0-9])?$")]
Memory = Annotated[str, StringConstraints(pattern=MEMORY_PATTERN)]
# A trait-section name such as "JupyterHub" or "Spawner".
TraitSection = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# pip requirement or Debian package: no options, no URLs with spaces, no shell.
Package = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+\-\[\],<>=!~*]*$")]
# A username allowed for admin_users; anything printable except whitespace and '/'.
Username = Annotated[str, StringConstraints(pattern=r"^[^\s/]{1,255}$")]


class SiteValueError(ValueError):
    """A cross-field problem that knows where below the validated model it sits.

    A model validator's error is reported by pydantic at the model itself (e.g. the
    whole site); ``problems`` carries ``(relative location, message)`` pairs so the
    loader can point at ``profiles[2].image`` instead, and report all of them at once.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]):
        super().__init__("; ".join(msg for _, msg in problems))
        self.problems = problems


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Public(Closed):
    """Where users reach the hub. The demo binds loopback only."""

    host: str = Field("127.0.0.1", description="Address the proxy's public port binds on the host.")
    port: int = Field(8000, ge=1, le=65535, description="Public port of the proxy.")


class TLS(Closed):
    """TLS terminated by configurable-http-proxy: the site's certificate and key (paths
    relative to the site file), or ``self_signed: true`` for a trial, where hubdeploy
    generates a certificate once and keeps it with the secrets."""

    cert: str | None = Field(None, description="PEM certificate chain file.")
    key: str | None = Field(None, description="PEM private key file.")
    self_signed: bool = Field(
        False,
        description="Generate a self-signed certificate for public.host (instead of cert and key).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> "TLS":
        given = [k for k in ("cert", "key") if getattr(self, k) is not None]
        if self.self_signed and given:
            text = f"self_signed: true generates its own certificate: leave {' and '.join(given)} unset"
            raise SiteValueError([(("self_signed",), text)])
        if not self.self_signed and len(given) < 2:
            missing = " and ".join(k for k in ("cert", "key") if k not in given)
            raise SiteValueError(
                [((), f"give both 'cert' and 'key' (missing: {missing}), or self_signed: true")]
            )
        return self


class Authenticator(Closed):
    # JupyterHub resolves short names through its "jupyterhub.authenticators" entry
    # points ("dummy", "github", "ldapauthenticator", ...), so any installed
    # authenticator works without hubdeploy knowing about it.
    class_: str = Field(
        "dummy",
        alias="class",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$",
        description="Authenticator entry-point name or import path.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Traits of the authenticator class, passed through as is."
    )
    packages: list[Package] = Field(
        default_factory=list, description="Extra pip packages the hub image needs for this authenticator."
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# The oldest JupyterHub the hub side (config, spawner, web layer) is tested on.
MIN_JUPYTERHUB = "5.5.0"


class Hub(Closed):
    jupyterhub_version: str = Field(
        "6.1.1",
        pattern=r"^\d+\.\d+\.\d+$",
        description="JupyterHub version of the hub; notebook images get the same jupyterhub-singleuser. "
        f"{MIN_JUPYTERHUB} or later (hubdeploy's hub side is tested on 5.5 and 6.1); changing it "
        "on a running stack upgrades the hub's database (README: Upgrading JupyterHub).",
    )

    @field_validator("jupyterhub_version")
    @classmethod
    def _supported(cls, v: str) -> str:
        if tuple(int(x) for x in v.split(".")) < tuple(int(x) for x in MIN_JUPYTERHUB.split(".")):
            raise ValueError(f"JupyterHub {v} is older than {MIN_JUPYTERHUB}, the oldest hubdeploy's hub side runs on")
        return v

    authenticator: Authenticator = Field(default_factory=Authenticator)
    admin_users: list[Username] = Field(default_factory=list)
    username_max_length: int = Field(
        64,
        ge=1,
        # JupyterHub's database keeps a username in 255 characters.
        le=255,
        description="Longest username the hub accepts, in characters after normalisation "
        "(NFKC, then the authenticator's own, e.g. lower case); longer names are refused "
        "at login and in the REST API, whatever the authenticator.",
    )
    named_server_limit_per_user: int = Field(
        3,
        ge=0,
        description="Named servers a user may have besides the default one (0: no limit).",
    )
    concurrent_spawn_limit: int = Field(
        8,
        ge=1,
        le=1000,
        description="Servers the hub starts at once; more starts wait in order (users see "
        "'waiting: N starts ahead') and their wait does not count against start_timeout. "
        "8 suits a 2-core login node: a start costs about 1.3 CPU-seconds, so more at once "
        "only slows every one of them down.",
    )
    config: dict[TraitSection, dict[str, Any]] = Field(
        default_factory=dict,
        description="Pass-through JupyterHub traits, e.g. {JupyterHub: {shutdown_on_logout: true}}.",
    )

    @model_validator(mode="after")
    def _admins_fit(self) -> "Hub":
        # The hub refuses to start with an admin name it would refuse at login.
        problems = [(("admin_users", i), f"{name!r} is {len(normal_username(name))} characters long; "
                     f"the hub refuses names longer than hub.username_max_length ({self.username_max_length})")
                    for i, name in enumerate(self.admin_users)
                    if len(normal_username(name)) > self.username_max_length]
        if problems:
            raise SiteValueError(problems)
        return self


class Database(Closed):
    type: Literal["sqlite", "postgresql"] = Field(
        "sqlite", description="sqlite on a volume, or PostgreSQL as its own service."
    )


class Proxy(Closed):
    route_check_interval: int = Field(
        1,
        ge=1,
        le=300,
        description="Seconds between the hub's checks that the proxy still has every route "
        "(restores routes quickly after a proxy restart). A check is one GET of the "
        "proxy's route table and a pass over the running servers: with 100 servers, every "
        "route was back 6.6 s after a proxy restart at 5 s and about 1-2 s at 1 s.",
    )


class IdleCuller(Closed):
    enabled: bool = True
    timeout: int = Field(3600, ge=60, description="Seconds of inactivity before a server is stopped.")
    every: int = Field(300, ge=10, description="Seconds between culler runs.")


class Prometheus(Closed):
    """Prometheus in the stack, scraping the hub's /hub/metrics with a read:metrics token."""

    enabled: bool = False
    port: int | None = Field(
        None, ge=1, le=65535,
        description="Publish Prometheus (its HTTP API) on 127.0.0.1:PORT of this machine; "
        "unset: reachable only inside the stack.",
    )
    scrape_interval: int = Field(15, ge=5, le=3600, description="Seconds between scrapes of the hub.")
    retention: str = Field("15d", pattern=r"^\d+[hdwy]$", description="How long samples are kept, e.g. 15d.")


class ExtraService(Closed):
    """A hub service: an external URL, or a container that runs a command."""

    name: Name
    url: str | None = Field(None, description="URL the hub proxies /services/NAME to.")
    command: list[str] | None = Field(None, min_length=1, description="argv of a container service.")
    image: str | None = Field(
        None,
        description="Image for a container service; default: the hub image "
        "(which exports JUPYTERHUB_API_TOKEN from the secret file).",
    )
    port: int | None = Field(None, ge=1, le=65535, description="Port a container service listens on.")
    scopes: list[str] = Field(default_factory=list, description="Scopes of the service's API token.")
    environment: dict[EnvName, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> "ExtraService":
        if (self.url is None) == (self.command is None):
            raise ValueError("a service needs exactly one of 'url' or 'command'")
        if self.image is not None and self.command is None:
            raise ValueError("'image' only applies to a container service (one with 'command')")
        return self


class Services(Closed):
    idle_culler: IdleCuller = Field(default_factory=IdleCuller)
    prometheus: Prometheus = Field(default_factory=Prometheus)
    extra: list[ExtraService] = Field(default_factory=list)

    @field_validator("extra")
    @classmethod
    def _unique(cls, v: list[ExtraService]) -> list[ExtraService]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        first: dict[str, int] = {}
        for j, s in enumerate(v):
            if s.name in RESERVED_NAMES:
                problems.append(((j, "name"), f"service name {s.name!r} is reserved for hubdeploy's own "
                                 f"service (reserved: {', '.join(sorted(RESERVED_NAMES))})"))
            elif s.name in first:
                problems.append(((j, "name"), f"duplicate service name {s.name!r} (first: extra[{first[s.name]}])"))
            else:
                first[s.name] = j
        if problems:
            raise SiteValueError(problems)
        return v


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


class Debian(Closed):
    suite: str = Field("bookworm", pattern=r"^[a-z]+$")
    mirror: str = Field("http://deb.debian.org/debian", pattern=r"^https?://\S+$")


class Build(Closed):
    """How images are built here: trust and proxies apply to every build step."""

    ca_bundle: str | None = Field(
        None, description="PEM bundle of the site's CA (for TLS-inspecting proxies). Relative to the site file."
    )
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    debian: Debian = Field(default_factory=Debian)


class Kernel(Closed):
    """A Jupyter kernel baked into an image, with its own environment.

    Python and bash kernels get a virtualenv of their own at ``/opt/kernels/<image>-<name>``
    (``packages`` are pip requirements; pin them for reproducible images); an R kernel runs
    Debian's R with ``r-cran-irkernel``, and ``packages`` are Debian packages
    (e.g. ``r-cran-jsonlite``). The kernelspec is named ``<image>-<name>`` so that kernels
    of different collaborations never shadow each other.
    """

    name: Name
    display_name: str | None = Field(None, max_length=100, description="Name shown in the launcher; default: the spec name.")
    language: Literal["python", "r", "bash"] = "python"
    packages: list[Package] = Field(
        default_factory=list, description="pip requirements (python, bash) or Debian packages (r)."
    )
    env: dict[EnvName, str] = Field(default_factory=dict, description="Environment of the kernel process.")


def _unique_kernels(v: list[Kernel]) -> list[Kernel]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    first: dict[str, int] = {}
    for j, k in enumerate(v):
        if k.name in first:
            problems.append(((j, "name"), f"duplicate kernel name {k.name!r} (first: kernels[{first[k.name]}])"))
        else:
            first[k.name] = j
    if problems:
        raise SiteValueError(problems)
    return v


class BaseImage(Closed):
    from_: str | None = Field(
        None,
        alias="from",
        description="Local image to build the base on; default: a Debian rootfs bootstrapped from the mirror.",
    )
    apt: list[Package] = Field(default_factory=list)
    pip: list[Package] = Field(default_factory=list)
    kernels: list[Kernel] = Field(default_factory=list, description="Kernels with their own environments.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: list[Kernel]) -> list[Kernel]:
        return _unique_kernels(v)

    @field_validator("from_")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        # fullmatch: re's "$" also matches before a trailing newline.
        if v is not None and not IMAGE_REF_RE.fullmatch(v):
            raise ValueError(
                "not a valid image reference: expected [registry/]name[:tag][@sha256:digest], name in lowercase"
            )
        return v


# Docker's reference grammar, simplified: [registry[:port]/]path[:tag][@digest].
IMAGE_REF_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


class CollaborationImage(Closed):
    parent: Name = Field("base", description="'base' or another collaboration image.")
    description: str = ""
    apt: list[Package] = Field(default_factory=list)
    pip: list[Package] = Field(default_factory=list)
    kernels: list[Kernel] = Field(default_factory=list, description="Kernels with their own environments.")

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: list[Kernel]) -> list[Kernel]:
        return _unique_kernels(v)


class Images(Closed):
    base: BaseImage = Field(default_factory=BaseImage)
    collaborations: dict[Name, CollaborationImage] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _graph(self) -> "Images":
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if "base" in self.collaborations:
            problems.append((("collaborations", "base"), "'base' is reserved for the base image"))
        # The stack's own images share the site's image namespace.
        for reserved in sorted(set(STACK_IMAGES) & set(self.collaborations)):
            problems.append((("collaborations", reserved), f"'{reserved}' is reserved for the stack's own image"))
        cycles: set[frozenset[str]] = set()
        for name, img in self.collaborations.items():
            if name == "base":
                continue
            seen = [name]
            parent = img.parent
            while parent != "base":
                if parent not in self.collaborations:
                    # Reported where the bad parent is written, once.
                    if seen[-1] == name:
                        problems.append(
                            (
                                ("collaborations", name, "parent"),
                                f"image {name!r}: parent {parent!r} is not declared; "
                                f"declared: {', '.join(self.names())}",
                            )
                        )
                    break
                if parent in seen:
                    cycle = seen[seen.index(parent) :]
                    # Every member of a cycle would find it; report it once, at its first member.
                    if frozenset(cycle) not in cycles and name in cycle:
                        cycles.add(frozenset(cycle))
                        problems.append(
                            (
                                ("collaborations", name, "parent"),
                                f"image {name!r}: parent cycle {' -> '.join(cycle + [parent])}",
                            )
                        )
                    break
                seen.append(parent)
                parent = self.collaborations[parent].parent
        # "a" + kernel "b-c" and "a-b" + kernel "c" would both install kernelspec "a-b-c".
        specs: dict[str, str] = {}
        for image, img in [("base", self.base), *sorted(self.collaborations.items())]:
            for j, k in enumerate(img.kernels):
                spec = f"{image}-{k.name}"
                loc: tuple[str | int, ...] = (("base",) if image == "base" else ("collaborations", image)) + (
                    "kernels", j, "name")
                if spec in specs:
                    problems.append((loc, f"kernelspec name {spec!r} is also made by image {specs[spec]!r}"))
                else:
                    specs[spec] = image
        if problems:
            raise SiteValueError(problems)
        return self

    def names(self) -> list[str]:
        return ["base", *sorted(self.collaborations)]


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


SlurmName = Annotated[str, StringConstraints(pattern=SLURM_NAME_PATTERN)]
SlurmTime = Annotated[str, StringConstraints(pattern=SLURM_TIME_PATTERN)]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./+-]{0,1023}$")]


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
    runtime: Literal["native", "apptainer", "podman-hpc", "shifter"] = Field(
        "native", description="native: the node's own environment; otherwise a container runtime on the node."
    )
    image: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_/][A-Za-z0-9_./:@+-]{0,511}$",
        description="Image for apptainer/podman-hpc/shifter; default: the profile's image.",
    )
    path_prepend: list[AbsPath] = Field(default_factory=list, description="Directories put first in PATH on the node.")
    limits: SlurmLimits = Field(default_factory=SlurmLimits)

    @model_validator(mode="after")
    def _consistent(self) -> "ProfileSlurm":
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


class SlurmUserLimits(Closed):
    """What one user may hold at once on the stack's cluster (Slurm's QOS limits per
    user); a user's notebook servers there are among their jobs."""

    jobs: int = Field(10, ge=1, le=10000, description="Jobs a user may have at once, running or pending; "
                      "an sbatch past it is refused.")
    nodes: int | None = Field(None, ge=1, le=16, description="Nodes a user's running jobs may occupy at once "
                              "(jobs sharing a node count it once); further jobs wait. Default: one fewer "
                              "than slurm.cluster.nodes (at least 1), so no user holds every node.")
    cpus: int | None = Field(None, ge=1, le=4096, description="Cores a user's running jobs may hold at once; "
                             "further jobs wait. Default: no limit but nodes.")


class SlurmClusterSpec(Closed):
    """A small Slurm cluster hubdeploy runs inside the stack (slurmctld + N slurmd)."""

    nodes: int = Field(2, ge=1, le=16, description="Compute-node containers, named c1..cN (the NodeNames).")
    cpus: int = Field(2, ge=1, le=256, description="CPUs Slurm schedules per node.")
    memory: Memory = Field("2G", description="Memory Slurm schedules per node.")
    partitions: list[SlurmName] = Field(
        default_factory=lambda: ["compute"], min_length=1,
        description="Partitions over all nodes; the first is the default.",
    )
    image: Name = Field("base", description="Image the nodes run (plus Slurm and munge): 'base' or a collaboration.")
    max_time: SlurmTime = Field(
        "8:00:00", description="Longest time limit a profile may give or offer (its time, limits.max_time); "
        "a job's limit is the longest the profiles allow.")
    accounts: list[SlurmName] | None = Field(
        None, min_length=1,
        description="Accounts the cluster admits; sbatch refuses any other with Slurm's own 'Invalid account' "
        "error. The first is the account of jobs that name none. Default: one account, hubdeploy.",
    )
    user_limits: SlurmUserLimits = Field(default_factory=SlurmUserLimits,
                                         description="What one user may hold at once.")

    @field_validator("partitions")
    @classmethod
    def _unique_parts(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("partitions lists a partition twice")
        return v

    @field_validator("accounts")
    @classmethod
    def _unique_accounts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("accounts lists an account twice")
        return v

    @model_validator(mode="after")
    def _user_nodes(self) -> "SlurmClusterSpec":
        if self.user_limits.nodes is not None and self.user_limits.nodes > self.nodes:
            raise SiteValueError([(("user_limits", "nodes"), f"user_limits.nodes {self.user_limits.nodes} is more "
                                   f"than the cluster's {self.nodes} nodes")])
        return self

    @property
    def user_nodes(self) -> int:
        """Nodes one user may occupy at once: as set, or one fewer than the cluster has."""
        return self.user_limits.nodes or max(1, self.nodes - 1)


# A host name or address as ssh takes it (no user@, no options: never starts with '-').
SSHHost = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\[\]][A-Za-z0-9_.:\[\]-]{0,252}$")]
# A POSIX login name (useradd's rule); ssh -l takes it as one word.
LoginName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")]


class SlurmSSH(Closed):
    """The hub submits over SSH to a site's login (submit) host as one account.

    The host's key must be in ``known_hosts`` (nothing is trusted on first use). The
    hub's key is generated once into ``.hubdeploy/secrets/slurm_ssh_key`` (its ``.pub``
    goes into the account's ``~/.ssh/authorized_keys`` on the host) unless
    ``identity_file`` names the site's own. The submit account's shell must be POSIX
    (sh, bash, zsh): the command is quoted for it. The job's variables (the server's API
    token among them) reach sbatch on the host through ssh's stdin, never through argv.
    """

    host: SSHHost = Field(description="The submit host, as the hub resolves it.")
    user: LoginName = Field(description="The account on the submit host whose jobs the notebooks are.")
    port: int = Field(22, ge=1, le=65535)
    known_hosts: str = Field(description="File with the submit host's public key(s), known_hosts format.")
    identity_file: str | None = Field(
        None, description="The site's own private key (mode 0600); default: a key hubdeploy generates."
    )
    certificates: bool = Field(
        False, description="Submit each server's job as its user, with a short-lived SSH certificate from "
        "the hub's CA (the host's sshd trusts .hubdeploy/secrets/slurm_ssh_ca.pub with TrustedUserCAKeys); "
        "'user' then runs only the commands that are nobody's (the orphan listing and its cancels).")
    certificate_minutes: int = Field(5, ge=1, le=60, description="How long each user certificate is valid.")


class SlurmSubmit(Closed):
    """An existing site's Slurm: how the hub runs sbatch/squeue/scancel there."""

    ssh: SlurmSSH | None = Field(None, description="Submit over SSH to a login host (instead of prefix).")
    prefix: list[str] = Field(
        default_factory=list,
        description="argv before every Slurm command, e.g. [ssh, login1]; empty: the hub image has the client.",
    )
    env_option: str | None = Field(
        None, description="Option that passes one variable through the prefix (-e for docker exec)."
    )
    quote: bool = Field(False, description="Shell-quote the command after the prefix (ssh).")
    output: str | None = Field(None, description="sbatch --output of notebook jobs.")

    @model_validator(mode="after")
    def _ssh_alone(self) -> "SlurmSubmit":
        if self.ssh is not None and (self.prefix or self.env_option or self.quote):
            raise ValueError("'ssh' builds its own command: leave prefix, env_option and quote unset")
        return self


class SiteSlurm(Closed):
    """Where compute profiles' jobs go: a cluster in the stack, or a site's submit path."""

    cluster: SlurmClusterSpec | None = None
    submit: SlurmSubmit | None = None

    @model_validator(mode="after")
    def _one(self) -> "SiteSlurm":
        if (self.cluster is None) == (self.submit is None):
            raise ValueError("slurm needs exactly one of 'cluster' or 'submit'")
        return self


class IdentityAuto(Closed):
    """The uids the auto source hands out: none of them may own files in the images
    (hubdeploy.contract.identity.RESERVED_IDS), so the range avoids every reserved id."""

    uid_min: int = Field(20000, ge=0, le=2**31 - 2, description="First uid (and private gid) handed out.")
    uid_max: int = Field(59999, ge=0, le=2**31 - 2, description="Last uid handed out.")

    @model_validator(mode="after")
    def _range(self) -> "IdentityAuto":
        if self.uid_max < self.uid_min:
            raise ValueError(f"uid_max {self.uid_max} is below uid_min {self.uid_min}")
        overlap = reserved_overlap(self.uid_min, self.uid_max)
        if overlap:
            ids, why = overlap
            key = "uid_min" if self.uid_min in ids else "uid_max"
            span = f"ids {ids[0]}-{ids[-1]}" if len(ids) > 1 else f"id {ids[0]}"
            raise SiteValueError([((key,), f"uids {self.uid_min}-{self.uid_max} overlap the reserved {span} "
                                           f"({why}); choose a range outside them")])
        return self


class IdentityFile(Closed):
    """passwd(5) and group(5) files the site maintains; edits apply without a restart."""

    passwd: str = Field(description="passwd file: name:x:uid:gid:gecos:home:shell per line.")
    group: str | None = Field(None, description="group file; supplementary groups by member name.")


# A number of seconds, written into hub.json as the site wrote it (10, not 10.0).
Seconds = Annotated[float, PlainSerializer(lambda v: int(v) if float(v).is_integer() else v)]


class IdentityLdap(Closed):
    """RFC 2307 posixAccount / posixGroup entries of a directory (TLS verified).

    The keys and their types, for editors; the rules are hubdeploy.contract.ldap's, which
    the hub applies to the same section."""

    url: str = Field(description="ldaps://host[:port], or ldap://host[:port] with start_tls.")
    start_tls: bool = Field(False, description="StartTLS on an ldap:// URL.")
    ca_file: str | None = Field(None, description="CA bundle that verifies the directory; default: the system's.")
    bind_dn: str = Field(description="The DN the hub binds as.")
    bind_password_file: str = Field(description="File holding the bind DN's password (mode 0600).")
    user_base: str
    user_filter: str = Field(ldap_settings.DEFAULT_USER_FILTER, description="Finds a user's posixAccount: {name}.")
    group_base: str | None = None
    group_filter: str = Field(ldap_settings.DEFAULT_GROUP_FILTER,
                              description="Finds a user's posixGroups: {name} or {dn}.")
    timeout: Seconds = Field(10, description=f"Seconds, at most {ldap_settings.TIMEOUT_MAX}.")
    cache_seconds: Seconds = Field(60, description=f"Seconds, at most {ldap_settings.CACHE_MAX}.")

    @model_validator(mode="after")
    def _rules(self) -> "IdentityLdap":
        try:
            ldap_settings.parse_config(self.model_dump())
        except ldap_settings.LdapSettingError as exc:
            raise SiteValueError([((exc.key,) if exc.key else (), exc.reason)]) from None
        return self


class Identity(Closed):
    """Where each hub user's POSIX account comes from (uid, gid, groups, home)."""

    source: Literal["auto", "file", "ldap", "shared"] = Field(
        "auto", description="auto: allocated at first spawn; file: passwd/group files; ldap: a directory; "
        "shared: every user is the image's jovyan (no isolation between users).")
    auto: IdentityAuto = Field(default_factory=IdentityAuto)
    file: IdentityFile | None = None
    ldap: IdentityLdap | None = None
    home: str = Field("/home/{name}", pattern=r"^(/[A-Za-z0-9_.-]+)+/\{name\}$",
                      description="Users' homes: a directory, then /{name} (the account name).")
    homes_host: str | None = Field(
        None, pattern=r"^(/[A-Za-z0-9_.-]+)+$",
        description="A host directory (a shared file system) holding the homes; default: a volume of the stack.")
    allow_shared_compute_account: bool = Field(
        False, description="Let compute profiles run every user's jobs as one account (no isolation).")

    @model_validator(mode="after")
    def _source(self) -> "Identity":
        for name in ("file", "ldap"):
            if (self.source == name) != (getattr(self, name) is not None):
                raise ValueError(f"identity source {self.source!r} " + (
                    f"needs its '{name}' section" if self.source == name else f"takes no '{name}' section"))
        return self

    @property
    def homes_dir(self) -> str:
        """The directory that holds every home (the mount point on nodes and login containers)."""
        return self.home.rsplit("/", 1)[0]


# A registry as ``docker push`` names it: HOST or HOST:PORT, no scheme and no path
# (``images push --registry`` takes the same).
REGISTRY_PATTERN = r"^[A-Za-z0-9.-]+(:\d{1,5})?$"
Registry = Annotated[str, StringConstraints(pattern=REGISTRY_PATTERN)]


class SwarmOptions(Closed):
    """Settings that apply with orchestrator: swarm."""

    encrypted: bool = Field(False, description="Encrypt the users overlay network between nodes (IPsec).")
    registry: Registry | None = Field(
        None, description="HOST[:PORT] of the registry every node pulls notebook images from: up pushes what it "
        "lacks and servers run images by digest. Without it servers run the manager's local images (one node).")


class Site(Closed):
    """A facility's JupyterHub, described in one file."""

    name: Name = Field(description="Site name; prefixes every container, network, volume and image.")
    public: Public = Field(default_factory=Public)
    tls: TLS | None = None
    hub: Hub = Field(default_factory=Hub)
    database: Database = Field(default_factory=Database)
    proxy: Proxy = Field(default_factory=Proxy)
    services: Services = Field(default_factory=Services)
    build: Build = Field(default_factory=Build)
    images: Images = Field(default_factory=Images)
    slurm: SiteSlurm | None = Field(None, description="Slurm for compute profiles.")
    identity: Identity = Field(default_factory=Identity, description="Users' POSIX accounts.")
    limits: StackLimits = Field(default_factory=StackLimits, description="Memory, CPU and process bounds of the "
                                "stack's services.")
    orchestrator: Literal["compose", "swarm"] = Field(
        "compose", description="compose: login-node servers are containers on this engine; swarm: one-replica "
        "services the swarm this engine manages places on its nodes.")
    swarm: SwarmOptions = Field(default_factory=lambda: SwarmOptions())
    profiles: list[Profile] = Field(min_length=1)

    def warnings(self) -> list[str]:
        """What is valid but unsafe, for ``validate`` and ``up`` to say."""
        out = []
        if self.identity.source == "shared":
            out.append("identity.source: shared runs every user's server as the one account jovyan: "
                       "users can read and change each other's files and servers")
        if self.shared_compute_account and any(p.node == "compute" for p in self.profiles):
            out.append("identity.allow_shared_compute_account: every user's compute jobs run as one account")
        for svc in self.services.extra:
            # hubdeploy builds its own images here; a site's image comes from a registry,
            # where a tag can be moved to other contents.
            if svc.image is not None and "@sha256:" not in svc.image:
                out.append(f"services.extra {svc.name}: image {svc.image} is not pinned by digest "
                           "(name:tag@sha256:...): the registry may serve other contents under that tag")
        return out

    @property
    def shared_compute_account(self) -> bool:
        """Whether compute jobs would all run as one account: identity shared, or a site's
        submit path that does not submit as each user."""
        if self.identity.source == "shared":
            return True
        sub = self.slurm.submit if self.slurm is not None else None
        if sub is None:
            return False
        if sub.ssh is not None:
            return not sub.ssh.certificates
        return not any("{name}" in w or "{uid}" in w for w in sub.prefix)

    @property
    def submit_ssh(self) -> SlurmSSH | None:
        """The ssh settings when compute jobs go to the site's own Slurm over ssh."""
        sub = self.slurm.submit if self.slurm is not None else None
        return sub.ssh if sub is not None else None

    @model_validator(mode="after")
    def _profiles(self) -> "Site":
        problems: list[tuple[tuple[str | int, ...], str]] = []
        known = self.images.names()
        first: dict[str, int] = {}
        default: int | None = None
        for i, p in enumerate(self.profiles):
            if p.image not in known:
                problems.append(
                    (
                        ("profiles", i, "image"),
                        f"profile {p.name!r}: image {p.image!r} is not declared; declared: {', '.join(known)}",
                    )
                )
            if p.name in first:
                problems.append(
                    (("profiles", i, "name"), f"duplicate profile name {p.name!r} (first: profiles[{first[p.name]}])")
                )
            else:
                first[p.name] = i
            if p.node == "compute":
                problems += self._compute_problems(i, p)
            for key in ("placement", "reserve"):
                if getattr(p, key) is not None and self.orchestrator != "swarm":
                    problems.append((("profiles", i, key), f"profile {p.name!r}: {key} needs orchestrator: swarm"))
            if p.default:
                if default is not None:
                    problems.append(
                        (
                            ("profiles", i, "default"),
                            f"at most one profile may be the default (already: profiles[{default}])",
                        )
                    )
                else:
                    default = i
        if self.orchestrator != "swarm" and "swarm" in self.model_fields_set:
            problems.append((("swarm",), "swarm settings need orchestrator: swarm"))
        if self.orchestrator == "swarm":
            problems += self._swarm_problems()
        if self.slurm and self.slurm.cluster and self.slurm.cluster.image not in known:
            problems.append(
                (("slurm", "cluster", "image"), f"image {self.slurm.cluster.image!r} is not declared; "
                 f"declared: {', '.join(known)}")
            )
        ssh = self.submit_ssh
        if ssh is not None and ssh.certificates and self.identity.source == "shared":
            problems.append(
                (("slurm", "submit", "ssh", "certificates"), "certificates name each user's own account, "
                 "but identity.source shared has none: choose auto, file or ldap")
            )
        if problems:
            raise SiteValueError(problems)
        return self

    def _swarm_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What a swarm stack cannot do as the site asks (hubdeploy.render.swarmstack)."""
        out: list[tuple[tuple[str | int, ...], str]] = []
        if self.public.host not in ("0.0.0.0", "::"):
            out.append((("public", "host"), f"orchestrator swarm publishes the proxy's port on every address of "
                        f"the manager (a swarm port has no host address), not on {self.public.host} alone: set "
                        "public.host: 0.0.0.0, and firewall the port where it must not be reached"))
        if self.slurm is not None and self.slurm.cluster is not None:
            out.append((("slurm", "cluster"), "the stack's own Slurm cluster runs with orchestrator: compose; on a "
                        "swarm, compute profiles go to the site's own Slurm (slurm.submit)"))
        return out

    def _compute_problems(self, i: int, p: Profile) -> list[tuple[tuple[str | int, ...], str]]:
        if self.slurm is None:
            return [(("profiles", i, "node"), f"profile {p.name!r} runs on compute nodes, but the site "
                     "declares no 'slurm' section (cluster or submit)")]
        if self.shared_compute_account and not self.identity.allow_shared_compute_account:
            why = ("identity.source is shared" if self.identity.source == "shared" else
                   "slurm.submit submits every job as one account")
            return [(("profiles", i, "node"), f"profile {p.name!r} would run every user's jobs as one account "
                     f"({why}); set identity.allow_shared_compute_account: true to accept that")]
        cluster = self.slurm.cluster
        if cluster is None:
            return []
        if p.slurm is None:
            return self._fit_problems(i, p, cluster)
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for key, names in (("partition", [p.slurm.partition] if p.slurm.partition else []),
                           ("partitions", p.slurm.partitions)):
            for name in names:
                if name not in cluster.partitions:
                    problems.append((("profiles", i, "slurm", key), f"partition {name!r} is not in "
                                     f"slurm.cluster.partitions ({', '.join(cluster.partitions)})"))
        if cluster.accounts and p.slurm.account and p.slurm.account not in cluster.accounts:
            # The cluster's job_submit plugin would refuse every job of this profile: say so
            # now, where the operator can fix it, not at each user's spawn.
            problems.append((("profiles", i, "slurm", "account"), f"account {p.slurm.account!r} is not in "
                             f"slurm.cluster.accounts ({', '.join(cluster.accounts)}): Slurm would refuse "
                             f"every job of profile {p.name!r}"))
        for key, value in (("time", p.slurm.time), ("max_time", p.slurm.limits.max_time)):
            if value and parse_time(value) > parse_time(cluster.max_time):
                where = ("profiles", i, "slurm") + (("limits",) if key == "max_time" else ()) + (key,)
                problems.append((where, f"{key} {value} is longer than slurm.cluster.max_time ({cluster.max_time}), "
                                 "the longest a profile may give"))
        if p.slurm.qos and p.slurm.qos != QOS:
            problems.append((("profiles", i, "slurm", "qos"), f"qos {p.slurm.qos!r}: the stack's cluster has one "
                             f"QOS, {QOS!r}, which holds its limits"))
        problems += self._fit_problems(i, p, cluster)
        if p.slurm.runtime == "native" and p.image != cluster.image:
            problems.append((("profiles", i, "image"), f"profile {p.name!r} runs natively on the stack's "
                             f"compute nodes, which run image {cluster.image!r}, not {p.image!r}"))
        return problems

    def _fit_problems(self, i: int, p: Profile, cluster: SlurmClusterSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Whether the most a profile's form allows fits a node and one user's limits: the
        cluster's limits derive from the profiles (hubdeploy.render.slurm), so a profile
        that does not fit would have every job refused, or pending forever."""
        limits = (p.slurm or ProfileSlurm()).limits
        got = allowance(p)
        cpu_key = ("profiles", i, "slurm", "limits", "max_cpu") if limits.max_cpu else ("profiles", i, "cpu")
        mem_key = ("profiles", i, "slurm", "limits", "max_memory") if limits.max_memory else ("profiles", i, "memory")
        out: list[tuple[tuple[str | int, ...], str]] = []
        if got.cpus > cluster.cpus:
            out.append((cpu_key, f"profile {p.name!r} may ask for {got.cpus} cores; a node of slurm.cluster has "
                        f"{cluster.cpus}"))
        if got.mem_bytes is not None and got.mem_bytes > memory_bytes(cluster.memory):
            out.append((mem_key, f"profile {p.name!r} may ask for {limits.max_memory or p.memory} of memory; a "
                        f"node of slurm.cluster has {cluster.memory}"))
        if cluster.user_limits.cpus is not None and got.cpus > cluster.user_limits.cpus:
            out.append((cpu_key, f"profile {p.name!r} may ask for {got.cpus} cores; "
                        f"slurm.cluster.user_limits.cpus lets a user hold {cluster.user_limits.cpus}"))
        return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema editors use (``hubdeploy schema``); aliases as written in YAML."""
    return _close_pattern_maps(Site.model_json_schema(by_alias=True))


def _close_pattern_maps(node: Any) -> Any:
    # pydantic describes dict[Name, X] as patternProperties alone, which in JSON Schema
    # lets any key that misses the pattern through; the model rejects those keys, so
    # say so, or an editor would accept what `hubdeploy validate` refuses.
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            _close_pattern_maps(v)
    elif isinstance(node, list):
        for v in node:
            _close_pattern_maps(v)
    return node
