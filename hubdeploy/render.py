"""Site -> the files of the stack: compose.yaml, the hub's data, the proxy's entrypoint.

Everything here is a pure function of the site, the image refs and hubdeploy's own static
files, so the same site renders byte-identical output (golden tests) and ``up`` on an
unchanged site changes nothing. Changes reach containers through two hashes: image refs
carry the hash of their build context, and each service carries a ``hubdeploy.config-hash``
label over the files mounted into it, so compose recreates exactly the services whose
inputs changed (compose itself does not look inside bind-mounted files).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from hubdeploy import resources
from hubdeploy.hub.dexec import UNREACHABLE as DEXEC_UNREACHABLE
from hubdeploy.hub.orphans import SCOPES as ORPHANS_SCOPES
from hubdeploy.hub.orphans import SERVICE as ORPHANS_SERVICE
from hubdeploy.schema import SLURM_NAME_PATTERN, ProfileSlurm, Site, SlurmSSH, memory_bytes
from hubdeploy.secrets import SSH_KEY, ssh_key_generated

HUB_PORT = 8081
PROXY_API_PORT = 8001
# The proxy listens on this port inside its container; the site's public port maps to it.
PROXY_PORT = 8000
NOTEBOOK_PORT = 8888

CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def project_name(site: Site) -> str:
    return f"hubdeploy-{site.name}"


def state_dir(site_file: Path) -> Path:
    return site_file.resolve().parent / ".hubdeploy"


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _smoke_scopes() -> list[str]:
    from hubdeploy.smoke.hubclient import SMOKE_SERVICE_SCOPES

    return list(SMOKE_SERVICE_SCOPES)


def hub_data(site: Site, refs: dict[str, str]) -> dict[str, Any]:
    """The data the static jupyterhub_config.py reads (docs/design.md, "hub.json")."""
    prefix = project_name(site)
    services = [
        {
            "name": "hubdeploy-smoke",
            "token_file": "/run/secrets/service-hubdeploy-smoke_token",
            "url": None,
            "scopes": _smoke_scopes(),
        }
    ]
    services.append(
        {
            # `hubdeploy status` and `hubdeploy orphans`: which servers the hub tracks.
            "name": ORPHANS_SERVICE,
            "token_file": f"/run/secrets/service-{ORPHANS_SERVICE}_token",
            "url": None,
            "scopes": list(ORPHANS_SCOPES),
        }
    )
    if site.services.idle_culler.enabled:
        services.append(
            {
                "name": "idle-culler",
                "token_file": "/run/secrets/service-idle-culler_token",
                "url": None,
                "scopes": CULLER_SCOPES,
            }
        )
    for svc in site.services.extra:
        url = svc.url
        if svc.command is not None and svc.port is not None:
            url = f"http://{svc.name}:{svc.port}"
        services.append(
            {
                "name": svc.name,
                "token_file": f"/run/secrets/service-{svc.name}_token",
                "url": url,
                "scopes": list(svc.scopes),
            }
        )
    if site.database.type == "postgresql":
        database = {
            # The driver is named: SQLAlchemy 2.1 defaults to psycopg 3, the image has psycopg2.
            "url": "postgresql+psycopg2://jupyterhub@db:5432/jupyterhub",
            "password_file": "/run/secrets/db_password",
        }
    else:
        database = {"url": "sqlite:////srv/jupyterhub/data/jupyterhub.sqlite"}
    profiles = []
    for p in site.profiles:
        profiles.append(
            {
                "name": p.name,
                "display_name": p.display_name or p.name,
                "description": p.description,
                "image": p.image,
                "image_ref": refs[p.image],
                "node": p.node,
                "cpu": p.cpu,
                "mem_limit": memory_bytes(p.memory) if p.memory else None,
                "home": p.home,
                "volumes": [v.model_dump() for v in p.volumes],
                "environment": dict(p.environment),
                "default": p.default,
                "spawner_config": _spawner_config(site, p),
            }
        )
        if p.node == "compute":
            profiles[-1]["slurm"] = _profile_slurm(site, p)
    spawner: dict[str, Any] = {
        "backend": "docker",
        "backend_config": {"network": f"{prefix}-users", "prefix": prefix, "site": site.name},
        "profiles": profiles,
    }
    if site.slurm is not None:
        # Compute profiles use this backend (HubdeploySpawner.backends, by profile node).
        spawner["backends"] = {"slurm": _slurm_backend_config(site)}
    return {
        "site": site.name,
        "hub": {"ip": "0.0.0.0", "port": HUB_PORT, "connect_url": f"http://hub:{HUB_PORT}"},
        "cookie_secret_file": "/run/secrets/cookie_secret",
        "proxy": {
            "api_url": f"http://proxy-api:{PROXY_API_PORT}",
            "token_file": "/run/secrets/proxy_token",
            "route_check_interval": site.proxy.route_check_interval,
        },
        "database": database,
        "authenticator": {
            "class": site.hub.authenticator.class_,
            "config": dict(site.hub.authenticator.config),
        },
        "admin_users": list(site.hub.admin_users),
        "named_server_limit_per_user": site.hub.named_server_limit_per_user,
        # Hub cookies are Secure only when the proxy terminates TLS.
        "tls": site.tls is not None,
        "services": services,
        "spawner": spawner,
        "config": {k: dict(v) for k, v in site.hub.config.items()},
    }


# -- Slurm ------------------------------------------------------------------------------

# The notebook user of hubdeploy's images; jobs on the stack's cluster run as this user.
NOTEBOOK_USER = "jovyan"
SLURM_NODE_PREFIX = "c"
# Where sbatch runs in the controller container and the job's output goes on the node:
# a directory the notebook user can write on every node.
SLURM_WORKDIR = "/tmp"


def slurm_node_names(site: Site) -> list[str]:
    """The stack cluster's NodeNames, which are also the containers' hostnames and aliases."""
    assert site.slurm is not None and site.slurm.cluster is not None
    return [f"{SLURM_NODE_PREFIX}{i}" for i in range(1, site.slurm.cluster.nodes + 1)]


def _profile_slurm(site: Site, p) -> dict[str, Any]:
    """A compute profile's ``slurm`` section as slurm_script.job_options reads it."""
    s = p.slurm or ProfileSlurm()
    partitions = list(s.partitions)
    cluster = site.slurm.cluster if site.slurm else None
    path_prepend = list(s.path_prepend)
    if cluster is not None and s.runtime == "native" and not path_prepend:
        # hubdeploy's images keep jupyterhub-singleuser in /opt/venv; a batch job's PATH
        # is Slurm's default, not the image's.
        path_prepend = ["/opt/venv/bin"]
    return {
        "partition": s.partition or (partitions[0] if partitions else None),
        "partitions": partitions,
        "account": s.account,
        "qos": s.qos,
        "time": s.time,
        "gpus": s.gpus,
        "runtime": s.runtime,
        "image": s.image,
        "path_prepend": path_prepend,
        "limits": {
            "max_cpu": s.limits.max_cpu,
            "max_mem": memory_bytes(s.limits.max_memory) if s.limits.max_memory else None,
            "max_time": s.limits.max_time,
            "max_gpus": s.limits.max_gpus,
        },
    }


# How long a compute-node spawn may wait in the queue before the hub gives up; JupyterHub's
# default (60 s) suits containers, not a batch queue (batchspawner uses 300 s too).
COMPUTE_START_TIMEOUT = 300


def _spawner_config(site: Site, p) -> dict[str, Any]:
    """A profile's spawner_config, with COMPUTE_START_TIMEOUT for compute profiles unless
    the profile or the site's pass-through config sets start_timeout itself."""
    out = dict(p.spawner_config)
    sections = site.hub.config
    site_sets = any("start_timeout" in (sections.get(k) or {}) for k in ("Spawner", "HubdeploySpawner"))
    if p.node == "compute" and "start_timeout" not in out and not site_sets:
        out["start_timeout"] = COMPUTE_START_TIMEOUT
    return out


def _slurm_backend_config(site: Site) -> dict[str, Any]:
    assert site.slurm is not None
    if site.slurm.cluster is not None:
        # The hub runs the Slurm commands in the controller's container through the Docker
        # API it already has (hubdeploy.hub.dexec): no Slurm client, munged or user
        # accounts in the hub image, and the commands always match the cluster's version.
        return {
            "submit_prefix": [
                "python3", "-m", "hubdeploy.hub.dexec",
                "--project", project_name(site), "--service", "slurmctld",
                "--user", NOTEBOOK_USER, "--workdir", SLURM_WORKDIR, "--",
            ],
            "submit_env_option": "--env",
            "submit_unreachable_code": DEXEC_UNREACHABLE,
            # No login environment to build on the node (see SlurmBackend's export_all).
            "export_all": True,
            "output": f"{SLURM_WORKDIR}/hubdeploy-slurm-%j.log",
            "prefix": "hubdeploy",
            "site": site.name,
        }
    sub = site.slurm.submit
    assert sub is not None
    out: dict[str, Any] = {"prefix": "hubdeploy", "site": site.name}
    if sub.ssh is not None:
        out.update(submit_prefix=ssh_argv(sub.ssh), submit_quote=True, submit_env_stdin=True,
                   submit_unreachable_code=255)
    if sub.prefix:
        out["submit_prefix"] = list(sub.prefix)
    if sub.env_option:
        out["submit_env_option"] = sub.env_option
    if sub.quote:
        out["submit_quote"] = True
    if sub.output:
        out["output"] = sub.output
    return out


SSH_KNOWN_HOSTS = "/etc/hubdeploy/ssh_known_hosts"
SSH_IDENTITY = f"/run/secrets/{SSH_KEY}"


def ssh_argv(ssh: SlurmSSH) -> list[str]:
    """The hub's ssh command up to the host: the remote command follows, quoted.

    No user config (``-F /dev/null``) and no prompts (``BatchMode``): a key that is not
    accepted fails at once with ssh's own message. Only the keys in the site's
    known_hosts are trusted. Connections are multiplexed (``ControlMaster``) so that the
    squeue polls of a starting server do not each pay for a handshake.
    """
    argv = [
        "ssh", "-F", "/dev/null", "-T",
        "-i", SSH_IDENTITY, "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={SSH_KNOWN_HOSTS}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=10",
        "-o", "ServerAliveCountMax=3",
        "-o", "ControlMaster=auto",
        "-o", "ControlPath=/tmp/hubdeploy-ssh-%C",
        "-o", "ControlPersist=300",
        "-p", str(ssh.port),
        "-l", ssh.user,
        "--", ssh.host,
    ]
    return argv


def slurm_conf(site: Site) -> bytes:
    """slurm.conf of the stack's cluster: no privileges, no cgroups, no accounting."""
    assert site.slurm is not None and site.slurm.cluster is not None
    c = site.slurm.cluster
    nodes = slurm_node_names(site)
    mem_mb = memory_bytes(c.memory) // 2**20
    lines = [
        "# Rendered by hubdeploy from the site description; edit the site file, not this.",
        f"ClusterName={site.name}",
        "SlurmctldHost=slurmctld",
        "SlurmUser=slurm",
        "AuthType=auth/munge",
        "StateSaveLocation=/var/spool/slurmctld",
        "SlurmdSpoolDir=/var/spool/slurmd",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd.pid",
        # Containers without privileges: no cgroups (22.05 has no CgroupPlugin=disabled).
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        # The nodes share the host's cores: schedule what the site declares.
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "MinJobAge=60",
        "SlurmctldTimeout=30",
        # Long: a controller that is away for a while must not mark live nodes down.
        "SlurmdTimeout=600",
        "InactiveLimit=0",
        "KillWait=5",
        "SchedulerType=sched/backfill",
        # sbatch never starts a job itself: the controller's background loop does, at most
        # once a second and, by default, not within batch_sched_delay=3 s of its previous
        # scheduling pass (any job's start or end). A notebook is interactive: schedule at
        # the next tick (measured up to 2.2 s of sbatch -> RUNNING before, under 1 s now).
        "SchedulerParameters=batch_sched_delay=0",
        "MpiDefault=none",
        "EnforcePartLimits=ALL",
    ]
    if c.accounts:
        # Without slurmdbd Slurm knows no accounts (AllowAccounts would leave such jobs
        # pending forever): job_submit.lua (slurm_job_submit_lua) is the account check.
        lines.append("JobSubmitPlugins=lua")
    lines += [f"NodeName={n} CPUs={c.cpus} RealMemory={mem_mb} State=UNKNOWN" for n in nodes]
    for i, part in enumerate(c.partitions):
        lines.append(f"PartitionName={part} Nodes={','.join(nodes)} Default={'YES' if i == 0 else 'NO'} "
                     "MaxTime=INFINITE State=UP")
    return ("\n".join(lines) + "\n").encode()


def _lua_string(value: str) -> str:
    # Account names are SlurmNames ([A-Za-z0-9_.+-]): nothing in them needs escaping, and
    # this refuses to write anything that would.
    assert re.fullmatch(SLURM_NAME_PATTERN, value), value
    return f'"{value}"'


def slurm_job_submit_lua(site: Site) -> bytes | None:
    """The controller's job_submit.lua when ``slurm.cluster.accounts`` is set, else None.

    It plays the accounting database's part: a job naming another account is refused with
    Slurm's own ESLURM_INVALID_ACCOUNT, so sbatch fails at once with "Invalid account or
    account/partition combination specified" (what a site with slurmdbd answers), and a
    job naming none gets the first account, as a user's default account would.
    """
    assert site.slurm is not None and site.slurm.cluster is not None
    accounts = site.slurm.cluster.accounts
    if not accounts:
        return None
    admitted = ", ".join(f"[{_lua_string(a)}] = true" for a in accounts)
    text = f"""\
-- Rendered by hubdeploy from the site description (slurm.cluster.accounts); edit the
-- site file, not this.
local admitted = {{{admitted}}}
local default_account = {_lua_string(accounts[0])}

local function refuse(account)
  slurm.log_user("account %s is not one of this cluster's accounts", account)
  return slurm.ESLURM_INVALID_ACCOUNT
end

function slurm_job_submit(job_desc, part_list, submit_uid)
  if job_desc.account == nil or job_desc.account == "" then
    job_desc.account = default_account
  elseif not admitted[job_desc.account] then
    return refuse(job_desc.account)
  end
  return slurm.SUCCESS
end

-- scontrol update Account=... must not get round the check either.
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  if job_desc.account ~= nil and job_desc.account ~= "" and not admitted[job_desc.account] then
    return refuse(job_desc.account)
  end
  return slurm.SUCCESS
end
"""
    return text.encode()


def _slurm_services(site: Site, refs: dict[str, str], hashes: dict[str, str]) -> dict[str, Any]:
    """slurmctld and one slurmd container per node, on the users network (the proxy
    reaches notebooks on the nodes by NodeName)."""
    common = {
        "image": refs["slurm"],
        "pull_policy": "never",
        "secrets": ["munge_key"],
        # The entrypoint installs the key as /etc/munge/munge.key, owner munge, 0400.
        "environment": {"HUBDEPLOY_MUNGE_KEY": "/run/secrets/munge_key"},
        "labels": {"hubdeploy.site": site.name, "hubdeploy.config-hash": hashes["slurm"]},
        "restart": "unless-stopped",
    }
    conf = "./slurm/slurm.conf:/etc/hubdeploy-slurm/slurm.conf:ro"
    # Each service its own copy: shared dicts would come out as YAML anchors.
    services: dict[str, Any] = {
        "slurmctld": {
            **copy.deepcopy(common),
            "command": ["slurmctld"],
            "hostname": "slurmctld",
            "networks": {"users": {"aliases": ["slurmctld"]}},
            "volumes": [conf, "slurmctld-state:/var/spool/slurmctld"],
            "healthcheck": _healthcheck(["CMD", "scontrol", "ping"]),
        }
    }
    if site.slurm.cluster.accounts:
        # Only the controller runs job_submit plugins; the entrypoint installs the script.
        services["slurmctld"]["volumes"].append("./slurm/job_submit.lua:/etc/hubdeploy-slurm/job_submit.lua:ro")
    for node in slurm_node_names(site):
        services[f"slurm-{node}"] = {
            **copy.deepcopy(common),
            "command": ["slurmd"],
            "hostname": node,
            "networks": {"users": {"aliases": [node]}},
            "volumes": [conf],
        }
    return services


# Health checks run inside the images, which have node (proxy) and python (hub).
PROXY_HEALTH = (
    "require('{scheme}').get({{host: '127.0.0.1', port: {port}, path: '/_chp_healthz', rejectUnauthorized: false}},"
    " r => process.exit(r.statusCode == 200 ? 0 : 1)).on('error', () => process.exit(1))"
)
HUB_HEALTH = (
    "import urllib.request,sys;"
    "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/hub/health', timeout=4).status == 200 else 1)"
)


def _healthcheck(test: list[str]) -> dict[str, Any]:
    return {"test": test, "interval": "5s", "timeout": "5s", "retries": 5, "start_period": "60s"}


def compose_data(
    site: Site,
    refs: dict[str, str],
    hashes: dict[str, str],
    tls: dict[str, str] | None,
    ssh_identity: str | None = None,
) -> dict:
    """The compose document. ``hashes`` are the config hashes of mounted files per service;
    ``tls`` maps 'cert'/'key' to absolute host paths when TLS is on; ``ssh_identity`` is
    the absolute host path of the site's own SSH key, when it has one."""
    prefix = project_name(site)
    secret_list = lambda names: sorted(names)  # noqa: E731 - compose wants a list
    nets = {
        "internal": {"name": f"{prefix}-internal", "internal": True},
        "users": {"name": f"{prefix}-users"},
    }
    hub_secrets = ["cookie_secret", "proxy_token", "service-hubdeploy-smoke_token", f"service-{ORPHANS_SERVICE}_token"]
    if site.services.idle_culler.enabled:
        hub_secrets.append("service-idle-culler_token")
    hub_secrets += [f"service-{s.name}_token" for s in site.services.extra]
    hub_volumes = [
        "./hub/jupyterhub_config.py:/etc/jupyterhub/jupyterhub_config.py:ro",
        "./hub/hub.json:/etc/hubdeploy/hub.json:ro",
        "hub-data:/srv/jupyterhub/data",
        # The docker backend starts login-node notebooks on this engine.
        "/var/run/docker.sock:/var/run/docker.sock",
    ]
    if site.submit_ssh is not None:
        hub_secrets.append(SSH_KEY)
        hub_volumes.append(f"./hub/ssh_known_hosts:{SSH_KNOWN_HOSTS}:ro")
    volumes: dict[str, Any] = {"hub-data": {"name": f"{prefix}-hub-data"}}
    scheme = "https" if tls else "http"

    proxy_volumes = ["./proxy/entrypoint.sh:/etc/hubdeploy/proxy-entrypoint.sh:ro"]
    if tls:
        proxy_volumes += [f"{tls['cert']}:/etc/hubdeploy/tls/cert.pem:ro", f"{tls['key']}:/etc/hubdeploy/tls/key.pem:ro"]
    services: dict[str, Any] = {
        "proxy": {
            "image": refs["proxy"],
            "pull_policy": "never",
            "entrypoint": ["/bin/sh", "/etc/hubdeploy/proxy-entrypoint.sh"],
            "command": [],
            "ports": [f"{site.public.host}:{site.public.port}:{PROXY_PORT}"],
            "networks": {"internal": {"aliases": ["proxy-api"]}, "users": {}},
            "secrets": ["proxy_token"],
            "volumes": proxy_volumes,
            "labels": {"hubdeploy.site": site.name, "hubdeploy.config-hash": hashes["proxy"]},
            "healthcheck": _healthcheck(
                ["CMD", "node", "-e", PROXY_HEALTH.format(scheme=scheme, port=PROXY_PORT)]
            ),
            "restart": "unless-stopped",
        },
        "hub": {
            "image": refs["hub"],
            "pull_policy": "never",
            "command": ["jupyterhub", "-f", "/etc/jupyterhub/jupyterhub_config.py"],
            "networks": {"internal": {"aliases": ["hub"]}, "users": {"aliases": ["hub"]}},
            "secrets": secret_list(hub_secrets + (["db_password"] if site.database.type == "postgresql" else [])),
            "volumes": hub_volumes,
            "labels": {"hubdeploy.site": site.name, "hubdeploy.config-hash": hashes["hub"]},
            "healthcheck": _healthcheck(["CMD", "python3", "-c", HUB_HEALTH.format(port=HUB_PORT)]),
            "depends_on": {"proxy": {"condition": "service_healthy"}},
            "restart": "unless-stopped",
        },
    }
    if site.database.type == "postgresql":
        volumes["db-data"] = {"name": f"{prefix}-db-data"}
        services["db"] = {
            "image": refs["db"],
            "pull_policy": "never",
            "networks": {"internal": {}},
            "secrets": ["db_password"],
            "volumes": ["db-data:/var/lib/postgresql/data"],
            "labels": {"hubdeploy.site": site.name},
            "healthcheck": _healthcheck(["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "jupyterhub"]),
            "restart": "unless-stopped",
        }
        services["hub"]["depends_on"]["db"] = {"condition": "service_healthy"}
    hub_api = f"http://hub:{HUB_PORT}/hub/api"
    if site.services.idle_culler.enabled:
        c = site.services.idle_culler
        services["idle-culler"] = {
            "image": refs["hub"],
            "pull_policy": "never",
            "command": [
                "python3", "-m", "hubdeploy.hub.run",
                "--env", "JUPYTERHUB_API_TOKEN=/run/secrets/service-idle-culler_token",
                "--user", "nobody", "--",
                "python3", "-m", "jupyterhub_idle_culler",
                f"--url={hub_api}", f"--timeout={c.timeout}", f"--cull-every={c.every}",
            ],
            "networks": {"internal": {}},
            "secrets": ["service-idle-culler_token"],
            "labels": {"hubdeploy.site": site.name},
            "depends_on": {"hub": {"condition": "service_healthy"}},
            "restart": "unless-stopped",
        }
    for svc in site.services.extra:
        if svc.command is None:
            continue
        token = f"service-{svc.name}_token"
        env = {
            "JUPYTERHUB_API_URL": hub_api,
            "JUPYTERHUB_SERVICE_NAME": svc.name,
            "JUPYTERHUB_SERVICE_PREFIX": f"/services/{svc.name}/",
            **svc.environment,
        }
        if svc.image is None:
            # Our hub image has the secret-to-environment wrapper.
            command = ["python3", "-m", "hubdeploy.hub.run", "--env", f"JUPYTERHUB_API_TOKEN=/run/secrets/{token}",
                       "--user", "nobody", "--", *svc.command]
        else:
            # A foreign image gets the token as a file path, never as a value.
            command = list(svc.command)
            env["JUPYTERHUB_API_TOKEN_FILE"] = f"/run/secrets/{token}"
        if svc.port is not None:
            env["JUPYTERHUB_SERVICE_URL"] = f"http://0.0.0.0:{svc.port}"
        services[svc.name] = {
            "image": svc.image or refs["hub"],
            "pull_policy": "never" if svc.image is None else "missing",
            "command": command,
            "environment": dict(sorted(env.items())),
            "networks": {"internal": {}},
            "secrets": [token],
            "labels": {"hubdeploy.site": site.name},
            "depends_on": {"hub": {"condition": "service_healthy"}},
            "restart": "unless-stopped",
        }
    if site.slurm is not None and site.slurm.cluster is not None:
        services.update(_slurm_services(site, refs, hashes))
        volumes["slurmctld-state"] = {"name": f"{prefix}-slurmctld-state"}
    all_secrets = sorted({s for svc in services.values() for s in svc.get("secrets", [])})
    return {
        "name": prefix,
        "services": services,
        "networks": nets,
        "volumes": volumes,
        "secrets": {
            name: {"file": ssh_identity if name == SSH_KEY and ssh_identity else f"../secrets/{name}"}
            for name in all_secrets
        },
    }


def _dump_yaml(data: Any) -> bytes:
    import io

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # never fold long health-check commands
    buf = io.StringIO()
    buf.write("# Rendered by hubdeploy from the site description; edit the site file, not this.\n")
    yaml.dump(data, buf)
    return buf.getvalue().encode()


def render(site: Site, site_dir: Path, refs: dict[str, str]) -> dict[str, bytes]:
    """All files of ``.hubdeploy/rendered/``, relative path -> bytes. Pure and deterministic."""
    hub_config = resources.read_bytes("config/jupyterhub_config.py")
    hub_json = (json.dumps(hub_data(site, refs), indent=2, sort_keys=True) + "\n").encode()
    # Static: ports are fixed inside the containers; nothing from the site goes into it.
    entry = resources.read_bytes("compose/proxy-entrypoint.sh")
    tls = None
    tls_bytes: list[bytes] = []
    if site.tls is not None:
        tls = {k: str((site_dir / getattr(site.tls, k)).resolve()) for k in ("cert", "key")}
        # Hash the certificate, not the key: a renewed cert must recreate the proxy, and the
        # key's bytes never need to enter anything we print.
        tls_bytes = [Path(tls["cert"]).read_bytes(), tls["key"].encode()]
    hub_files = {"hub/jupyterhub_config.py": hub_config, "hub/hub.json": hub_json}
    ssh = site.submit_ssh
    ssh_identity = None
    if ssh is not None:
        hub_files["hub/ssh_known_hosts"] = (site_dir / ssh.known_hosts).read_bytes()
        if not ssh_key_generated(site):
            ssh_identity = str((site_dir / ssh.identity_file).resolve())
    hashes = {
        # A changed key file recreates the hub only through its path: its bytes stay out.
        "hub": _sha(*hub_files.values(), *([ssh_identity.encode()] if ssh_identity else [])),
        "proxy": _sha(entry, *tls_bytes),
    }
    slurm_files: dict[str, bytes] = {}
    if site.slurm is not None and site.slurm.cluster is not None:
        slurm_files["slurm/slurm.conf"] = slurm_conf(site)
        lua = slurm_job_submit_lua(site)
        if lua is not None:
            slurm_files["slurm/job_submit.lua"] = lua
        # The controller reads the script only when it starts: a changed account list
        # must recreate it. Without accounts the hash is what it always was.
        hashes["slurm"] = _sha(*(slurm_files[k] for k in sorted(slurm_files)))
    files = {
        **slurm_files,
        "compose.yaml": _dump_yaml(compose_data(site, refs, hashes, tls, ssh_identity)),
        **hub_files,
        "proxy/entrypoint.sh": entry,
    }
    return files


def write_files(root: Path, files: dict[str, bytes]) -> list[str]:
    """Write ``files`` under ``root``, each atomically (temp file + rename), only if changed.

    Unchanged files keep their mtime, so an unchanged site touches nothing. Files of an
    earlier render that are no longer produced are removed. Returns the paths written.
    """
    written = []
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in sorted(files.items()):
        path = root / rel
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o755 if rel.endswith(".sh") else 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(rel)
    for path in sorted(root.rglob("*")):
        if path.is_file() and str(path.relative_to(root)) not in files:
            path.unlink()
    return written
