"""Operating a site's stack: up, status, logs, down.

Each operation first does all its pure work (load and validate the site, plan images,
render files) so that bad input fails with exit code 2 before anything is written or
started; only then does it talk to the engine. What differs between compose and swarm
is the site's orchestrator's part (:mod:`hubdeploy.ops.orchestrator`).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubdeploy import render
from hubdeploy.contract.layout import LABEL_SITE, PROXY_SERVICE, SSH_CA_KEY, SSH_KEY
from hubdeploy.errors import HubdeployError, OperationError, SiteError
from hubdeploy.images.build import build_images
from hubdeploy.images.plan import image_refs, plan_images
from hubdeploy.images.stage import stage_images
from hubdeploy.ops import engine, upgrade
from hubdeploy.ops.compose import ComposeOrchestrator
from hubdeploy.ops.orchestrator import Orchestrator
from hubdeploy.ops.prepared import Prepared, render_files
from hubdeploy.ops.servers import container_row, notebook_containers, orphans, remove_notebook_containers, stop_servers
from hubdeploy.ops.stackdeploy import stack_services
from hubdeploy.ops.swarm import Published, SwarmOrchestrator
from hubdeploy.site.loader import load_site, where
from hubdeploy.site.model import Site
from hubdeploy.state import ownership, selfsigned
from hubdeploy.state.secrets import ensure_secrets, secret_names, ssh_certificates, ssh_key_generated

ORCHESTRATORS: dict[str, type[Orchestrator]] = {o.name: o for o in (ComposeOrchestrator, SwarmOrchestrator)}


def orchestrator(site: Site) -> Orchestrator:
    """The orchestrator the site names; SiteError listing the known ones otherwise (the
    schema admits only these, so this is a programming error's message)."""
    try:
        return ORCHESTRATORS[site.orchestrator]()
    except KeyError:
        raise SiteError(f"unknown orchestrator {site.orchestrator!r}; known: {', '.join(sorted(ORCHESTRATORS))}") \
            from None


def prepare(site_file: Path) -> Prepared:
    """Load, validate, plan and render in memory. Raises SiteError on bad input."""
    site = load_site(site_file)
    orch = orchestrator(site)
    plans = plan_images(site, site_file.resolve().parent)
    state = render.state_dir(site_file)
    owner = ownership.load(state)
    pinned = orch.pinned_images(site, plans)
    node = orch.control_node(state)
    return Prepared(site_file, site, plans, render_files(site, site_file, plans, owner, pinned, node), owner, pinned,
                    node)


def check_owner(prep: Prepared, client, *, take_over: bool = False) -> None:
    """Refuse to act on a stack another site directory created (exit 1) unless
    ``take_over``; reads the engine only, so it runs before any side effect."""
    if take_over:
        return
    found = [c.labels for c in engine.project_containers(client, prep.project, all=True)]
    # A swarm stack's owner is on its services too (a service may have no task yet).
    found += [s.attrs["Spec"].get("Labels") or {} for s in stack_services(client, prep.project)]
    why = ownership.refusal(prep.owner, found, prep.project)
    if why:
        raise OperationError(why, hint="run it from that directory, rename this site, "
                             "or pass --take-over if that directory is gone")


def write(prep: Prepared) -> list[str]:
    """Create missing secrets (and a self-signed certificate) and write the rendered
    files; returns the files changed."""
    ownership.save(prep.state, prep.owner)
    ensure_secrets(prep.state / "secrets", secret_names(prep.site))
    if prep.self_signed_cert is not None:
        _, created = selfsigned.ensure_certificate(prep.state / "secrets", prep.site.public.host, prep.site.name)
        if created:
            # prepare rendered before the certificate existed; the proxy's config hash must
            # cover the one it will mount, so a new certificate recreates the proxy.
            prep.rerender()
    orchestrator(prep.site).remember(prep)
    return render.write_files(prep.rendered, prep.files)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _our_proxy_running(client, prep: Prepared) -> bool:
    return bool(engine.service_containers(client, prep.project, PROXY_SERVICE))


@dataclass
class UpResult:
    url: str
    built: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tls_certificate: str | None = None  # the self-signed one, for smoke --ca-bundle or a browser
    # An upgrade (or forced downgrade) of JupyterHub: from, to, and the database backup.
    upgraded: dict[str, str | None] | None = None
    # swarm.registry: the images swarm nodes pull, each pushed now or found there.
    published: list[Published] = field(default_factory=list)


def version_decision(prep: Prepared, client, *, force: bool = False) -> upgrade.Decision:
    """How the site's ``hub.jupyterhub_version`` compares with the hub on the engine;
    SiteError (exit 2) for a downgrade without ``force``."""
    hub = engine.hub_container(client, prep.project)
    running = upgrade.running_version(hub) if hub is not None else None
    try:
        return upgrade.decide(running, prep.site.hub.jupyterhub_version, force=force)
    except SiteError as exc:
        raise SiteError(f"{where(prep.site_file, ('hub', 'jupyterhub_version'))}: {exc.message}",
                        hint=exc.hint) from None


def up(prep: Prepared, *, console=None, wait_timeout: int = 300, take_over: bool = False,
       force: bool = False) -> UpResult:
    """Render, build what is missing, upgrade the hub's database if its JupyterHub version
    changes (:mod:`hubdeploy.ops.upgrade`), stage compute profiles' images for
    Charliecloud (:mod:`hubdeploy.images.stage`), start, wait until healthy."""
    t0 = time.monotonic()
    client = engine.docker_client()
    engine.compose_command()  # both orchestrators need compose (swarm to take a compose stack down)
    orch = orchestrator(prep.site)
    orch.place(prep, client, console=console)
    check_owner(prep, client, take_over=take_over)
    decision = version_decision(prep, client, force=force)
    _require_port(prep, client)
    # Before the upgrade and before anything is written: a registry that is down or
    # refuses leaves the stack as it was, and the hub's files get the digests.
    built, published = orch.publish(prep, client, console=console)
    upgraded = None
    if decision.migrate:
        # Before anything is written: a failed upgrade leaves the old hub's files too.
        upgraded, built_upgrade = _upgrade(prep, client, decision, orch, console)
        built += built_upgrade
    changed = _write_and_tell(prep, console)
    built += build_images(prep.plans, client=client, state_dir=prep.state, console=console)
    # Before the nodes start: a compute profile's image is there when its first job is.
    stage_images(prep.site, image_refs(prep.plans), client, console=console)
    if console:
        console.print(f"[bold]starting[/] {prep.project}")
    orch.leave_other(prep, client)
    orch.deploy(prep, client, wait_timeout=wait_timeout)
    return UpResult(prep.url, built, changed, time.monotonic() - t0,
                    str(prep.self_signed_cert) if prep.self_signed_cert else None, upgraded, published)


def _require_port(prep: Prepared, client) -> None:
    """OperationError when something other than this stack's proxy holds the public port."""
    if not _port_free(prep.site.public.host, prep.site.public.port) and not _our_proxy_running(client, prep):
        raise OperationError(
            f"port {prep.site.public.port} on {prep.site.public.host} is already in use",
            hint="stop what uses it, or change public.port in the site file",
        )


def _upgrade(prep: Prepared, client, decision: upgrade.Decision, orch: Orchestrator,
             console) -> tuple[dict[str, str | None], list[str]]:
    """Run the upgrade; (what UpResult.upgraded says, the images built)."""
    backup, built = upgrade.run(prep, client, decision, orch, console=console)
    return {"from": decision.running, "to": decision.wanted, "backup": str(backup) if backup else None}, built


def _write_and_tell(prep: Prepared, console) -> list[str]:
    """Write the state directory (:func:`write`) and say what the operator must do about
    new SSH keys and a certificate that does not fit; the files changed."""
    new_key = ssh_key_generated(prep.site) and not (prep.state / "secrets" / SSH_KEY).exists()
    new_ca = ssh_certificates(prep.site) and not (prep.state / "secrets" / SSH_CA_KEY).exists()
    changed = write(prep)
    if console:
        _tell_ssh(prep, console, new_key=new_key, new_ca=new_ca)
        _warn_certificate(prep, console)
    return changed


def _tell_ssh(prep: Prepared, console, *, new_key: bool, new_ca: bool) -> None:
    if new_key:
        ssh = prep.site.submit_ssh
        console.print(
            f"new SSH key for Slurm submission: add {prep.state / 'secrets' / SSH_KEY}.pub to "
            f"~{ssh.user}/.ssh/authorized_keys on {ssh.host}",
            markup=False, highlight=False,
        )
    if ssh_certificates(prep.site):
        # Said on every up: without the host's trust no user's job can be submitted.
        ssh = prep.site.submit_ssh
        console.print(
            f"{'new ' if new_ca else ''}SSH certificate authority for per-user Slurm submission: "
            f"{prep.state / 'secrets' / SSH_CA_KEY}.pub must be in sshd's TrustedUserCAKeys on {ssh.host}",
            markup=False, highlight=False, soft_wrap=True,
        )


def _warn_certificate(prep: Prepared, console) -> None:
    cert = prep.self_signed_cert
    if cert is not None and not selfsigned.covers(cert, prep.site.public.host):
        console.print(
            f"warning: the self-signed certificate {cert} does not name public.host "
            f"{prep.site.public.host}; delete it and its key ({selfsigned.KEY}) to get a new one",
            markup=False, highlight=False, soft_wrap=True,
        )


def services(prep: Prepared, client=None) -> list[dict[str, Any]]:
    """One dict per service of the stack: name, state, health, container."""
    return orchestrator(prep.site).services(prep, client)


def status(prep: Prepared) -> dict[str, Any]:
    """The stack's services and every server of every backend, as data (``status --json``).

    The servers are the hub's backends' own lists (``hubdeploy.hub.orphans``): a Slurm
    job with its id, node, state and pending reason, a container with its state, each
    with the hub user that owns it (``tracked``) or none. When the hub cannot be asked,
    only the containers the engine shows by label are listed, with ``servers_error``.
    """
    client = engine.docker_client()
    svcs = services(prep, client)
    expected = prep.expected_services
    running = {s["service"] for s in svcs if s["state"] == "running" and s["health"] in (None, "", "healthy")}
    servers, error, spawns = None, None, None
    try:
        report = orphans(prep, client=client)
        servers, spawns = report["servers"], report.get("metrics")
    except HubdeployError as exc:  # status still reports everything else
        error = exc.message
    if servers is None:
        servers = [container_row(c) for c in notebook_containers(client, prep.site)]
    return {
        "site": prep.site.name,
        "url": prep.url,
        "healthy": bool(expected) and expected <= running,
        "services": svcs,
        "servers": sorted(servers, key=lambda s: (s["backend"], s["owner"] or "", s["name"], s["id"])),
        "servers_error": error,
        # From the hub's /hub/metrics: spawns by outcome, running servers, starts in
        # flight (hubdeploy.hub.metrics.summary); None when they could not be read.
        "spawns": spawns,
        # Jobs and containers the backends report that no hub server owns
        # (None with untracked_error when the hub could not be asked).
        "untracked": None if error else [r for r in servers if not r["tracked"]],
        "untracked_error": error,
    }


def logs(prep: Prepared, service: str | None, follow: bool, tail: str = "200") -> int:
    """Stream the services' logs to the terminal; returns the exit code of what printed them."""
    if service is not None and service not in prep.expected_services:
        raise SiteError(
            f"no service {service!r} in site {prep.site.name}; services: {', '.join(sorted(prep.expected_services))}"
        )
    return orchestrator(prep.site).logs(prep, [service] if service else None, follow, tail)


def down(prep: Prepared, *, volumes: bool = False, console=None, take_over: bool = False) -> dict[str, Any]:
    """Stop every server of every backend, then remove the stack and any notebook
    container left; keep data unless ``volumes``. ``not_stopped`` names every server
    (or backend) that could not be stopped."""
    client = engine.docker_client()
    check_owner(prep, client, take_over=take_over)
    stopped, not_stopped = stop_servers(prep, client)
    removed = remove_notebook_containers(client, prep.site)
    if not prep.compose_file.exists():
        # The rendered files are gone (a new checkout, a deleted state directory) but the
        # project's containers may run: render the same files again (no secrets needed)
        # so compose finds and removes them, instead of silently leaving them.
        render.write_files(prep.rendered, prep.files)
    removed_services, removed_volumes = orchestrator(prep.site).remove(prep, client, volumes=volumes)
    removed += removed_services
    if volumes:
        for v in client.volumes.list(filters={"label": f"{LABEL_SITE}={prep.site.name}"}):
            v.remove(force=True)
            removed_volumes.append(v.name)
    return {"site": prep.site.name, "stopped_servers": stopped, "not_stopped": not_stopped,
            "removed_servers": removed, "removed_volumes": removed_volumes}
