"""Site -> the files of the stack, one module per output.

- :mod:`~hubdeploy.render.compose`: ``compose.yaml``;
- :mod:`~hubdeploy.render.swarmstack`: ``stack.yaml`` (orchestrator swarm: the same
  services for ``docker stack deploy``);
- :mod:`~hubdeploy.render.hubdata`: ``hub/hub.json`` (:mod:`hubdeploy.contract.hubjson`);
- :mod:`~hubdeploy.render.slurm`: ``slurm/slurm.conf``, ``job_submit.lua``, ``accounting.json``, ``slurmdbd.conf``;
- :mod:`~hubdeploy.render.ssh`: the hub's ssh command (part of hub.json);
- :mod:`~hubdeploy.render.files`: YAML bytes, hashes, atomic writes.

:func:`read_inputs` does all the reading (hubdeploy's static files, the site's TLS
certificate and known_hosts); :func:`render_files` is a pure function of the site, the
image refs and those inputs, so the same site renders byte-identical output (golden tests)
and ``up`` on an unchanged site changes nothing. Changes reach containers through two
hashes: image refs carry the hash of their build context, and each service carries a
config-hash label over the files mounted into it, so compose recreates exactly the
services whose inputs changed (compose itself does not look inside bind-mounted files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hubdeploy import resources
from hubdeploy.contract import hubjson
from hubdeploy.contract.layout import HUB_SERVICE
from hubdeploy.render import prometheus, seccomp, slurm, swarmstack
from hubdeploy.render.compose import Mounts, compose_data
from hubdeploy.render.files import dump_yaml, sha, write_files
from hubdeploy.render.hubdata import hub_data
from hubdeploy.site.model import Site
from hubdeploy.state import selfsigned
from hubdeploy.state.secrets import ssh_key_generated


@dataclass(frozen=True)
class Inputs:
    """Everything rendering reads from disk, read once by :func:`read_inputs`."""

    hub_config: bytes  # config/jupyterhub_config.py, the same for every site
    proxy_entrypoint: bytes  # compose/proxy-entrypoint.sh
    prometheus_entrypoint: bytes = b""  # compose/prometheus-entrypoint.sh
    tls_paths: dict[str, str] | None = None  # 'cert'/'key' -> absolute host paths
    tls_cert: bytes = b""
    known_hosts: bytes | None = None  # slurm.submit.ssh.known_hosts
    ssh_identity: str | None = None  # the site's own SSH key's absolute path
    # identity's files as absolute host paths (see compose.Mounts.identity_files).
    identity_files: dict[str, str] | None = None
    # The engine's default seccomp profile, the nodes' base when they run Charliecloud.
    seccomp_base: bytes = b""


def state_dir(site_file: Path) -> Path:
    """The state directory beside a site file: secrets, rendered files, build contexts."""
    return site_file.resolve().parent / ".hubdeploy"


def read_inputs(site: Site, site_dir: Path) -> Inputs:
    """Read what :func:`render_files` needs from hubdeploy's files and the site's."""
    tls_paths, tls_cert = tls_files(site, site_dir)
    known_hosts, identity = None, None
    ssh = site.submit_ssh
    if ssh is not None:
        known_hosts = (site_dir / ssh.known_hosts).read_bytes()
        if not ssh_key_generated(site):
            identity = str((site_dir / ssh.identity_file).resolve())
    return Inputs(
        identity_files=_identity_files(site, site_dir),
        hub_config=resources.read_bytes("config/jupyterhub_config.py"),
        # Static: ports are fixed inside the containers; nothing from the site goes into it.
        proxy_entrypoint=resources.read_bytes("compose/proxy-entrypoint.sh"),
        prometheus_entrypoint=resources.read_bytes("compose/prometheus-entrypoint.sh"),
        tls_paths=tls_paths,
        tls_cert=tls_cert,
        known_hosts=known_hosts,
        ssh_identity=identity,
        seccomp_base=resources.read_bytes(seccomp.BASE_FILE) if site.staged_profiles else b"",
    )


def _identity_files(site: Site, site_dir: Path) -> dict[str, str] | None:
    """Host paths the hub mounts for its identity source: a file source's directories
    (an edit by rename is seen there), the LDAP CA bundle and bind password file."""
    ident = site.identity
    out: dict[str, str] = {}
    if ident.file is not None:
        out["passwd_dir"] = str((site_dir / ident.file.passwd).resolve().parent)
        if ident.file.group:
            out["group_dir"] = str((site_dir / ident.file.group).resolve().parent)
    if ident.ldap is not None:
        out["ldap_password"] = str((site_dir / ident.ldap.bind_password_file).resolve())
        if ident.ldap.ca_file:
            out["ldap_ca"] = str((site_dir / ident.ldap.ca_file).resolve())
    return out or None


def tls_files(site: Site, site_dir: Path) -> tuple[dict[str, str] | None, bytes]:
    """The proxy's certificate and key as absolute host paths ('cert'/'key'; None without
    TLS), and the certificate's bytes for the proxy's config hash.

    A self-signed pair lives with the secrets and does not exist before the first ``up``
    makes it; it is hashed as empty then, and ``stack.write`` renders again once it
    exists, so the written files always hash the certificate the proxy mounts.
    """
    if site.tls is None:
        return None, b""
    if site.tls.self_signed:
        cert, key = selfsigned.paths(state_dir(site_dir / "site.yaml") / "secrets")
        cert_bytes = cert.read_bytes() if cert.is_file() else b""
    else:
        cert, key = (site_dir / site.tls.cert).resolve(), (site_dir / site.tls.key).resolve()
        cert_bytes = cert.read_bytes()
    return {"cert": str(cert), "key": str(key)}, cert_bytes


def render_files(site: Site, refs: dict[str, str], inputs: Inputs,
                 owner: dict[str, str] | None = None, pinned: dict[str, str] | None = None,
                 swarm_node: str = "") -> dict[str, bytes]:
    """All files of ``.hubdeploy/rendered/``, relative path -> bytes. Pure and deterministic.

    ``owner``: the labels naming the site directory that owns the stack
    (:mod:`hubdeploy.state.ownership`), put on the hub: every stack has one, and a label
    change recreates only it (a hub restart keeps compute jobs; a node's would not).
    ``pinned``: the registry references by digest of the images swarm nodes pull
    (:func:`hubdeploy.render.hubdata.hub_data`). ``swarm_node``: the manager a swarm
    site's services run on (:mod:`hubdeploy.render.swarmstack`)."""
    hub_files = {"hub/jupyterhub_config.py": inputs.hub_config,
                 "hub/hub.json": hubjson.dumps(hub_data(site, refs, pinned))}
    if inputs.known_hosts is not None:
        hub_files["hub/ssh_known_hosts"] = inputs.known_hosts
    slurm_files = slurm.files(site) if site.slurm is not None and site.slurm.cluster is not None else {}
    if site.staged_profiles:
        slurm_files[seccomp.NODE_PROFILE_FILE] = seccomp.node_profile(inputs.seccomp_base)
    prom_files = {}
    if prometheus.enabled(site):
        prom_files = {prometheus.CONFIG_FILE: dump_yaml(prometheus.scrape_config(site)),
                      prometheus.ENTRYPOINT_FILE: inputs.prometheus_entrypoint}
    hashes = _config_hashes(hub_files, slurm_files, inputs)
    if prom_files:
        hashes["prometheus"] = sha(*(prom_files[k] for k in sorted(prom_files)))
    mounts = Mounts(hashes, inputs.tls_paths, inputs.ssh_identity, inputs.identity_files)
    data = compose_data(site, refs, mounts, pinned)
    data["services"][HUB_SERVICE]["labels"].update(owner or {})
    files = {
        **slurm_files,
        **prom_files,
        "compose.yaml": dump_yaml(data),
        **hub_files,
        "proxy/entrypoint.sh": inputs.proxy_entrypoint,
    }
    if site.orchestrator == "swarm":
        files["stack.yaml"] = dump_yaml(swarmstack.stack_data(site, data, files, swarm_node))
    return files


def _config_hashes(hub_files: dict[str, bytes], slurm_files: dict[str, bytes], inputs: Inputs) -> dict[str, str]:
    identity = [inputs.ssh_identity.encode()] if inputs.ssh_identity else []
    # Paths only: a file source's edits reach the hub without recreating it.
    identity += [f"{k}={v}".encode() for k, v in sorted((inputs.identity_files or {}).items())]
    tls = [inputs.tls_cert, inputs.tls_paths["key"].encode()] if inputs.tls_paths else []
    hashes = {
        # A changed key file recreates the hub only through its path: its bytes stay out.
        "hub": sha(*hub_files.values(), *identity),
        # The certificate's bytes, the key's path: a renewed cert must recreate the proxy,
        # and the key's bytes never need to enter anything we print.
        "proxy": sha(inputs.proxy_entrypoint, *tls),
    }
    if slurm_files:
        # Each service of the cluster is recreated when what it reads changes, and only
        # then: the controller reads job_submit.lua and sets the limits when it starts;
        # the nodes, where the notebooks run, read slurm.conf alone.
        # A node's seccomp profile is among what it reads, when it has one.
        node_files = (*slurm.NODE_FILES, *((seccomp.NODE_PROFILE_FILE,) if seccomp.NODE_PROFILE_FILE in slurm_files
                                           else ()))
        for service, names in (("slurm", node_files), ("slurmctld", slurm.CONTROLLER_FILES),
                               ("slurmdbd", slurm.DBD_FILES)):
            hashes[service] = sha(*(slurm_files[k] for k in names))
    return hashes


def render(site: Site, site_dir: Path, refs: dict[str, str], owner: dict[str, str] | None = None,
           pinned: dict[str, str] | None = None, swarm_node: str = "") -> dict[str, bytes]:
    """:func:`read_inputs` then :func:`render_files`: the files a site renders today."""
    return render_files(site, refs, read_inputs(site, site_dir), owner, pinned, swarm_node)


__all__ = ["Inputs", "compose_data", "hub_data", "read_inputs", "render", "render_files", "state_dir",
           "write_files"]
