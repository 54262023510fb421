"""The ``swarm`` section: settings that apply with ``orchestrator: swarm``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from hubdeploy.site.fields import Closed


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
