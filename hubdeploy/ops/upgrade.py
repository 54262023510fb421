"""Changing ``hub.jupyterhub_version`` of a running stack: decide, then upgrade safely.

The decision is pure (:func:`decide`). The upgrade itself (:func:`run`) is a sequence of
steps, each of which either leaves the old hub serving on its old image and database or
hands over to ``up``'s ordinary recreate:

1. build the new images (the old hub keeps serving meanwhile);
2. back up the hub database (sqlite's online backup inside the running hub) to
   ``<state>/backups/``, mode 0600;
3. stop the old hub (the proxy keeps routing users to their running servers), so that no
   hub writes while the schema changes;
4. ``jupyterhub upgrade-db`` in a one-off container of the NEW hub image, with the old
   hub's mounts (its config, hub.json, secrets and data volume); under swarm a one-off
   service made of the hub service's task (swarm configs and secrets mount only there);
5. ``up`` then writes the new files and recreates the hub.

A failure in 1 changes nothing; a failure in 3 or 4 copies the backup back into the data
volume (sqlite) and starts the old hub (its container, or its service scaled back to 1)
again. PostgreSQL runs alembic's migration in one transaction, so a failed upgrade-db
leaves its schema as it was.
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubdeploy.contract.labels import COMPOSE_PROJECT, IMAGE_JUPYTERHUB_VERSION, UPGRADE_DB
from hubdeploy.contract.layout import (
    HUB_CONFIG_PATH,
    HUB_DATA_DIR,
    HUB_SERVICE,
    INTERNAL_NETWORK,
    LABEL_SITE,
    stack_name,
    swarm_service,
)
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.images.build import build_images
from hubdeploy.ops import engine

if TYPE_CHECKING:
    from hubdeploy.ops.orchestrator import Orchestrator
    from hubdeploy.ops.prepared import Prepared

SQLITE_FILE = f"{HUB_DATA_DIR}/jupyterhub.sqlite"
# Tests inject a failure at one step: "build" or "upgrade-db" (after the schema changed).
FAULT_ENV = "HUBDEPLOY_TEST_UPGRADE_FAULT"
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")
# Bounded waits: the old hub's health after a rollback, the one-off upgrade-db container.
HEALTH_WAIT = 180
UPGRADE_DB_WAIT = 600


def parse_version(text: str) -> tuple[int, int, int]:
    """``"5.5.4"`` -> (5, 5, 4); a pre-release suffix is ignored. ValueError otherwise."""
    m = _VERSION.match(text.strip())
    if not m:
        raise ValueError(f"not a JupyterHub version: {text!r}")
    return int(m[1]), int(m[2]), int(m[3])


@dataclass(frozen=True)
class Decision:
    """What ``up`` does about the hub's version: ``none`` (no hub yet, or unknown),
    ``same``, ``upgrade`` or ``downgrade`` (only with force)."""

    kind: str
    running: str | None
    wanted: str

    @property
    def migrate(self) -> bool:
        return self.kind in ("upgrade", "downgrade")


def decide(running: str | None, wanted: str, *, force: bool) -> Decision:
    """Compare the running hub's version with the site's. A downgrade without ``force``
    is bad input (SiteError, exit 2): JupyterHub's schema migrations only go forward."""
    if running is None:
        return Decision("none", None, wanted)
    old, new = parse_version(running), parse_version(wanted)
    if old == new:
        return Decision("same", running, wanted)
    if new > old:
        return Decision("upgrade", running, wanted)
    if not force:
        raise SiteError(
            f"hub.jupyterhub_version: {wanted} is older than the running hub's {running}; "
            "JupyterHub cannot downgrade its database schema",
            hint="keep the version, or pass --force after restoring a database of that version",
        )
    return Decision("downgrade", running, wanted)


def running_version(container) -> str | None:
    """The JupyterHub version of a hub container: its image's label, else (an image built
    before the label existed) what ``jupyterhub --version`` prints in it; None if unknown."""
    import docker.errors

    try:
        labels = container.image.labels or {}
    except docker.errors.ImageNotFound:  # removed under a container that still exists
        labels = {}
    if labels.get(IMAGE_JUPYTERHUB_VERSION):
        return labels[IMAGE_JUPYTERHUB_VERSION]
    if container.status != "running":
        return None
    code, out = container.exec_run(["jupyterhub", "--version"])
    text = out.decode(errors="replace").strip().splitlines()
    if code != 0 or not text:
        return None
    try:
        parse_version(text[-1])
    except ValueError:
        return None
    return text[-1].strip()


def backup_database(container, state: Path, version: str) -> Path:
    """Copy the hub's sqlite database, online, into ``<state>/backups/`` (0600)."""
    from hubdeploy.ops.backup import snapshot_database

    out = snapshot_database(container)
    dest_dir = state / "backups"
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = dest_dir / f"jupyterhub-{version}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.sqlite"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(out)
    return dest


def restore_database(client, container, backup: Path) -> None:
    """Put the backup back as the hub's database (the hub is stopped), through a helper
    container of the old hub's image that mounts the hub's data volume: under swarm the
    stopped hub's container is gone (its task was removed), under compose it stays."""
    import io
    import tarfile

    data = backup.read_bytes()
    name = Path(SQLITE_FILE).name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        # The hub's sqlite runs in WAL mode (hubdeploy.hub.db): a log left by the failed
        # step would be replayed onto the restored file. Empty side files mean "no log".
        for member, content in ((name, data), (f"{name}-wal", b""), (f"{name}-shm", b"")):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(content), 0o600
            tar.addfile(info, io.BytesIO(content))
    volume = next((m.get("Name") for m in container.attrs.get("Mounts") or ()
                   if m.get("Destination") == HUB_DATA_DIR and m.get("Type") == "volume"), None)
    if volume is None:
        raise OperationError(f"the old hub had no data volume at {HUB_DATA_DIR}: nothing to restore {backup} into")
    engine.put_into_volume(client, container.image.id, volume, HUB_DATA_DIR, buf.getvalue(),
                           name=f"{container.name}-restore-db",
                           labels={LABEL_SITE: container.labels.get(LABEL_SITE, "")})


def upgrade_db(client, container, new_image: str) -> None:
    """``jupyterhub upgrade-db`` in a one-off container of ``new_image`` that has the
    old hub's mounts and networks (a PostgreSQL database is reached by its service name)."""
    import docker.errors

    name = f"{container.name}-upgrade-db"
    try:  # left by an interrupted upgrade: it holds nothing but its logs
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass
    internal = stack_name(container.labels.get(COMPOSE_PROJECT, ""), INTERNAL_NETWORK)
    networks = sorted((container.attrs.get("NetworkSettings") or {}).get("Networks") or {},
                      key=lambda n: n != internal)
    one_off = client.containers.create(
        new_image, ["jupyterhub", "upgrade-db", "-f", HUB_CONFIG_PATH],
        name=name, volumes_from=[container.id], network=networks[0] if networks else None,
        labels={LABEL_SITE: container.labels.get(LABEL_SITE, ""), UPGRADE_DB: "1"},
    )
    try:
        one_off.start()
        result = one_off.wait(timeout=UPGRADE_DB_WAIT)
        logs = one_off.logs().decode(errors="replace").strip().splitlines()
    finally:
        one_off.remove(force=True)
    if result.get("StatusCode") != 0:
        raise OperationError("jupyterhub upgrade-db failed:\n  " + "\n  ".join(logs[-10:]))


def upgrade_db_service(client, project: str, new_image: str) -> None:
    """``jupyterhub upgrade-db`` as a one-off swarm service: the hub service's own task
    (its configs, secrets, volumes, networks and placement, which no plain container can
    mount) with the NEW image, that command, no health check and no restart."""
    import docker.errors

    spec = client.services.get(swarm_service(project, HUB_SERVICE)).attrs["Spec"]
    task = upgrade_db_task(spec["TaskTemplate"], new_image)
    name = f"{project}-upgrade-db"
    for left in client.services.list(filters={"name": name}):
        if left.name == name:  # left by an interrupted upgrade
            left.remove()
    created = client.api.create_service(task, name=name, mode={"Replicated": {"Replicas": 1}}, labels={
        LABEL_SITE: (spec.get("Labels") or {}).get(LABEL_SITE, ""), UPGRADE_DB: "1"})
    try:
        status = _finished_task(client, created["ID"])
        logs = b"".join(client.api.service_logs(created["ID"], stdout=True, stderr=True, tail=20))
    finally:
        try:
            client.api.remove_service(created["ID"])
        except docker.errors.NotFound:
            pass
    if status.get("State") != "complete":
        lines = logs.decode(errors="replace").strip().splitlines()
        raise OperationError(f"jupyterhub upgrade-db failed (task {status.get('State')}: {status.get('Err') or '-'}):"
                             "\n  " + "\n  ".join(lines[-10:]))


def upgrade_db_task(hub_task: dict, new_image: str) -> dict:
    """The hub service's TaskTemplate made into upgrade-db's (a new dict)."""
    task = copy.deepcopy(hub_task)
    box = task["ContainerSpec"]
    box.update(Image=new_image, Args=["jupyterhub", "upgrade-db", "-f", HUB_CONFIG_PATH],
               Healthcheck={"Test": ["NONE"]})
    box.pop("Command", None)  # the image's entrypoint (tini)
    for net in task.get("Networks") or ():
        net.pop("Aliases", None)  # "hub" names the hub, not this
    task["RestartPolicy"] = {"Condition": "none"}
    task.pop("ForceUpdate", None)
    return task


def _finished_task(client, service_id: str) -> dict:
    """The one-off service's task status once it has ended (bounded)."""
    deadline = time.monotonic() + UPGRADE_DB_WAIT
    while time.monotonic() < deadline:
        for t in client.api.tasks(filters={"service": service_id}):
            if t["Status"]["State"] in ("complete", "failed", "rejected", "shutdown", "orphaned"):
                return t["Status"]
        time.sleep(0.5)
    raise OperationError(f"jupyterhub upgrade-db did not end within {UPGRADE_DB_WAIT} s")


def _wait_healthy(container) -> bool:
    deadline = time.monotonic() + HEALTH_WAIT
    while time.monotonic() < deadline:
        container.reload()
        health = (container.attrs.get("State") or {}).get("Health") or {}
        if container.status == "running" and health.get("Status") in (None, "healthy"):
            return True
        if container.status in ("exited", "dead"):
            return False
        time.sleep(1)
    return False


def run(prep: Prepared, client, decision: Decision, orch: Orchestrator, *,
        console=None) -> tuple[Path | None, list[str]]:
    """Steps 1-4 of the module docstring; returns the backup's path (None: PostgreSQL) and
    the images built. On failure the old hub is serving again and OperationError says
    which step failed."""
    from rich.markup import escape

    say = (lambda text: console.print(text)) if console else (lambda text: None)
    old = engine.hub_container(client, prep.project)
    if old.status != "running":
        # The backup and the rollback both need the old hub serving.
        raise OperationError(f"the hub runs JupyterHub {decision.running} but is not running: nothing was changed",
                             hint=f"start it on {decision.running} first (`up` with that version), then upgrade")
    say(f"[bold]upgrading[/] JupyterHub {decision.running} -> {decision.wanted}")
    say("[bold cyan]upgrade[/] 1/4 building the new images (the hub keeps serving)")
    if os.environ.get(FAULT_ENV) == "build":
        raise OperationError(f"building the new images: injected failure ({FAULT_ENV}); nothing was changed")
    built = build_images(prep.plans, client=client, state_dir=prep.state, console=console)
    backup = None
    if prep.site.database.type == "sqlite":
        say("[bold cyan]upgrade[/] 2/4 backing up the hub database")
        backup = backup_database(old, prep.state, decision.running or "unknown")
        say(f"[bold cyan]upgrade[/] backup: {escape(str(backup))}")
    else:
        say("[bold cyan]upgrade[/] 2/4 PostgreSQL: upgrade-db runs in one transaction (no file copy)")
    say("[bold cyan]upgrade[/] 3/4 stopping the old hub (running servers stay reachable)")
    stop, start = orch.hub_control(prep, client, old)
    try:
        stop()
        say("[bold cyan]upgrade[/] 4/4 jupyterhub upgrade-db with the new hub image")
        orch.upgrade_db(prep, client, old, prep.plans["hub"].ref)
        if os.environ.get(FAULT_ENV) == "upgrade-db":
            raise OperationError(f"jupyterhub upgrade-db: injected failure ({FAULT_ENV})")
    except Exception as exc:
        _roll_back(client, old, backup, say, start)
        what = exc.message if isinstance(exc, OperationError) else f"{type(exc).__name__}: {exc}"
        raise OperationError(
            f"the upgrade to JupyterHub {decision.wanted} failed; the hub runs {decision.running} "
            f"again on its old image and database.\n  {what}",
            hint=f"the database before the upgrade is kept at {backup}" if backup else None,
        ) from None
    say(f"[bold green]upgraded[/] the hub database to JupyterHub {decision.wanted}; recreating the hub")
    return backup, built


def container_control(old):
    """(stop, start) of the hub's compose container; start says whether it became healthy."""
    def start() -> bool:
        old.start()
        return _wait_healthy(old)
    return (lambda: old.stop(timeout=30)), start


def service_control(client, project: str):
    """(stop, start) of the hub's swarm service, scaled to 0 and back to 1 (swarm would
    replace a stopped task's container at once); start says whether it became healthy."""
    service = client.services.get(swarm_service(project, HUB_SERVICE))

    def stop_service() -> None:
        service.scale(0)
        deadline = time.monotonic() + HEALTH_WAIT
        while engine.service_containers(client, project, HUB_SERVICE) and time.monotonic() < deadline:
            time.sleep(1)
        if engine.service_containers(client, project, HUB_SERVICE):
            raise OperationError(f"the old hub's task did not stop within {HEALTH_WAIT} s")

    def start_service() -> bool:
        service.reload()
        service.scale(1)
        deadline = time.monotonic() + HEALTH_WAIT
        while time.monotonic() < deadline:
            running = engine.service_containers(client, project, HUB_SERVICE)
            if running and _wait_healthy(running[0]):
                return True
            time.sleep(1)
        return False
    return stop_service, start_service


def _roll_back(client, old, backup: Path | None, say, start) -> None:
    say("[bold red]upgrade failed[/]: restoring the database and starting the old hub")
    if backup is not None:
        restore_database(client, old, backup)
    if not start():
        raise OperationError("the old hub did not become healthy again after the failed upgrade",
                             hint=f"the database before the upgrade is at {backup}" if backup else None)
