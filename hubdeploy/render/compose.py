"""compose.yaml: one function per service, then networks, volumes and secrets.

Every service carries the site label and, where files are mounted into it, a config hash
(:data:`~hubdeploy.contract.layout.LABEL_CONFIG_HASH`), so compose recreates exactly the
services whose inputs changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubdeploy.contract.layout import (
    COMPUTE_NETWORK,
    COOKIE_SECRET,
    DB_DATA_DIR,
    DB_DATA_VOLUME,
    DB_PASSWORD,
    DB_SERVICE,
    ENGINE_PROXY_PORT,
    ENGINE_PROXY_SERVICE,
    ENGINE_PROXY_URL,
    EDGE_NETWORK,
    HUB_CONFIG_PATH,
    HUB_DATA_DIR,
    HUB_DATA_VOLUME,
    HOMES_VOLUME,
    HUB_JSON_PATH,
    HUB_PORT,
    HUB_HOMES_DIR,
    HUB_NSS_DIR,
    HUB_SERVICE,
    IDENTITY_FILES_DIR,
    INTERNAL_NETWORK,
    LDAP_BIND_PASSWORD,
    NSS_VOLUME,
    PROXY_API_ALIAS,
    PROXY_ENTRYPOINT_PATH,
    PROXY_TLS_CERT_PATH,
    PROXY_TLS_KEY_PATH,
    PROXY_PORT,
    PROXY_SERVICE,
    PROXY_TOKEN,
    PROMETHEUS_SERVICE,
    SLURM_NETWORK,
    SLURMCTLD_STATE_VOLUME,
    SLURMDBD_DATA_VOLUME,
    SSH_CA_KEY,
    SSH_KEY,
    SSH_KNOWN_HOSTS_PATH,
    USERS_NETWORK,
    project_name,
    secret_path,
    service_token,
    stack_name,
)
from hubdeploy.contract.services import IDLE_CULLER, builtin_services
from hubdeploy.render import prometheus, slurmservices
from hubdeploy.render.common import healthcheck, homes_mount, labels
from hubdeploy.render.hardening import harden
from hubdeploy.render.hubdata import homes_source
from hubdeploy.site.model import Site
from hubdeploy.site.services import ExtraService

# Health checks run inside the images, which have node (proxy) and python (hub).
PROXY_HEALTH = (
    "require('{scheme}').get({{host: '127.0.0.1', port: {port}, path: '/_chp_healthz', rejectUnauthorized: false}},"
    " r => process.exit(r.statusCode == 200 ? 0 : 1)).on('error', () => process.exit(1))"
)
HUB_HEALTH = (
    "import urllib.request,sys;"
    "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/hub/health', timeout=4).status == 200 else 1)"
)
ENGINE_PROXY_HEALTH = (
    "import urllib.request,sys;"
    f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{ENGINE_PROXY_PORT}/_ping', timeout=4).status == 200"
    " else 1)"
)
HUB_API = f"http://{HUB_SERVICE}:{HUB_PORT}/hub/api"
# CPU weight of the hub and the proxy against a container's default of 1024. In a spawn
# storm every starting server (each at 1024) imports at full tilt, and with equal weights
# the hub got 1/N of the CPU: its event loop stalled for up to 10 s and every request
# waited. Weight only counts when the CPU is contended, so an idle hub takes nothing;
# 8192 lets the hub and proxy take what they need beside eight starting servers (the
# default concurrent_spawn_limit).
CONTROL_PLANE_CPU_SHARES = 8192


@dataclass(frozen=True)
class Mounts:
    """What the compose file needs from outside the site model: hashes and host paths."""

    hashes: dict[str, str]  # config hash per service: hub, proxy, slurm
    tls: dict[str, str] | None = None  # 'cert'/'key' -> absolute host paths when TLS is on
    ssh_identity: str | None = None  # absolute host path of the site's own SSH key
    # identity: the directories of a file source's passwd and group files, the LDAP CA
    # bundle and bind password file, as absolute host paths.
    identity_files: dict[str, str] | None = None


def compose_data(site: Site, refs: dict[str, str], mounts: Mounts,
                 pinned: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose document (``pinned``: see :func:`hubdeploy.render.render_files`)."""
    services: dict[str, Any] = {
        PROXY_SERVICE: proxy_service(site, refs, mounts),
        HUB_SERVICE: hub_service(site, refs, mounts),
        ENGINE_PROXY_SERVICE: engine_proxy_service(site, refs, pinned or {}),
    }
    project = project_name(site.name)
    volumes: dict[str, Any] = {HUB_DATA_VOLUME: {"name": stack_name(project, HUB_DATA_VOLUME)}}
    if site.database.type == "postgresql":
        services[DB_SERVICE] = db_service(site, refs)
        services[HUB_SERVICE]["depends_on"][DB_SERVICE] = {"condition": "service_healthy"}
        volumes[DB_DATA_VOLUME] = {"name": stack_name(project, DB_DATA_VOLUME)}
    if site.services.idle_culler.enabled:
        services[IDLE_CULLER.name] = culler_service(site, refs)
    if prometheus.enabled(site):
        services[PROMETHEUS_SERVICE] = prometheus.service(
            site, refs, mounts.hashes["prometheus"], labels(site, mounts.hashes["prometheus"]))
        volumes.update(prometheus.volumes(site))
    for svc in site.services.extra:
        if svc.command is not None:
            services[svc.name] = extra_service(site, refs, svc)
    if site.slurm is not None and site.slurm.cluster is not None:
        services.update(slurmservices.slurm_services(site, refs, mounts.hashes))
        for key in (SLURMCTLD_STATE_VOLUME, SLURMDBD_DATA_VOLUME):
            volumes[key] = {"name": stack_name(project, key)}
        volumes.update(slurmservices.runtime_volumes(site))
    volumes.update(identity_volumes(site))
    return {
        "name": project_name(site.name),
        "services": services,
        "networks": networks(site),
        "volumes": volumes,
        "secrets": secrets(services, mounts),
    }


def identity_volumes(site: Site) -> dict[str, Any]:
    """The homes volume (unless the site's homes are a host directory) and, for the
    stack's cluster, the accounts the hub publishes to it."""
    out: dict[str, Any] = {}
    if site.identity.source == "shared":
        return out
    if site.identity.homes_host is None:
        out[HOMES_VOLUME] = {"name": homes_source(site)}
    if _has_cluster(site):
        out[NSS_VOLUME] = {"name": stack_name(project_name(site.name), NSS_VOLUME)}
    return out


def _has_cluster(site: Site) -> bool:
    return site.slurm is not None and site.slurm.cluster is not None


def networks(site: Site) -> dict[str, Any]:
    """``internal`` (no route out: hub, proxy API, services, database), ``users`` (proxy,
    hub, login-node notebooks) and, with the stack's cluster, ``compute`` (proxy, hub,
    compute nodes) and ``slurm`` (no route out: controller and nodes). Login notebooks
    share no network with a Slurm daemon: neither slurmctld nor a node resolves there.

    With orchestrator swarm, ``users`` is an attachable overlay network: the notebooks are
    swarm tasks on any node, and the proxy and hub containers here join it to reach them."""
    project = project_name(site.name)
    users: dict[str, Any] = {"name": stack_name(project, USERS_NETWORK)}
    if site.orchestrator == "swarm":
        users.update(driver="overlay", attachable=True)
        if site.swarm.encrypted:
            users["driver_opts"] = {"encrypted": ""}
    out = {
        INTERNAL_NETWORK: {"name": stack_name(project, INTERNAL_NETWORK), "internal": True},
        USERS_NETWORK: users,
        **prometheus.networks(site),
    }
    if _has_cluster(site):
        out[COMPUTE_NETWORK] = {"name": stack_name(project, COMPUTE_NETWORK)}
        out[SLURM_NETWORK] = {"name": stack_name(project, SLURM_NETWORK), "internal": True}
    if site.orchestrator == "swarm":
        # A container on an internal bridge and an overlay network has no network that
        # leads out: its published port is never bound, and the hub could not reach an
        # LDAP server or a submit host. ``edge`` is that way out, for proxy and hub only.
        out[EDGE_NETWORK] = {"name": stack_name(project, EDGE_NETWORK)}
    return out


def _edge(site: Site, nets: dict[str, Any]) -> dict[str, Any]:
    """A service's networks, plus ``edge`` with orchestrator swarm (see networks)."""
    return {**nets, "edge": {}} if site.orchestrator == "swarm" else nets


def secrets(services: dict[str, Any], mounts: Mounts) -> dict[str, Any]:
    """Every secret a service lists, backed by its file in the state directory (or the
    site's own file: its SSH key, its LDAP bind password)."""
    names = sorted({s for svc in services.values() for s in svc.get("secrets", [])})
    own = {LDAP_BIND_PASSWORD: (mounts.identity_files or {}).get("ldap_password")}
    if mounts.ssh_identity:
        own[SSH_KEY] = mounts.ssh_identity
    return {name: {"file": own.get(name) or f"../secrets/{name}"} for name in names}


def proxy_service(site: Site, refs: dict[str, str], mounts: Mounts) -> dict[str, Any]:
    scheme = "https" if mounts.tls else "http"
    volumes = [f"./proxy/entrypoint.sh:{PROXY_ENTRYPOINT_PATH}:ro"]
    if mounts.tls:
        volumes += [f"{mounts.tls['cert']}:{PROXY_TLS_CERT_PATH}:ro", f"{mounts.tls['key']}:{PROXY_TLS_KEY_PATH}:ro"]
    return harden({
        "image": refs["proxy"],
        "pull_policy": "never",
        "entrypoint": ["/bin/sh", PROXY_ENTRYPOINT_PATH],
        "command": [],
        "ports": [f"{site.public.host}:{site.public.port}:{PROXY_PORT}"],
        "networks": _edge(site, {"internal": {"aliases": [PROXY_API_ALIAS]}, "users": {}, **_compute_net(site)}),
        "secrets": [PROXY_TOKEN],
        "volumes": volumes,
        "labels": labels(site, mounts.hashes["proxy"]),
        "healthcheck": healthcheck(["CMD", "node", "-e", PROXY_HEALTH.format(scheme=scheme, port=PROXY_PORT)]),
        "cpu_shares": CONTROL_PLANE_CPU_SHARES,
        "restart": "unless-stopped",
    }, "proxy", site.limits.proxy)


def _compute_net(site: Site, aliases: list[str] | None = None) -> dict[str, Any]:
    """The compute network's entry of the proxy and the hub: both reach compute-node
    notebooks there, and those reach the hub's API."""
    if not _has_cluster(site):
        return {}
    return {"compute": {"aliases": aliases} if aliases else {}}


def hub_secrets(site: Site) -> list[str]:
    """The secrets the hub reads: its own, every service's token, the database's and ssh's."""
    names = [COOKIE_SECRET, PROXY_TOKEN]
    names += [s.secret for s in builtin_services(site.services.idle_culler.enabled, site.services.prometheus.enabled)]
    names += [service_token(s.name) for s in site.services.extra]
    if site.database.type == "postgresql":
        names.append(DB_PASSWORD)
    if site.submit_ssh is not None:
        names.append(SSH_KEY)
        if site.submit_ssh.certificates:
            names.append(SSH_CA_KEY)
    if site.identity.source == "ldap":
        names.append(LDAP_BIND_PASSWORD)
    return sorted(names)


def hub_service(site: Site, refs: dict[str, str], mounts: Mounts) -> dict[str, Any]:
    volumes = [
        f"./hub/jupyterhub_config.py:{HUB_CONFIG_PATH}:ro",
        f"./hub/hub.json:{HUB_JSON_PATH}:ro",
        f"{HUB_DATA_VOLUME}:{HUB_DATA_DIR}",
    ]
    if site.submit_ssh is not None:
        volumes.append(f"./hub/ssh_known_hosts:{SSH_KNOWN_HOSTS_PATH}:ro")
    volumes += _hub_identity_volumes(site, mounts)
    return harden({
        "image": refs["hub"],
        "pull_policy": "never",
        "command": ["jupyterhub", "-f", HUB_CONFIG_PATH],
        # The hub holds no Docker socket: the docker backend and dexec reach the engine
        # through the engine proxy, which refuses whatever is not this site's.
        "environment": {"DOCKER_HOST": ENGINE_PROXY_URL},
        "networks": _edge(site, {"internal": {"aliases": [HUB_SERVICE]}, "users": {"aliases": [HUB_SERVICE]},
                                 **_compute_net(site, [HUB_SERVICE])}),
        "secrets": hub_secrets(site),
        "volumes": volumes,
        "labels": labels(site, mounts.hashes["hub"]),
        "healthcheck": healthcheck(["CMD", "python3", "-c", HUB_HEALTH.format(port=HUB_PORT)]),
        "depends_on": {PROXY_SERVICE: {"condition": "service_healthy"},
                       ENGINE_PROXY_SERVICE: {"condition": "service_healthy"}},
        "cpu_shares": CONTROL_PLANE_CPU_SHARES,
        "restart": "unless-stopped",
    }, "hub", site.limits.hub)


def engine_proxy_service(site: Site, refs: dict[str, str], pinned: dict[str, str]) -> dict[str, Any]:
    """The only service with the Docker socket (hubdeploy.engineproxy), reachable only on
    the internal network. Its policy comes from these arguments: the site, the host
    paths and volumes the site declared for notebooks, and the login profiles' images
    (as hub.json names them), the only ones a container it creates may run."""
    command = ["python3", "-m", "hubdeploy.engineproxy", "--site", site.name,
               "--listen", f"0.0.0.0:{ENGINE_PROXY_PORT}"]
    for path in _declared_host_paths(site):
        command += ["--bind-path", path]
    for name in _declared_volumes(site):
        command += ["--volume", name]
    for ref in sorted({pinned.get(p.image, refs[p.image]) for p in site.profiles if p.node == "login"}):
        command += ["--image", ref]
    return harden({
        "image": refs["hub"],
        "pull_policy": "never",
        "command": command,
        # Root for the socket (owner root, 0660), but with no capability at all: it needs
        # none to open a socket it owns, and a read-only root with no way to regain any.
        "user": "0:0",
        "networks": {"internal": {"aliases": [ENGINE_PROXY_SERVICE]}},
        "volumes": ["/var/run/docker.sock:/var/run/docker.sock"],
        "labels": labels(site),
        "healthcheck": healthcheck(["CMD", "python3", "-c", ENGINE_PROXY_HEALTH]),
        "restart": "unless-stopped",
    }, "engine-proxy", site.limits.engine_proxy)


def _declared_host_paths(site: Site) -> list[str]:
    paths = {v.source for p in site.profiles for v in p.volumes if v.source.startswith("/")}
    if site.identity.source != "shared" and site.identity.homes_host:
        paths.add(site.identity.homes_host)
    return sorted(paths)


def _declared_volumes(site: Site) -> list[str]:
    return sorted({v.source for p in site.profiles for v in p.volumes if not v.source.startswith("/")})


def _hub_identity_volumes(site: Site, mounts: Mounts) -> list[str]:
    """The hub creates homes and publishes the cluster's accounts; it reads a file
    source's files, or the LDAP CA bundle."""
    if site.identity.source == "shared":
        return []
    out = [homes_mount(site, HUB_HOMES_DIR)]
    if _has_cluster(site):
        out.append(f"{NSS_VOLUME}:{HUB_NSS_DIR}")
    files = mounts.identity_files or {}
    for key, target in (("passwd_dir", "passwd.d"), ("group_dir", "group.d")):
        if files.get(key):
            out.append(f"{files[key]}:{IDENTITY_FILES_DIR}/{target}:ro")
    if files.get("ldap_ca"):
        out.append(f"{files['ldap_ca']}:{IDENTITY_FILES_DIR}/ldap-ca.pem:ro")
    return out


def db_service(site: Site, refs: dict[str, str]) -> dict[str, Any]:
    return harden({
        "image": refs["db"],
        "pull_policy": "never",
        "networks": {"internal": {}},
        "secrets": [DB_PASSWORD],
        "volumes": [f"{DB_DATA_VOLUME}:{DB_DATA_DIR}"],
        "labels": labels(site),
        "healthcheck": healthcheck(["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "jupyterhub"]),
        "restart": "unless-stopped",
    }, "db", site.limits.database)


def _with_token_env(token: str, argv: list[str]) -> list[str]:
    # hubdeploy.hub.run reads the token file in the container and execs argv as nobody:
    # the token never enters argv, compose.yaml or `docker inspect`.
    return ["python3", "-m", "hubdeploy.hub.run", "--env", f"JUPYTERHUB_API_TOKEN={secret_path(token)}",
            "--user", "nobody", "--", *argv]


def culler_service(site: Site, refs: dict[str, str]) -> dict[str, Any]:
    c = site.services.idle_culler
    return harden({
        "image": refs["hub"],
        "pull_policy": "never",
        "command": _with_token_env(IDLE_CULLER.secret, [
            "python3", "-m", "jupyterhub_idle_culler",
            f"--url={HUB_API}", f"--timeout={c.timeout}", f"--cull-every={c.every}",
        ]),
        "networks": {"internal": {}},
        "secrets": [IDLE_CULLER.secret],
        "labels": labels(site),
        "depends_on": {HUB_SERVICE: {"condition": "service_healthy"}},
        "restart": "unless-stopped",
    }, "culler", site.limits.idle_culler)


def extra_service(site: Site, refs: dict[str, str], svc: ExtraService) -> dict[str, Any]:
    """A site service that runs as a container (one with ``command``)."""
    assert svc.command is not None
    token = service_token(svc.name)
    env = {
        "JUPYTERHUB_API_URL": HUB_API,
        "JUPYTERHUB_SERVICE_NAME": svc.name,
        "JUPYTERHUB_SERVICE_PREFIX": f"/services/{svc.name}/",
        **svc.environment,
    }
    if svc.image is None:
        # Our hub image has the secret-to-environment wrapper.
        command = _with_token_env(token, list(svc.command))
    else:
        # A foreign image gets the token as a file path, never as a value.
        command = list(svc.command)
        env["JUPYTERHUB_API_TOKEN_FILE"] = secret_path(token)
    if svc.port is not None:
        env["JUPYTERHUB_SERVICE_URL"] = f"http://0.0.0.0:{svc.port}"
    return harden({
        "image": svc.image or refs["hub"],
        "pull_policy": "never" if svc.image is None else "missing",
        "command": command,
        "environment": dict(sorted(env.items())),
        "networks": {"internal": {}},
        "secrets": [token],
        "labels": labels(site),
        "depends_on": {HUB_SERVICE: {"condition": "service_healthy"}},
        "restart": "unless-stopped",
    }, "service" if svc.image is None else "foreign", site.limits.services)
