"""What runs the stack's services: Docker Compose on this engine, or a swarm stack.

The operations of :mod:`hubdeploy.ops.stack` are the same for both; each asks the
site's orchestrator (:func:`hubdeploy.ops.stack.orchestrator`, the one place that
chooses) for the part that differs. An orchestrator holds no state of its own:
everything it needs is on the ``Prepared`` site (its files, its state directory) or on
the engine, so it is called with both.

The engine ``client`` passed in has answered a ping; "cannot reach the engine" is raised
by whoever made it (:func:`hubdeploy.ops.engine.docker_client`), never answered here as
"nothing runs".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubdeploy.images.plan import ImagePlan
    from hubdeploy.ops.prepared import Prepared
    from hubdeploy.site.model import Site


class Orchestrator(ABC):
    """One orchestrator's way of running a site's stack.

    A subclass overrides every abstract method. In the order ``up`` calls them:
    :meth:`pinned_images` and :meth:`control_node` (while preparing, before any side
    effect), :meth:`place`, :meth:`publish`, :meth:`remember` (with the files),
    :meth:`leave_other`, :meth:`deploy`. ``status`` calls :meth:`services`, ``logs``
    :meth:`logs`, ``down`` :meth:`remove`, an upgrade :meth:`hub_control` and
    :meth:`upgrade_db`.
    """

    name: str

    @abstractmethod
    def pinned_images(self, site: Site, plans: dict[str, ImagePlan]) -> dict[str, str]:
        """Image name -> the reference every node pulls, for images an earlier ``up``
        published; reads the local engine only. {} when nothing is pinned or no engine
        answers (rendering works without one)."""

    @abstractmethod
    def control_node(self, state: Path) -> str:
        """The node the stack's services are placed on, as recorded in ``state`` or known
        without asking the engine to change anything; '' when there is none."""

    @abstractmethod
    def place(self, prep: Prepared, client, *, console=None) -> None:
        """Check that this engine can run the stack and settle where its services go,
        rendering again when that changes; OperationError when it cannot. Writes nothing."""

    @abstractmethod
    def publish(self, prep: Prepared, client, *, console=None) -> tuple[list[str], list[Any]]:
        """Make the notebook images reachable from every node that runs servers, rendering
        again with what the nodes pull: (images built, images published). ([], []) when
        the engine's own images serve; OperationError when a registry refuses."""

    @abstractmethod
    def remember(self, prep: Prepared) -> None:
        """Record in the state directory what a later run must find again (written with
        the rendered files)."""

    @abstractmethod
    def leave_other(self, prep: Prepared, client) -> None:
        """Take down the stack another orchestrator runs for this site (a site switched
        orchestrator), keeping its volumes; nothing when there is none."""

    @abstractmethod
    def deploy(self, prep: Prepared, client, *, wait_timeout: int) -> None:
        """Create or update the stack's services and wait until every one runs healthy;
        OperationError naming each unhealthy service, with its log, otherwise."""

    @abstractmethod
    def services(self, prep: Prepared, client=None) -> list[dict[str, Any]]:
        """One dict per service of the stack, sorted by name: service, state, health,
        container. [] when the stack was never started or has been removed."""

    @abstractmethod
    def logs(self, prep: Prepared, services: list[str] | None, follow: bool, tail: str) -> int:
        """Stream the services' logs (all for None) to the terminal; the exit code of
        what printed them, 0 after an interrupt."""

    @abstractmethod
    def remove(self, prep: Prepared, client, *, volumes: bool) -> tuple[list[str], list[str]]:
        """Remove the stack (and with ``volumes`` its volumes); the rendered files exist.
        Returns (notebook services removed, volumes removed)."""

    @abstractmethod
    def hub_control(self, prep: Prepared, client, old) -> tuple[Callable[[], None], Callable[[], bool]]:
        """(stop, start) of the running hub ``old`` for an upgrade; start returns whether
        the hub became healthy again."""

    @abstractmethod
    def upgrade_db(self, prep: Prepared, client, old, new_image: str) -> None:
        """``jupyterhub upgrade-db`` with ``new_image`` against the stopped hub's database;
        OperationError with its output when it fails."""

