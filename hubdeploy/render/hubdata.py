"""hub.json: the site as the hub's static config reads it (:mod:`hubdeploy.contract.hubjson`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import PurePosixPath
from typing import Any

from hubdeploy.contract import hubjson
from hubdeploy.contract.backends import DOCKER, SLURM, SWARM
from hubdeploy.contract.identity import IdentityConfig
from hubdeploy.contract.layout import (
    COOKIE_SECRET,
    HOMES_VOLUME,
    HUB_HOMES_DIR,
    HUB_NSS_DIR,
    IDENTITY_FILES_DIR,
    IDENTITY_STATE,
    LDAP_BIND_PASSWORD,
    DB_PASSWORD,
    DB_PORT,
    DB_SERVICE,
    DEXEC_UNREACHABLE,
    HUB_DATA_DIR,
    HUB_PORT,
    HUB_SERVICE,
    NOTEBOOK_USER,
    PROJECT_PREFIX,
    PROXY_API_ALIAS,
    PROXY_API_PORT,
    PROXY_TOKEN,
    SLURM_WORKDIR,
    SLURMCTLD_SERVICE,
    SSH_CA_KEY,
    USERS_NETWORK,
    project_name,
    secret_path,
    service_token,
    stack_name,
    staged_image_dir,
)
from hubdeploy.contract.services import builtin_services
from hubdeploy.contract.values import memory_bytes
from hubdeploy.render import slurm
from hubdeploy.render.ssh import ssh_argv, ssh_user_argv
from hubdeploy.site.model import Site
from hubdeploy.site.profiles import Profile, ProfileSlurm
from hubdeploy.site.services import ExtraService

# How long a compute-node spawn may wait in the queue before the hub gives up; JupyterHub's
# default (60 s) suits containers, not a batch queue (batchspawner uses 300 s too).
COMPUTE_START_TIMEOUT = 300


def hub_data(site: Site, refs: dict[str, str], pinned: Mapping[str, str] | None = None) -> hubjson.HubJson:
    """What the hub side reads (docs/design.md, "hub.json"): every key, with the
    schema's defaults written in.

    ``pinned``: image name -> ``REGISTRY/NAME@sha256:DIGEST``, what login-node servers run
    on a swarm with ``swarm.registry`` (known once ``up`` has pushed)."""
    return hubjson.HubJson(
        site=site.name,
        hub=hubjson.HubSection(ip="0.0.0.0", port=HUB_PORT, connect_url=f"http://{HUB_SERVICE}:{HUB_PORT}"),
        cookie_secret_file=secret_path(COOKIE_SECRET),
        proxy=hubjson.ProxySection(
            api_url=f"http://{PROXY_API_ALIAS}:{PROXY_API_PORT}",
            token_file=secret_path(PROXY_TOKEN),
            route_check_interval=site.proxy.route_check_interval,
        ),
        database=database(site),
        authenticator=hubjson.AuthenticatorSection(
            class_=site.hub.authenticator.class_, config=dict(site.hub.authenticator.config)),
        admin_users=tuple(site.hub.admin_users),
        username_max_length=site.hub.username_max_length,
        named_server_limit_per_user=site.hub.named_server_limit_per_user,
        # Hub cookies are Secure only when the proxy terminates TLS.
        tls=site.tls is not None,
        services=services(site),
        spawner=spawner(site, refs, pinned),
        identity=identity(site),
        config={k: dict(v) for k, v in site.hub.config.items()},
    )


def services(site: Site) -> tuple[hubjson.ServiceEntry, ...]:
    """The built-in services, then the site's own."""
    builtin = [hubjson.ServiceEntry(name=s.name, token_file=s.token_file, url=None, scopes=tuple(s.scopes))
               for s in builtin_services(site.services.idle_culler.enabled, site.services.prometheus.enabled)]
    return tuple(builtin + [_extra_service(svc) for svc in site.services.extra])


def _extra_service(svc: ExtraService) -> hubjson.ServiceEntry:
    url = svc.url
    if svc.command is not None and svc.port is not None:
        url = f"http://{svc.name}:{svc.port}"
    return hubjson.ServiceEntry(name=svc.name, token_file=secret_path(service_token(svc.name)), url=url,
                                scopes=tuple(svc.scopes))


def database(site: Site) -> hubjson.DatabaseSection:
    if site.database.type == "postgresql":
        # The driver is named: SQLAlchemy 2.1 defaults to psycopg 3, the image has psycopg2.
        return hubjson.DatabaseSection(url=f"postgresql+psycopg2://jupyterhub@{DB_SERVICE}:{DB_PORT}/jupyterhub",
                                       password_file=secret_path(DB_PASSWORD))
    return hubjson.DatabaseSection(url=f"sqlite:///{HUB_DATA_DIR}/jupyterhub.sqlite", password_file=None)


def spawner(site: Site, refs: dict[str, str], pinned: Mapping[str, str] | None = None) -> hubjson.SpawnerSection:
    """The spawner's profiles and backends: docker for login nodes, slurm for compute.

    A login profile's image is ``pinned`` when the swarm's nodes pull it from the registry;
    compute profiles keep the tag (their cluster is not the swarm)."""
    pinned = pinned or {}
    prefix = project_name(site.name)
    docker: dict[str, Any] = {"network": stack_name(prefix, USERS_NETWORK), "prefix": prefix, "site": site.name}
    if homes_source(site) is not None:
        docker.update(homes=homes_source(site), homes_target=site.identity.homes_dir)
    return hubjson.SpawnerSection(
        # orchestrator swarm: the same config, read as a SwarmConfig (its own keys default).
        backend=SWARM if site.orchestrator == "swarm" else DOCKER,
        backend_config=docker,
        # Compute profiles use this backend (HubdeploySpawner.node_backends, by profile node).
        backends={SLURM: slurm_backend_config(site)} if site.slurm is not None else {},
        profiles=tuple(profile(site, p, pinned.get(p.image, refs[p.image]) if p.node == "login" else refs[p.image])
                       for p in site.profiles),
        concurrent_spawn_limit=site.hub.concurrent_spawn_limit,
    )


def profile(site: Site, p: Profile, image_ref: str) -> hubjson.Profile:
    return hubjson.Profile(
        name=p.name,
        display_name=p.display_name or p.name,
        description=p.description,
        image=p.image,
        image_ref=image_ref,
        node=p.node,
        cpu=p.cpu,
        mem_limit=memory_bytes(p.memory) if p.memory else None,
        pids_limit=p.pids_limit,
        home=p.home,
        volumes=volumes(site, p),
        environment=dict(p.environment),
        default=p.default,
        spawner_config=spawner_config(site, p),
        slurm=profile_slurm(site, p, image_ref) if p.node == "compute" else None,
        placement=(hubjson.Placement(constraints=tuple(p.placement.constraints), spread=tuple(p.placement.spread))
                   if p.placement is not None else None),
        reserve=(hubjson.Reserve(cpu=p.reserve.cpu, mem=memory_bytes(p.reserve.memory) if p.reserve.memory else None)
                 if p.reserve is not None else None),
    )


def volumes(site: Site, p: Profile) -> tuple[hubjson.Volume, ...]:
    """A profile's volumes as its backend binds them. Through Charliecloud on the stack's
    cluster, every node mounts each at its target (render.slurmservices), so the job
    binds the node's path: target to target."""
    staged = site.staged(p)
    return tuple(hubjson.Volume(source=v.target if staged else v.source, target=v.target, read_only=v.read_only)
                 for v in p.volumes)


def profile_slurm(site: Site, p: Profile, image_ref: str) -> hubjson.ProfileSlurm:
    """A compute profile's ``slurm`` section as slurm_script.job_options reads it."""
    s = p.slurm or ProfileSlurm()
    partitions = list(s.partitions)
    cluster = site.slurm.cluster if site.slurm else None
    path_prepend = list(s.path_prepend)
    if cluster is not None and s.runtime == "native" and not path_prepend:
        # hubdeploy's images keep jupyterhub-singleuser in /opt/venv; a batch job's PATH
        # is Slurm's default, not the image's.
        path_prepend = ["/opt/venv/bin"]
    image, home_dir = s.image, None
    if site.staged(p):
        # ch-run --set-env gives the server the image's own PATH; the nodes' homes are
        # bound at their path unless every user shares one account (no homes on nodes).
        image = staged_image_dir(image_ref)
        home_dir = site.identity.homes_dir if p.home and site.identity.source != "shared" else None
    return hubjson.ProfileSlurm(
        partition=s.partition or (partitions[0] if partitions else None),
        partitions=tuple(partitions),
        account=s.account,
        qos=s.qos,
        time=s.time,
        gpus=s.gpus,
        runtime=s.runtime,
        image=image,
        home_dir=home_dir,
        path_prepend=tuple(path_prepend),
        limits=hubjson.SlurmLimits(
            max_cpu=s.limits.max_cpu,
            max_mem=memory_bytes(s.limits.max_memory) if s.limits.max_memory else None,
            max_time=s.limits.max_time,
            max_gpus=s.limits.max_gpus,
        ),
    )


def spawner_config(site: Site, p: Profile) -> dict[str, Any]:
    """A profile's spawner_config, with COMPUTE_START_TIMEOUT for compute profiles unless
    the profile or the site's pass-through config sets start_timeout itself."""
    out = dict(p.spawner_config)
    sections = site.hub.config
    site_sets = any("start_timeout" in (sections.get(k) or {}) for k in ("Spawner", "HubdeploySpawner"))
    if p.node == "compute" and "start_timeout" not in out and not site_sets:
        out["start_timeout"] = COMPUTE_START_TIMEOUT
    return out


def slurm_backend_config(site: Site) -> dict[str, Any]:
    """The Slurm backend's config: the stack's own cluster, or the site's submit path."""
    assert site.slurm is not None
    if site.slurm.cluster is not None:
        return _cluster_backend_config(site)
    sub = site.slurm.submit
    assert sub is not None
    out: dict[str, Any] = {"prefix": PROJECT_PREFIX, "site": site.name}
    if sub.ssh is not None:
        out.update(submit_prefix=ssh_argv(sub.ssh), submit_quote=True, submit_env_stdin=True,
                   submit_unreachable_code=255)
        if sub.ssh.certificates:
            out.update(ssh_ca_key=secret_path(SSH_CA_KEY), ssh_user_prefix=ssh_user_argv(sub.ssh),
                       ssh_cert_minutes=sub.ssh.certificate_minutes)
    if sub.prefix:
        out["submit_prefix"] = list(sub.prefix)
    if sub.env_option:
        out["submit_env_option"] = sub.env_option
    if sub.quote:
        out["submit_quote"] = True
    if sub.output:
        out["output"] = sub.output
    return out


def _cluster_backend_config(site: Site) -> dict[str, Any]:
    # The hub runs the Slurm commands in the controller's container through the Docker
    # API it already has (hubdeploy.hub.dexec): no Slurm client, munged or user accounts
    # in the hub image, and the commands always match the cluster's version. sbatch runs
    # as the server's own uid there (the controller knows the account from the hub's nss
    # files), so munge vouches for that user and the job is theirs.
    per_user = site.identity.source != "shared"
    return {
        "submit_prefix": [
            "python3", "-m", "hubdeploy.hub.dexec",
            "--project", project_name(site.name), "--service", SLURMCTLD_SERVICE,
            "--user", "{uid}:{gid}" if per_user else NOTEBOOK_USER, "--workdir", SLURM_WORKDIR, "--",
        ],
        "output_in_home": per_user,
        "submit_env_option": "--env",
        "submit_unreachable_code": DEXEC_UNREACHABLE,
        # No login environment to build on the node (see SlurmBackend's export_all).
        "export_all": True,
        "node_agent": True,
        "output": f"{SLURM_WORKDIR}/hubdeploy-slurm-%j.log",
        "prefix": PROJECT_PREFIX,
        "site": site.name,
        # The cluster enforces associations (render.slurm): each user gets theirs, with
        # every account of the cluster, before their first job.
        "association_accounts": slurm.accounts(site),
    }


def identity(site: Site) -> IdentityConfig:
    """hub.json's ``identity``: the source, where homes and the cluster's accounts go,
    and the source's own settings (the others null)."""
    ident = site.identity
    out: dict[str, Any] = dict.fromkeys(f.name for f in fields(IdentityConfig))
    out.update(source=ident.source, home_template=ident.home)
    if ident.source != "shared":
        out["homes_dir"] = HUB_HOMES_DIR
        out["nss_dir"] = HUB_NSS_DIR if site.slurm is not None and site.slurm.cluster is not None else None
    if ident.source == "auto":
        out.update(uid_min=ident.auto.uid_min, uid_max=ident.auto.uid_max, state_file=IDENTITY_STATE)
    elif ident.source == "file":
        assert ident.file is not None
        out["passwd_file"] = f"{IDENTITY_FILES_DIR}/passwd.d/{PurePosixPath(ident.file.passwd).name}"
        out["group_file"] = (f"{IDENTITY_FILES_DIR}/group.d/{PurePosixPath(ident.file.group).name}"
                             if ident.file.group else None)
    elif ident.source == "ldap":
        assert ident.ldap is not None
        ldap = ident.ldap.model_dump()
        ldap["bind_password_file"] = secret_path(LDAP_BIND_PASSWORD)
        if ident.ldap.ca_file:
            ldap["ca_file"] = f"{IDENTITY_FILES_DIR}/ldap-ca.pem"
        out["ldap"] = ldap
    return IdentityConfig(**out)


def homes_source(site: Site) -> str | None:
    """What holds users' homes: the site's host directory or the stack's homes volume;
    None with the shared account (a home volume per user at /home/jovyan)."""
    if site.identity.source == "shared":
        return None
    return site.identity.homes_host or stack_name(project_name(site.name), HOMES_VOLUME)
