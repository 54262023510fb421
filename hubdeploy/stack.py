"""Operating a site's stack: up, status, logs, down, and the servers the hub lost.

Each operation first does all its pure work (load and validate the site, plan images,
render files) so that bad input fails with exit code 2 before anything is written or
started; only then does it talk to the engine.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubdeploy import engine, render, stackdeploy, swarm, upgrade
from hubdeploy.contract import orphans as protocol
from hubdeploy.contract.backends import DOCKER, SLURM
from hubdeploy.contract.labels import compose_filter
from hubdeploy.contract.layout import (
    HUB_SERVICE,
    LABEL_PROFILE,
    LABEL_SERVER,
    LABEL_SITE,
    LABEL_USER,
    PROXY_SERVICE,
    SSH_CA_KEY,
    SSH_KEY,
    project_name,
)
from hubdeploy.contract.names import server_prefix
from hubdeploy.errors import HubdeployError, OperationError, SiteError
from hubdeploy.images.build import build_images
from hubdeploy.images.plan import image_refs, plan_images
from hubdeploy.site.loader import load_site, where
from hubdeploy.site.model import Site
from hubdeploy.state import ownership, selfsigned
from hubdeploy.state.secrets import ensure_secrets, secret_names, ssh_certificates, ssh_key_generated


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
        return self.rendered / stackdeploy.STACK_FILE

    @property
    def swarm(self) -> bool:
        """Whether the stack's services are swarm services (orchestrator swarm)."""
        return self.site.orchestrator == "swarm"

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


def _render(site: Site, site_file: Path, plans: dict[str, Any], owner: ownership.Owner,
            pinned: dict[str, str] | None = None, swarm_node: str = "") -> dict[str, bytes]:
    return render.render(site, site_file.resolve().parent, image_refs(plans), owner=owner.labels(),
                         pinned=pinned, swarm_node=swarm_node)


def _rerender(prep: "Prepared") -> None:
    prep.files = _render(prep.site, prep.site_file, prep.plans, prep.owner, prep.pinned, prep.swarm_node)


def prepare(site_file: Path) -> Prepared:
    """Load, validate, plan and render in memory. Raises SiteError on bad input."""
    site = load_site(site_file)
    plans = plan_images(site, site_file.resolve().parent)
    owner = ownership.load(render.state_dir(site_file))
    pinned = swarm.pinned_by_engine(site, plans)
    node = stackdeploy.control_node(render.state_dir(site_file)) if site.orchestrator == "swarm" else ""
    return Prepared(site_file, site, plans, _render(site, site_file, plans, owner, pinned, node), owner, pinned,
                    node)


def check_owner(prep: Prepared, client, *, take_over: bool = False) -> None:
    """Refuse to act on a stack another site directory created (exit 1) unless
    ``take_over``; reads the engine only."""
    ownership.check(client, prep.project, prep.owner, take_over=take_over)


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
            _rerender(prep)
    if prep.swarm:
        stackdeploy.record_control_node(prep.state, prep.swarm_node)
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
    published: list[swarm.Published] = field(default_factory=list)


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
    changes (:mod:`hubdeploy.upgrade`), start, wait until healthy."""
    t0 = time.monotonic()
    client = engine.docker_client()
    engine.compose_command()
    if prep.swarm:
        swarm.require_manager(client)
        if not prep.swarm_node:  # the first up: the services stay on this manager
            prep.swarm_node = client.info()["Swarm"]["NodeID"]
            _rerender(prep)
        else:
            node = stackdeploy.confirm_control_node(client, prep.project, prep.swarm_node, prep.state)
            if node != prep.swarm_node:
                if console:
                    console.print(f"the swarm has no node {prep.swarm_node}: the services move to this manager "
                                  f"({node}), which holds the stack's volumes", markup=False, highlight=False,
                                  soft_wrap=True)
                prep.swarm_node = node
                _rerender(prep)
    check_owner(prep, client, take_over=take_over)
    decision = version_decision(prep, client, force=force)
    if not _port_free(prep.site.public.host, prep.site.public.port) and not _our_proxy_running(client, prep):
        raise OperationError(
            f"port {prep.site.public.port} on {prep.site.public.host} is already in use",
            hint="stop what uses it, or change public.port in the site file",
        )
    built_first, published = [], []
    if prep.site.orchestrator == "swarm" and prep.site.swarm.registry:
        # Before the upgrade and before anything is written: a registry that is down or
        # refuses leaves the stack as it was, and the hub's files get the digests.
        built_first, published = publish_swarm_images(prep, client, console=console)
    upgraded = None
    if decision.migrate:
        # Before anything is written: a failed upgrade leaves the old hub's files too.
        backup, built_upgrade = upgrade.run(prep, client, decision, console=console)
        built_first += built_upgrade
        upgraded = {"from": decision.running, "to": decision.wanted, "backup": str(backup) if backup else None}
    new_key = ssh_key_generated(prep.site) and not (prep.state / "secrets" / SSH_KEY).exists()
    new_ca = ssh_certificates(prep.site) and not (prep.state / "secrets" / SSH_CA_KEY).exists()
    changed = write(prep)
    if new_key and console:
        ssh = prep.site.submit_ssh
        console.print(
            f"new SSH key for Slurm submission: add {prep.state / 'secrets' / SSH_KEY}.pub to "
            f"~{ssh.user}/.ssh/authorized_keys on {ssh.host}",
            markup=False, highlight=False,
        )
    if ssh_certificates(prep.site) and console:
        # Said on every up: without the host's trust no user's job can be submitted.
        ssh = prep.site.submit_ssh
        console.print(
            f"{'new ' if new_ca else ''}SSH certificate authority for per-user Slurm submission: "
            f"{prep.state / 'secrets' / SSH_CA_KEY}.pub must be in sshd's TrustedUserCAKeys on {ssh.host}",
            markup=False, highlight=False, soft_wrap=True,
        )
    cert = prep.self_signed_cert
    if cert is not None and console and not selfsigned.covers(cert, prep.site.public.host):
        console.print(
            f"warning: the self-signed certificate {cert} does not name public.host "
            f"{prep.site.public.host}; delete it and its key ({selfsigned.KEY}) to get a new one",
            markup=False, highlight=False, soft_wrap=True,
        )
    built = built_first + build_images(prep.plans, client=client, state_dir=prep.state, console=console)
    if console:
        console.print(f"[bold]starting[/] {prep.project}")
    _leave_other_orchestrator(prep, client)
    if prep.swarm:
        expected = _expected_services(prep)
        deployed_at = None
        rows = stackdeploy.service_rows(client, prep.project)
        if not stackdeploy.deployed_unchanged(prep.state, prep.stack_file, rows, expected):
            stackdeploy.forget_deployed(prep.state)
            deployed_at = stackdeploy.engine_now(client)
            stackdeploy.deploy(prep.project, prep.stack_file)
        stackdeploy.wait_healthy(client, prep.project, expected, wait_timeout, deployed_at=deployed_at)
        stackdeploy.record_deployed(prep.state, prep.stack_file)
        return UpResult(prep.url, built, changed, time.monotonic() - t0,
                        str(prep.self_signed_cert) if prep.self_signed_cert else None, upgraded, published)
    proc = engine.compose(
        prep.project,
        prep.compose_file,
        ["up", "--detach", "--wait", "--wait-timeout", str(wait_timeout), "--remove-orphans"],
        capture=True,
        check=False,
    )
    if proc.returncode != 0:
        said = [line for line in (proc.stderr or "").splitlines() if line.strip()][-5:]
        raise OperationError(
            "the stack did not become healthy:\n"
            + "".join(f"  compose: {line}\n" for line in said)
            + _unhealthy_report(prep),
            hint=f"hubdeploy --site {prep.site_file} logs",
        )
    return UpResult(prep.url, built, changed, time.monotonic() - t0,
                    str(prep.self_signed_cert) if prep.self_signed_cert else None, upgraded, published)


def _leave_other_orchestrator(prep: Prepared, client) -> None:
    """A site switched between compose and swarm: take down what the other one runs (the
    volumes stay, and both mount them by the same names), so that the new stack gets the
    port and the hub's database."""
    if prep.swarm:
        if client.containers.list(all=True, filters={"label": compose_filter(prep.project)}):
            engine.compose(prep.project, prep.compose_file, ["down", "--remove-orphans", "--timeout", "20"],
                           capture=True)
    elif stackdeploy.stack_services(client, prep.project):
        swarm.remove_leftovers(client, prep.site.name)
        stackdeploy.remove(client, prep.project, volumes=False)
        stackdeploy.forget_deployed(prep.state)


def publish_swarm_images(prep: Prepared, client, *, console=None) -> tuple[list[str], list[swarm.Published]]:
    """Build the images login profiles use, push what ``swarm.registry`` lacks, and render
    again with their digests; returns (images built, images as nodes pull them)."""
    registry = prep.site.swarm.registry
    names = swarm.login_images(prep.site)
    built = build_images(prep.plans, client=client, state_dir=prep.state, names=names, console=console)
    published = swarm.publish_images(client, prep.plans, names, registry, console=console)
    prep.pinned = {p.image: p.ref for p in published}
    _rerender(prep)
    if console:
        for p in published:
            if p.pushed:
                console.print(f"pushed {p.image} to {registry} ({p.digest})", markup=False, highlight=False,
                              soft_wrap=True)
        if published and not any(p.pushed for p in published):
            console.print(f"nothing to push: {registry} has {', '.join(p.image for p in published)}",
                          markup=False, highlight=False, soft_wrap=True)
    return built, published


def services(prep: Prepared) -> list[dict[str, Any]]:
    """One dict per service of the stack: name, state, health, container."""
    if prep.swarm:
        rows = stackdeploy.service_rows(engine.docker_client(), prep.project)
        return [{k: r[k] for k in ("service", "state", "health", "container")} for r in rows]
    if not prep.compose_file.exists():
        return []
    proc = engine.compose(prep.project, prep.compose_file, ["ps", "--all", "--format", "json"], capture=True)
    out = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        rows = json.loads(line)
        for row in rows if isinstance(rows, list) else [rows]:
            out.append(
                {
                    "service": row.get("Service"),
                    "state": row.get("State"),
                    "health": row.get("Health") or None,
                    "container": row.get("Name"),
                }
            )
    return sorted(out, key=lambda r: r["service"] or "")


def notebook_containers(client, site: Site) -> list:
    """Containers the backends started for this site (login-node notebooks)."""
    return client.containers.list(
        all=True, filters={"label": [f"{LABEL_SITE}={site.name}", LABEL_USER]}
    )


def _container_row(c) -> protocol.Row:
    """A notebook container found by its labels, in the hub's row shape (owner unknown)."""
    labels = c.labels
    user, server = labels.get(LABEL_USER), labels.get(LABEL_SERVER, "")
    detail = (f"user {user}" + (f", server {server}" if server else "")
              + (f", profile {labels[LABEL_PROFILE]}" if labels.get(LABEL_PROFILE) else ""))
    return protocol.row(DOCKER, id=c.id, name=c.name, state=c.status, detail=detail, tracked=None, owner=None)


def status(prep: Prepared) -> dict[str, Any]:
    """The stack's services and every server of every backend, as data (``status --json``).

    The servers are the hub's backends' own lists (``hubdeploy.hub.orphans``): a Slurm
    job with its id, node, state and pending reason, a container with its state, each
    with the hub user that owns it (``tracked``) or none. When the hub cannot be asked,
    only the containers the engine shows by label are listed, with ``servers_error``.
    """
    client = engine.docker_client()
    svcs = services(prep)
    expected = _expected_services(prep)
    running = {s["service"] for s in svcs if s["state"] == "running" and s["health"] in (None, "", "healthy")}
    servers, error, spawns = None, None, None
    try:
        report = orphans(prep, client=client)
        servers, spawns = report["servers"], report.get("metrics")
    except HubdeployError as exc:  # status still reports everything else
        error = exc.message
    if servers is None:
        servers = [_container_row(c) for c in notebook_containers(client, prep.site)]
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


def orphans(prep: Prepared, *, remove: tuple[str, ...] = (), remove_all: bool = False,
            client=None) -> protocol.Report:
    """The backends' servers, each marked tracked or not by the hub; optionally remove
    untracked ones. Runs :mod:`hubdeploy.hub.orphans` in the hub's container, where the
    backends are configured as the hub uses them (see that module for why)."""
    client = client or engine.docker_client()
    hubs = engine.service_containers(client, prep.project, HUB_SERVICE)
    if not hubs:
        raise OperationError(f"the hub of site {prep.site.name} is not running", hint="hubdeploy up")
    code, (out, err) = hubs[0].exec_run(protocol.argv(remove=remove, remove_all=remove_all), demux=True)
    try:
        report = json.loads((out or b"").decode())
    except ValueError:
        tail = (err or out or b"").decode(errors="replace").strip().splitlines()[-5:]
        raise OperationError("the hub could not list its servers:\n  " + "\n  ".join(tail)) from None
    if code == protocol.BAD_REQUEST:
        raise SiteError(report.get("error", "bad request"), hint="hubdeploy orphans list")
    if code != protocol.OK:
        raise OperationError(f"cannot tell which servers the hub tracks: {report.get('error', code)}")
    return report


def _expected_services(prep: Prepared) -> set[str]:
    from ruamel.yaml import YAML

    return set(YAML(typ="safe").load(prep.files["compose.yaml"])["services"])


def _unhealthy_report(prep: Prepared) -> str:
    if prep.swarm:
        return stackdeploy.unhealthy_report(prep.project, stackdeploy.service_rows(engine.docker_client(),
                                                                                  prep.project))
    lines = []
    try:
        for s in services(prep):
            lines.append(f"  {s['service']}: {s['state']} {s['health'] or ''}".rstrip())
            if s["state"] != "running" or s["health"] not in (None, "", "healthy"):
                proc = engine.compose(
                    prep.project, prep.compose_file, ["logs", "--no-color", "--tail", "15", s["service"]],
                    capture=True, check=False,
                )
                lines += [f"    | {line}" for line in proc.stdout.splitlines()[-15:]]
    except OperationError as exc:
        lines.append(f"  (could not read the stack's state: {exc.message})")
    return "\n".join(lines)


def logs(prep: Prepared, service: str | None, follow: bool, tail: str = "200") -> int:
    """Stream compose logs to the terminal; returns compose's exit code."""
    if service is not None and service not in _expected_services(prep):
        raise SiteError(
            f"no service {service!r} in site {prep.site.name}; services: {', '.join(sorted(_expected_services(prep)))}"
        )
    if prep.swarm:
        return stackdeploy.logs(prep.project, [service] if service else sorted(_expected_services(prep)),
                                follow, tail)
    if not prep.compose_file.exists():
        raise OperationError("the stack has not been rendered yet", hint="hubdeploy up")
    args = ["logs", "--tail", tail] + (["--follow"] if follow else []) + ([service] if service else [])
    try:
        return engine.compose(prep.project, prep.compose_file, args, check=False).returncode
    except KeyboardInterrupt:
        return 0


def stop_servers(prep: Prepared, client) -> tuple[list[protocol.Row], list[protocol.Failure]]:
    """Stop every server of every backend through the hub's container (``--stop-all``):
    ``(stopped rows, failures)``, each failure naming what was not stopped and why."""
    hubs = engine.service_containers(client, prep.project, HUB_SERVICE)
    if not hubs:
        return [], _unlisted_without_hub(prep)
    code, (out, err) = hubs[0].exec_run(protocol.argv(stop_all=True), demux=True)
    try:
        report = json.loads((out or b"").decode())
        return report["stopped"], report["failed"]
    except (ValueError, KeyError, TypeError):
        # A hub that cannot answer is no worse than none: containers go by their labels
        # and the stack's own cluster with the stack; only a site's own Slurm is left.
        unlisted = _unlisted_without_hub(prep)
        if not unlisted:
            return [], []
        tail = (err or out or b"").decode(errors="replace").strip().splitlines()[-3:]
        return [], [{**unlisted[0], "error": f"the hub could not stop its servers (exit {code}: "
                     + " | ".join(tail) + "); " + unlisted[0]["error"]}]


def _unlisted_without_hub(prep: Prepared) -> list[protocol.Failure]:
    """What cannot be stopped when the hub is not running: jobs on a site's own Slurm
    (the stack's own cluster goes down with the stack, containers are found by label)."""
    slurm = prep.site.slurm
    if slurm is None or slurm.submit is None:
        return []
    where = prep.site.submit_ssh.host if prep.site.submit_ssh else "the site's Slurm"
    return [protocol.failure(SLURM, None, None, f"the hub is not running, so its jobs at {where} were not listed "
                             f"or cancelled; look for jobs named {server_prefix(prep.project)}* there")]


def down(prep: Prepared, *, volumes: bool = False, console=None, take_over: bool = False) -> dict[str, Any]:
    """Stop every server of every backend, then remove the stack and any notebook
    container left; keep data unless ``volumes``. ``not_stopped`` names every server
    (or backend) that could not be stopped."""
    client = engine.docker_client()
    check_owner(prep, client, take_over=take_over)
    stopped, not_stopped = stop_servers(prep, client)
    removed = []
    for c in notebook_containers(client, prep.site):
        c.remove(force=True)
        removed.append(c.name)
    if not prep.compose_file.exists():
        # The rendered files are gone (a new checkout, a deleted state directory) but the
        # project's containers may run: render the same files again (no secrets needed)
        # so compose finds and removes them, instead of silently leaving them.
        render.write_files(prep.rendered, prep.files)
    removed_volumes = []
    # An engine that has left the swarm holds none of the swarm's services any more.
    if prep.swarm and stackdeploy.is_manager(client):
        removed += swarm.remove_leftovers(client, prep.site.name)
        removed_volumes += stackdeploy.remove(client, prep.project, volumes=volumes)
        stackdeploy.forget_deployed(prep.state)
    # With orchestrator swarm too: a stack that ran under compose before is taken down.
    args = ["down", "--remove-orphans", "--timeout", "20"] + (["--volumes"] if volumes else [])
    engine.compose(prep.project, prep.compose_file, args, capture=True)
    if prep.swarm and stackdeploy.is_manager(client):
        swarm.remove_project_networks(client, prep.project)
    if volumes:
        for v in client.volumes.list(filters={"label": f"{LABEL_SITE}={prep.site.name}"}):
            v.remove(force=True)
            removed_volumes.append(v.name)
    return {"site": prep.site.name, "stopped_servers": stopped, "not_stopped": not_stopped,
            "removed_servers": removed, "removed_volumes": removed_volumes}
