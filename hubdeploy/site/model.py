"""The site description: :class:`Site`, one closed model per top-level key, assembled
from the sections' modules, and the checks that span sections (profiles against images,
the Slurm cluster, identity and the orchestrator).

Nothing here touches the disk or a daemon; :mod:`hubdeploy.site.loader` turns YAML into
these models and pydantic errors into messages with file, line and column.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from hubdeploy.contract.layout import NODE_JOBS_DIR

# The compute nodes' own system directories: no profile volume is mounted over them.
NODE_SYSTEM_PATHS = ("/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt/venv", "/root", "/run",
                     "/sbin", "/usr", "/var")
from hubdeploy.contract.slurmcmd import QOS
from hubdeploy.contract.values import memory_bytes, parse_time
from hubdeploy.site.build import Build
from hubdeploy.site.database import Database
from hubdeploy.site.fields import Closed, Name, Problem, SiteValueError, repeated_names
from hubdeploy.site.hub import Hub
from hubdeploy.site.identity import Identity
from hubdeploy.site.images import Images
from hubdeploy.site.limits import StackLimits
from hubdeploy.site.profiles import Profile, ProfileSlurm, allowance
from hubdeploy.site.proxy import TLS, Proxy, Public
from hubdeploy.site.services import Services
from hubdeploy.site.slurm import SiteSlurm, SlurmClusterSpec, SlurmSSH
from hubdeploy.site.swarm import SwarmOptions


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
        return out + self._runtime_warnings()

    def _runtime_warnings(self) -> list[str]:
        # ch-run 0.31 has no read-only bind: on the stack's cluster the nodes mount such a
        # volume read-only (render.slurmservices); a site's own nodes must do it themselves.
        return [f"profile {p.name}: volume {v.target} is read_only, but charliecloud binds it as the site's "
                f"nodes mount {v.source}: read-only inside only if that mount is"
                for p in self.profiles
                if p.node == "compute" and p.slurm is not None and p.slurm.runtime == "charliecloud"
                and not self.staged(p) for v in p.volumes if v.read_only]

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

    def staged(self, p: Profile) -> bool:
        """Whether profile ``p``'s image runs through Charliecloud on the stack's own
        cluster: staged onto the nodes by ``images stage`` (hubdeploy.images.stage)."""
        return (p.node == "compute" and p.slurm is not None and p.slurm.runtime == "charliecloud"
                and self.slurm is not None and self.slurm.cluster is not None)

    @property
    def staged_profiles(self) -> list[Profile]:
        """The compute profiles :meth:`staged` holds for, in the site file's order."""
        return [p for p in self.profiles if self.staged(p)]

    @property
    def staged_volumes(self) -> list[tuple[str, str, bool]]:
        """(source, target, read_only) of the staged profiles' volumes, once each by target
        (the checks below make one target one volume): every node mounts them."""
        seen: dict[str, tuple[str, str, bool]] = {}
        for p in self.staged_profiles:
            for v in p.volumes:
                seen.setdefault(v.target, (v.source, v.target, v.read_only))
        return [seen[t] for t in sorted(seen)]

    @model_validator(mode="after")
    def _across_sections(self) -> "Site":
        problems = self._profile_problems() + self._orchestrator_problems() + self._slurm_problems()
        if problems:
            raise SiteValueError(problems)
        return self

    def _profile_problems(self) -> list[Problem]:
        """Each profile against the images, the other profiles, Slurm and the orchestrator."""
        problems: list[Problem] = []
        known = self.images.names()
        repeated = repeated_names([p.name for p in self.profiles], "profile", "profiles", ("profiles",))
        default: int | None = None
        for i, p in enumerate(self.profiles):
            if p.image not in known:
                problems.append((("profiles", i, "image"), f"profile {p.name!r}: image {p.image!r} is not "
                                 f"declared; declared: {', '.join(known)}"))
            if i in repeated:
                problems.append(repeated[i])
            if p.node == "compute":
                problems += self._compute_problems(i, p)
            problems += self._placement_problems(i, p)
            if p.default and default is not None:
                problems.append((("profiles", i, "default"),
                                 f"at most one profile may be the default (already: profiles[{default}])"))
            elif p.default:
                default = i
        return problems

    def _placement_problems(self, i: int, p: Profile) -> list[Problem]:
        """A profile's swarm placement or reservations without a swarm to apply them."""
        if self.orchestrator == "swarm":
            return []
        return [(("profiles", i, key), f"profile {p.name!r}: {key} needs orchestrator: swarm")
                for key in ("placement", "reserve") if getattr(p, key) is not None]

    def _orchestrator_problems(self) -> list[Problem]:
        if self.orchestrator == "swarm":
            return self._swarm_problems()
        if "swarm" in self.model_fields_set:
            return [(("swarm",), "swarm settings need orchestrator: swarm")]
        return []

    def _slurm_problems(self) -> list[Problem]:
        """The slurm section against the images and the identity source."""
        problems: list[Problem] = []
        known = self.images.names()
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
        return problems

    def _swarm_problems(self) -> list[Problem]:
        """What a swarm stack cannot do as the site asks (hubdeploy.render.swarmstack)."""
        out: list[Problem] = []
        if self.public.host not in ("0.0.0.0", "::"):
            out.append((("public", "host"), f"orchestrator swarm publishes the proxy's port on every address of "
                        f"the manager (a swarm port has no host address), not on {self.public.host} alone: set "
                        "public.host: 0.0.0.0, and firewall the port where it must not be reached"))
        if self.slurm is not None and self.slurm.cluster is not None:
            out.append((("slurm", "cluster"), "the stack's own Slurm cluster runs with orchestrator: compose; on a "
                        "swarm, compute profiles go to the site's own Slurm (slurm.submit)"))
        return out

    def _compute_problems(self, i: int, p: Profile) -> list[Problem]:
        """A compute profile against the site's Slurm section and identity."""
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
            return self._submit_runtime_problems(i, p)
        if p.slurm is None:
            return self._fit_problems(i, p, cluster)
        return (self._job_problems(i, p, p.slurm, cluster) + self._fit_problems(i, p, cluster)
                + self._runtime_problems(i, p, p.slurm, cluster))

    def _job_problems(self, i: int, p: Profile, job: ProfileSlurm, cluster: SlurmClusterSpec) -> list[Problem]:
        """A compute profile's job settings against the stack's cluster: partitions,
        account, time limits and QOS that the cluster has."""
        problems: list[Problem] = []
        for key, names in (("partition", [job.partition] if job.partition else []), ("partitions", job.partitions)):
            for name in names:
                if name not in cluster.partitions:
                    problems.append((("profiles", i, "slurm", key), f"partition {name!r} is not in "
                                     f"slurm.cluster.partitions ({', '.join(cluster.partitions)})"))
        if cluster.accounts and job.account and job.account not in cluster.accounts:
            # The cluster's job_submit plugin would refuse every job of this profile: say so
            # now, where the operator can fix it, not at each user's spawn.
            problems.append((("profiles", i, "slurm", "account"), f"account {job.account!r} is not in "
                             f"slurm.cluster.accounts ({', '.join(cluster.accounts)}): Slurm would refuse "
                             f"every job of profile {p.name!r}"))
        for key, value in (("time", job.time), ("max_time", job.limits.max_time)):
            if value and parse_time(value) > parse_time(cluster.max_time):
                where = ("profiles", i, "slurm") + (("limits",) if key == "max_time" else ()) + (key,)
                problems.append((where, f"{key} {value} is longer than slurm.cluster.max_time ({cluster.max_time}), "
                                 "the longest a profile may give"))
        if job.qos and job.qos != QOS:
            problems.append((("profiles", i, "slurm", "qos"), f"qos {job.qos!r}: the stack's cluster has one "
                             f"QOS, {QOS!r}, which holds its limits"))
        return problems

    def _runtime_problems(self, i: int, p: Profile, job: ProfileSlurm, cluster: SlurmClusterSpec) -> list[Problem]:
        """How a profile's server runs on the stack's nodes: natively in the nodes' own
        image, or through Charliecloud (the one runtime the nodes have) in any site image."""
        where = ("profiles", i, "slurm")
        if job.runtime == "native" and p.image != cluster.image:
            return [(("profiles", i, "image"), f"profile {p.name!r} runs natively on the stack's "
                     f"compute nodes, which run image {cluster.image!r}, not {p.image!r}; "
                     "slurm.runtime: charliecloud runs any site image there")]
        if job.runtime not in ("native", "charliecloud"):
            return [((*where, "runtime"), f"runtime {job.runtime!r} is not on the stack's compute nodes: "
                     "they run native or charliecloud")]
        if job.runtime == "charliecloud" and job.image is not None:
            return [((*where, "image"), f"profile {p.name!r} runs its image {p.image!r}, which `images stage` "
                     "puts on the stack's nodes: leave slurm.image unset")]
        return self._node_volume_problems(i, p) + self._bind_target_problems(i, p) if job.runtime == "charliecloud" \
            else []

    def _bind_target_problems(self, i: int, p: Profile) -> list[Problem]:
        """Volume targets a charliecloud profile may not use on the stack's nodes: one of
        ch-run's own binds (the job's /tmp and directory, the homes, the node's /dev, /proc,
        /sys, the image's /ch), or the node's own files. Every node mounts these volumes at
        their targets for all its jobs: over its programs or configuration (agent, prolog,
        Slurm and munge files, Jupyter) a volume users can write would run their code as root."""
        binds = ("/", "/tmp", NODE_JOBS_DIR, self.identity.homes_dir, "/dev", "/proc", "/sys", "/ch")
        out: list[Problem] = []
        for j, v in enumerate(p.volumes):
            hit = _under(v.target, binds)
            if hit is not None:
                why = f"charliecloud binds {hit} itself on the stack's nodes; choose another target"
            elif (hit := _under(v.target, NODE_SYSTEM_PATHS)) is not None:
                why = (f"every compute node of the stack mounts this profile's volumes at their targets, and {hit} "
                       "is the node's own; choose a target such as /srv/NAME or /data")
            else:
                continue
            out.append((("profiles", i, "volumes", j, "target"), f"{v.target}: {why}"))
        return out

    def _node_volume_problems(self, i: int, p: Profile) -> list[Problem]:
        """Every node mounts each charliecloud profile's volumes at their targets (the job
        binds them from there): one target, one source and mode, across those profiles."""
        out: list[Problem] = []
        for earlier in self.profiles[:i]:
            if earlier.slurm is None or earlier.slurm.runtime != "charliecloud" or earlier.node != "compute":
                continue
            seen = {v.target: v for v in earlier.volumes}
            for j, v in enumerate(p.volumes):
                other = seen.get(v.target)
                if other is not None and (other.source, other.read_only) != (v.source, v.read_only):
                    out.append((("profiles", i, "volumes", j, "target"), f"{v.target} is also profile "
                                f"{earlier.name!r}'s, from {other.source} (read_only {other.read_only}): the "
                                "stack's nodes mount one volume there for every charliecloud profile"))
        return out

    def _submit_runtime_problems(self, i: int, p: Profile) -> list[Problem]:
        """charliecloud on a site's own cluster: the nodes find the image where the site put it."""
        if p.slurm is not None and p.slurm.runtime == "charliecloud" and p.slurm.image is None:
            return [(("profiles", i, "slurm", "image"), f"profile {p.name!r} runs through charliecloud on the "
                     "site's own cluster: set slurm.image to the image's flattened directory or .sqfs on the nodes")]
        return []

    def _fit_problems(self, i: int, p: Profile, cluster: SlurmClusterSpec) -> list[Problem]:
        """Whether the most a profile's form allows fits a node and one user's limits: the
        cluster's limits derive from the profiles (hubdeploy.render.slurm), so a profile
        that does not fit would have every job refused, or pending forever."""
        limits = (p.slurm or ProfileSlurm()).limits
        got = allowance(p)
        cpu_key = ("profiles", i, "slurm", "limits", "max_cpu") if limits.max_cpu else ("profiles", i, "cpu")
        mem_key = ("profiles", i, "slurm", "limits", "max_memory") if limits.max_memory else ("profiles", i, "memory")
        out: list[Problem] = []
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


def _under(path: str, tops: tuple[str, ...]) -> str | None:
    """The first of ``tops`` that ``path`` is or lies under ("/" only itself)."""
    return next((top for top in tops if path == top or (top != "/" and path.startswith(top.rstrip("/") + "/"))),
                None)
