"""A site loaded, validated, planned and rendered in memory: what every operation of
:mod:`hubdeploy.ops.stack` starts from, before any side effect."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubdeploy import render
from hubdeploy.contract.layout import project_name
from hubdeploy.images.plan import image_refs
from hubdeploy.ops.stackdeploy import STACK_FILE
from hubdeploy.site.model import Site
from hubdeploy.state import ownership, selfsigned


@dataclass
class Prepared:
    """A validated site with everything derived from it, before any side effect."""

    site_file: Path
    site: Site
    plans: dict[str, Any]
    files: dict[str, bytes]
    owner: ownership.Owner
    # Image name -> REGISTRY/NAME@sha256:DIGEST for swarm nodes (swarm.registry); set by
    # prepare from what the engine records of earlier pushes, and by up after its push.
    pinned: dict[str, str] = field(default_factory=dict)
    # orchestrator swarm: the manager the stack's services run on (stackdeploy.control_node).
    swarm_node: str = ""

    @property
    def state(self) -> Path:
        return render.state_dir(self.site_file)

    @property
    def rendered(self) -> Path:
        return self.state / "rendered"

    @property
    def compose_file(self) -> Path:
        return self.rendered / "compose.yaml"

    @property
    def stack_file(self) -> Path:
        return self.rendered / STACK_FILE

    @property
    def project(self) -> str:
        return project_name(self.site.name)

    @property
    def url(self) -> str:
        scheme = "https" if self.site.tls else "http"
        host = self.site.public.host
        host = "localhost" if host in ("0.0.0.0", "::") else host
        return f"{scheme}://{host}:{self.site.public.port}/"

    @property
    def self_signed_cert(self) -> Path | None:
        """Where ``tls: {self_signed: true}`` keeps its certificate (None for other sites)."""
        if self.site.tls is None or not self.site.tls.self_signed:
            return None
        return selfsigned.paths(self.state / "secrets")[0]

    @property
    def expected_services(self) -> set[str]:
        """The services of the rendered compose file (swarm's stack has the same names)."""
        from ruamel.yaml import YAML

        return set(YAML(typ="safe").load(self.files["compose.yaml"])["services"])

    def rerender(self) -> None:
        """Render again after something rendering reads changed (pins, node, certificate)."""
        self.files = render_files(self.site, self.site_file, self.plans, self.owner, self.pinned, self.swarm_node)


def render_files(site: Site, site_file: Path, plans: dict[str, Any], owner: ownership.Owner,
            pinned: dict[str, str] | None = None, swarm_node: str = "") -> dict[str, bytes]:
    return render.render(site, site_file.resolve().parent, image_refs(plans), owner=owner.labels(),
                         pinned=pinned, swarm_node=swarm_node)
