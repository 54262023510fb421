"""The operator's side of ``orchestrator: swarm`` (:class:`SwarmOrchestrator`): the
stack as a swarm stack on one manager (:mod:`hubdeploy.ops.stackdeploy`), what ``up``
checks and pushes, and what ``down`` removes.

The hub starts login-node servers as swarm services (hubdeploy.backends.swarm). With
``swarm.registry``, ``up`` pushes the notebook images login profiles use (what the
registry lacks) and the hub gets them as ``REGISTRY/NAME@sha256:DIGEST``, so every node
runs the same bytes, whatever a tag points to later. ``down`` removes what the stack
does not own: services the hub could not stop, their account configs, and the attachable
overlay network a just-stopped task was still leaving when compose tried.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors

from hubdeploy.contract.labels import compose_filter
from hubdeploy.contract.layout import LABEL_SITE, LABEL_USER
from hubdeploy.errors import OperationError
from hubdeploy.images import publish
from hubdeploy.images.build import ENGINE_ERRORS, build_images
from hubdeploy.images.plan import ImagePlan
from hubdeploy.ops import engine, stackdeploy, upgrade
from hubdeploy.ops.orchestrator import Orchestrator
from hubdeploy.site.model import Site

if TYPE_CHECKING:
    from hubdeploy.ops.prepared import Prepared

# Seconds to wait for the manager to let go of a removed service's configs and networks.
RELEASE_WAIT = 30
# A manifest digest as a registry names it (the only kind hubdeploy pins images by).
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def require_manager(client) -> None:
    """hubdeploy never creates or joins a swarm: which machines belong to the facility's
    swarm is the operator's decision."""
    state = client.info().get("Swarm") or {}
    if state.get("LocalNodeState") != "active" or not state.get("ControlAvailable"):
        raise OperationError(
            "orchestrator is swarm, but this Docker engine is not a swarm manager",
            hint="docker swarm init --advertise-addr ADDRESS (or run up on a manager), or set orchestrator: compose",
        )


@dataclass(frozen=True)
class Published:
    """A notebook image as swarm nodes pull it."""

    image: str  # the site's image name (base, a collaboration)
    ref: str  # REGISTRY/NAME@sha256:DIGEST
    digest: str
    pushed: bool  # False: the registry had it already


def login_images(site: Site) -> list[str]:
    """The images the swarm backend runs: those of login profiles, in profile order."""
    return list(dict.fromkeys(p.image for p in site.profiles if p.node == "login"))


def registry_repo(plan: ImagePlan, registry: str) -> str:
    """``hubdeploy/demo-base:abc`` in ``reg:5000`` is the repository ``reg:5000/hubdeploy/demo-base``."""
    return publish.remote_ref(plan, registry).rsplit(":", 1)[0]


def digest_ref(repo: str, digest: str) -> str:
    """``reg:5000/hubdeploy/demo-base@sha256:...``; OperationError for anything but a sha256 digest."""
    if not DIGEST_RE.fullmatch(digest or ""):
        raise OperationError(f"the registry gave {repo} the digest {digest!r}, not a sha256 digest")
    return f"{repo}@{digest}"


def known_digest(repo_digests: Iterable[str], repo: str) -> str | None:
    """The digest under which ``repo`` holds this image, from the engine's RepoDigests
    (which name only manifests of this very image), or None."""
    for entry in sorted(repo_digests):
        name, _, digest = entry.partition("@")
        if name == repo and DIGEST_RE.fullmatch(digest):
            return digest
    return None


def pinned_by_engine(site: Site, plans: Mapping[str, ImagePlan]) -> dict[str, str]:
    """Image name -> ``REGISTRY/NAME@sha256:DIGEST`` for the login images whose digest in
    ``swarm.registry`` the engine already records (an earlier ``up`` pushed them). Reads
    the local engine only, never the registry: ``render``, ``status`` and ``down`` then
    render what ``up`` rendered instead of putting tags back into hub.json. {} when the
    engine cannot be reached (``render`` works without one)."""
    registry = site.swarm.registry
    if site.orchestrator != "swarm" or not registry:
        return {}
    try:
        client = engine.docker_client()
    except OperationError:
        return {}
    pinned = {}
    for name in login_images(site):
        repo = registry_repo(plans[name], registry)
        digest = _engine_digest(client, plans[name].ref, repo)
        if digest is not None:  # None: not built or not pushed yet; up does both
            pinned[name] = digest_ref(repo, digest)
    return pinned


def _engine_digest(client, local_ref: str, repo: str) -> str | None:
    """The digest the local engine records for ``local_ref`` in ``repo`` (RepoDigests);
    None when the image or the record is missing. Never asks the registry."""
    try:
        return known_digest(client.api.inspect_image(local_ref).get("RepoDigests") or (), repo)
    except ENGINE_ERRORS:
        return None


def publish_images(client, plans: Mapping[str, ImagePlan], names: Iterable[str], registry: str, *,
                   console=None) -> list[Published]:
    """Push each named image the registry does not hold yet; every one as nodes pull it.

    Raises OperationError naming the registry when it cannot be reached or refuses."""
    out = []
    for name in names:
        plan = plans[name]
        repo = registry_repo(plan, registry)
        digest = _held_by_registry(client, plan.ref, repo)
        pushed = digest is None
        if pushed:
            digest = publish.push(client, plan, registry, console=console).digest or ""
        ref = digest_ref(repo, digest)
        if pushed:
            _keep_locally(client, ref, registry)
        out.append(Published(name, ref, digest, pushed))
    return out


def _held_by_registry(client, local_ref: str, repo: str) -> str | None:
    """The digest of ``local_ref`` in ``repo`` when the engine knows one and the registry
    still serves it; None means push (which reports an unreachable registry)."""
    digest = _engine_digest(client, local_ref, repo)
    if digest is None:
        return None
    try:
        found = client.api.inspect_distribution(f"{repo}@{digest}")
    except ENGINE_ERRORS:
        return None
    return digest if (found.get("Descriptor") or {}).get("digest") == digest else None


def _keep_locally(client, ref: str, registry: str) -> None:
    """Give the manager's engine the reference ``REPO@DIGEST`` (untagging after a push drops
    it): the hub reads the image's /etc/passwd from it before the service exists, and
    its engine proxy allows no pull. The layers are here: only the manifest moves."""
    repo, digest = ref.split("@", 1)
    try:
        client.api.pull(repo, tag=digest)
    except ENGINE_ERRORS as exc:
        raise OperationError(f"pulling {ref} back from {registry} failed: {exc}") from None


def remove_leftovers(client, site: str) -> list[str]:
    """Remove the site's notebook services and their configs; the services' names."""
    services = client.services.list(filters={"label": [f"{LABEL_SITE}={site}", LABEL_USER]})
    for svc in services:
        svc.remove()
    _remove_when_free(client.configs.list(filters={"label": f"{LABEL_SITE}={site}"}))
    return [svc.name for svc in services]


def remove_project_networks(client, project: str) -> None:
    _remove_when_free(client.networks.list(filters={"label": compose_filter(project)}))


def _remove_when_free(objects: Iterable) -> None:
    """Remove each object, retrying while the engine says it is still in use (bounded)."""
    deadline = time.monotonic() + RELEASE_WAIT
    for obj in objects:
        while True:
            try:
                obj.remove()
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


class SwarmOrchestrator(Orchestrator):
    """The stack as a swarm stack (:mod:`hubdeploy.ops.stackdeploy`) on one manager."""

    name = "swarm"

    def pinned_images(self, site: Site, plans: Mapping[str, ImagePlan]) -> dict[str, str]:
        return pinned_by_engine(site, plans)

    def control_node(self, state: Path) -> str:
        return stackdeploy.control_node(state)

    def place(self, prep: Prepared, client, *, console=None) -> None:
        require_manager(client)
        if not prep.swarm_node:  # the first up: the services stay on this manager
            prep.swarm_node = client.info()["Swarm"]["NodeID"]
            prep.rerender()
            return
        node = stackdeploy.confirm_control_node(client, prep.project, prep.swarm_node, prep.state)
        if node != prep.swarm_node:
            if console:
                console.print(f"the swarm has no node {prep.swarm_node}: the services move to this manager "
                              f"({node}), which holds the stack's volumes", markup=False, highlight=False,
                              soft_wrap=True)
            prep.swarm_node = node
            prep.rerender()

    def publish(self, prep: Prepared, client, *, console=None) -> tuple[list[str], list[Published]]:
        """Build the images login profiles use, push what ``swarm.registry`` lacks, and
        render again with their digests."""
        registry = prep.site.swarm.registry
        if not registry:
            return [], []
        names = login_images(prep.site)
        built = build_images(prep.plans, client=client, state_dir=prep.state, names=names, console=console)
        published = publish_images(client, prep.plans, names, registry, console=console)
        prep.pinned = {p.image: p.ref for p in published}
        prep.rerender()
        if console:
            _say_published(console, published, registry)
        return built, published

    def remember(self, prep: Prepared) -> None:
        stackdeploy.record_control_node(prep.state, prep.swarm_node)

    def leave_other(self, prep: Prepared, client) -> None:
        if client.containers.list(all=True, filters={"label": compose_filter(prep.project)}):
            engine.compose_down(prep.project, prep.compose_file)

    def deploy(self, prep: Prepared, client, *, wait_timeout: int) -> None:
        """Deploy unless the stack file is the one deployed and every service runs
        healthy; then wait for every service."""
        expected = prep.expected_services
        deployed_at = None
        rows = stackdeploy.service_rows(client, prep.project)
        if not stackdeploy.deployed_unchanged(prep.state, prep.stack_file, rows, expected):
            stackdeploy.forget_deployed(prep.state)
            deployed_at = stackdeploy.engine_now(client)
            stackdeploy.deploy(prep.project, prep.stack_file)
        stackdeploy.wait_healthy(client, prep.project, expected, wait_timeout, deployed_at=deployed_at)
        stackdeploy.record_deployed(prep.state, prep.stack_file)

    def services(self, prep: Prepared, client=None) -> list[dict[str, Any]]:
        rows = stackdeploy.service_rows(client or engine.docker_client(), prep.project)
        return [{k: r[k] for k in ("service", "state", "health", "container")} for r in rows]

    def logs(self, prep: Prepared, services: list[str] | None, follow: bool, tail: str) -> int:
        return stackdeploy.logs(prep.project, services or sorted(prep.expected_services), follow, tail)

    def remove(self, prep: Prepared, client, *, volumes: bool) -> tuple[list[str], list[str]]:
        """The stack and the notebook services the hub left, then compose's project (a
        stack that ran under compose before), then the networks a leaving task held."""
        # An engine that has left the swarm holds none of the swarm's services any more.
        manager = stackdeploy.is_manager(client)
        removed, removed_volumes = [], []
        if manager:
            removed = remove_leftovers(client, prep.site.name)
            removed_volumes = stackdeploy.remove(client, prep.project, volumes=volumes)
            stackdeploy.forget_deployed(prep.state)
        engine.compose_down(prep.project, prep.compose_file, volumes=volumes)
        if manager:
            remove_project_networks(client, prep.project)
        return removed, removed_volumes

    def hub_control(self, prep: Prepared, client, old):
        return upgrade.service_control(client, prep.project)

    def upgrade_db(self, prep: Prepared, client, old, new_image: str) -> None:
        upgrade.upgrade_db_service(client, prep.project, new_image)


def _say_published(console, published: list[Published], registry: str) -> None:
    for p in published:
        if p.pushed:
            console.print(f"pushed {p.image} to {registry} ({p.digest})", markup=False, highlight=False,
                          soft_wrap=True)
    if published and not any(p.pushed for p in published):
        console.print(f"nothing to push: {registry} has {', '.join(p.image for p in published)}",
                      markup=False, highlight=False, soft_wrap=True)
