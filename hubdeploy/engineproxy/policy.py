"""What the hub may ask of the Docker engine: one request in, allow or deny out.

An allow-list, built from the calls the docker backend (docker SDK) and
:mod:`hubdeploy.hub.dexec` make; any other path or method is refused by rule
``not-allowed``. Every refusal names its rule, so a log line or a 403 says which check
fired. The function is pure except for ``lookup``, which the server answers by inspecting
the named object on the real engine (and a test answers from a dict): a per-object rule
needs to know whose object it is, which the request itself never says.

Objects are the site's by their labels and names, never by what the request claims:
containers by :data:`~hubdeploy.contract.layout.LABEL_SITE`, volumes and networks by the
site's name prefix (``hubdeploy-<site>-``). Allowed per-object requests are forwarded with
the object's full id in the path, so a name rebound between the check and the call still
reaches the object that was checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlencode

from hubdeploy.contract.layout import ENGINE_PROXY_SERVICE, LABEL_SITE, project_name
from hubdeploy.engineproxy import swarmpolicy

# Docker's default capability set: re-adding one of these (after a cap_drop) grants
# nothing a default container lacks. Anything else (SYS_ADMIN, NET_ADMIN, ...) widens
# what a container can do to the host's kernel and is refused.
DEFAULT_CAPS = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})
# security_opt entries a container may carry: only ones that confine it further.
SECURITY_OPTS = frozenset({"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"})
# Per-container operations the backends use: the docker backend's create/start/stop/
# remove/inspect/archive, dexec's exec, and the read-only ones a diagnosis needs.
CONTAINER_OPS = {
    ("GET", "json"), ("GET", "logs"), ("POST", "start"), ("POST", "stop"), ("POST", "kill"),
    ("POST", "wait"), ("POST", "exec"), ("POST", "attach"), ("POST", "resize"),
    ("GET", "archive"), ("HEAD", "archive"), ("PUT", "archive"),
}
# The hijacked container endpoint (exec start is the other): after the engine answers,
# the connection carries the process's stdin and output, so the server relays it both
# ways. Nothing else may be relayed both ways: bytes after a plain request would reach the
# engine as a next request that no rule has seen.
HIJACKED = {"attach"}
MAX_BODY = 64 * 1024 * 1024  # an archive of a container's /etc is a few KiB

_VERSION = re.compile(r"^/v\d+\.\d+(?=/)")
_SAFE_IPC = {"", "private", "none", "shareable"}
_BAD_HOST_KEYS = ("Devices", "DeviceRequests", "DeviceCgroupRules", "VolumesFrom", "Sysctls",
                  "PortBindings", "Links")


@dataclass(frozen=True)
class SitePolicy:
    """Whose engine proxy this is: from the proxy's own arguments, never the request."""

    site: str
    # Host paths the site declared (identity.homes_host, profile volumes): bind mounts
    # of these or of paths below them are the only ones allowed.
    bind_paths: tuple[str, ...] = ()
    # Volume names the site declared (profile volumes), whatever their labels.
    volumes: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        return project_name(self.site) + "-"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query, possibly with the /v1.xx prefix
    query: str = ""
    body: bytes = b""


@dataclass(frozen=True)
class Allow:
    rule: str
    target: str  # path and query to send the engine
    hijack: bool = False


@dataclass(frozen=True)
class Deny:
    rule: str
    reason: str
    status: int = 403


Decision = Allow | Deny
# lookup(kind, ref) -> the engine's inspect document, or None when there is no such object.
Lookup = Callable[[str, str], "dict | None"]


class Refused(Exception):
    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


def decide(req: Request, policy: SitePolicy, lookup: Lookup) -> Decision:
    """Allow (with the path to forward) or Deny (with the rule and a reason) one request."""
    m = _VERSION.match(req.path)
    version, path = (m.group(0), req.path[m.end():]) if m else ("", req.path)
    try:
        rule, target, hijack = _route(req.method, path, req.query, req.body, policy, lookup)
    except Refused as exc:
        status = 404 if exc.rule == "not-found" else 403
        return Deny(exc.rule, exc.reason, status)
    return Allow(rule, version + target, hijack)


def _route(method: str, path: str, query: str, body: bytes, policy: SitePolicy, lookup: Lookup):
    parts = [unquote(p) for p in path.split("/") if p]
    if "%2f" in path.lower() or any(p in (".", "..") for p in parts):
        # The engine would clean or decode these into another path than the one checked.
        raise Refused("bad-request", "dot segments and escaped slashes in the path are refused")
    q = f"?{query}" if query else ""
    if (method in ("GET", "HEAD") and parts in (["_ping"], ["version"])):
        return "engine-info", path + q, False
    if parts[:1] == ["containers"]:
        return _containers(method, parts[1:], query, body, policy, lookup)
    if parts[:1] == ["exec"] and len(parts) == 3:
        return _exec(method, parts[1], parts[2], q, policy, lookup)
    if parts[:1] == ["images"] and method == "GET" and len(parts) >= 3 and parts[-1] == "json":
        return "image-inspect", path + q, False
    if parts[:1] == ["volumes"]:
        return _volumes(method, parts[1:], q, body, policy, lookup)
    if parts[:1] == ["networks"] and method == "GET" and len(parts) == 2:
        net = lookup("network", parts[1])
        if net is None:
            raise Refused("not-found", f"network {parts[1]} not found")
        if not _owned(net, policy):
            raise Refused("foreign-network", f"network {net.get('Name')} is not this site's")
        return "network-inspect", f"/networks/{quote(net['Id'])}{q}", False
    if parts[:1] in (["services"], ["tasks"], ["configs"]):
        return swarmpolicy.route(method, parts, query, body, policy, lookup, refused=Refused,
                                 check_mounts=check_mount_list, check_network=_check_network, json_body=_json_body,
                                 with_site_filter=_with_site_filter, default_caps=DEFAULT_CAPS)
    raise Refused("not-allowed", f"{method} {path} is not on the engine proxy's allow-list")


# -- containers -------------------------------------------------------------------------


def _containers(method, rest, query, body, policy, lookup):
    if rest == ["json"] and method == "GET":
        return "list-site-containers", "/containers/json?" + _with_site_filter(query, policy.site), False
    if rest == ["create"] and method == "POST":
        _check_create(_json_body(body), parse_qs(query).get("name", [""])[0], policy, lookup)
        return "create", "/containers/create" + (f"?{query}" if query else ""), False
    if not rest:
        raise Refused("not-allowed", f"{method} /containers is not on the allow-list")
    ref, op = rest[0], "/".join(rest[1:])
    if method == "DELETE" and not op:
        op_ok = True
    else:
        op_ok = (method, op) in CONTAINER_OPS
    if not op_ok:
        raise Refused("not-allowed", f"{method} /containers/{{id}}/{op} is not on the allow-list")
    cid = _site_container(ref, policy, lookup)
    if op == "exec":
        spec = _json_body(body)
        if spec.get("Privileged"):
            raise Refused("privileged-exec", "exec with Privileged is refused")
    q = f"?{query}" if query else ""
    return f"container-{op or 'remove'}", f"/containers/{cid}" + (f"/{op}" if op else "") + q, op in HIJACKED


def _site_container(ref: str, policy: SitePolicy, lookup: Lookup) -> str:
    """The full id of container ``ref`` when it is this site's and not the proxy itself."""
    info = lookup("container", ref)
    if info is None:
        raise Refused("not-found", f"No such container: {ref}")
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL_SITE) != policy.site:
        raise Refused("foreign-container", f"container {ref} does not carry {LABEL_SITE}={policy.site}")
    if (labels.get("com.docker.compose.service") == ENGINE_PROXY_SERVICE
            or any((mnt.get("Source") or "").endswith("docker.sock") for mnt in info.get("Mounts") or ())):
        # The container that holds the socket: exec or archive there is the raw engine.
        raise Refused("engine-holder", f"container {ref} holds the Docker socket")
    return quote(info["Id"])


def _exec(method, exec_id, op, q, policy, lookup):
    if (method, op) not in (("POST", "start"), ("GET", "json"), ("POST", "resize")):
        raise Refused("not-allowed", f"{method} /exec/{{id}}/{op} is not on the allow-list")
    info = lookup("exec", exec_id)
    if info is None:
        raise Refused("not-found", f"No such exec instance: {exec_id}")
    _site_container(info.get("ContainerID", ""), policy, lookup)
    return f"exec-{op}", f"/exec/{quote(info.get('ID') or exec_id)}/{op}{q}", op == "start"


def _with_site_filter(query: str, site: str) -> str:
    """The listing's query with the site's label added to its filters: other sites'
    containers are never listed, whatever the hub asked for."""
    params = parse_qs(query, keep_blank_values=True)
    try:
        filters = json.loads(params.get("filters", ["{}"])[0] or "{}")
    except ValueError:
        raise Refused("bad-request", "filters is not JSON") from None
    if not isinstance(filters, dict):
        raise Refused("bad-request", "filters is not a JSON object")
    labels = filters.get("label") or []
    if isinstance(labels, dict):  # the engine's older form: {"k=v": true}
        labels = [k for k, v in labels.items() if v]
    filters["label"] = [*labels, f"{LABEL_SITE}={site}"]
    params["filters"] = [json.dumps(filters, sort_keys=True)]
    return urlencode(params, doseq=True)


def _json_body(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused("bad-request", "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise Refused("bad-request", "the request body is not a JSON object")
    return data


def _check_create(spec: dict, name: str, policy: SitePolicy, lookup: Lookup) -> None:
    """Refuse a container that could reach beyond the site: privileges, host namespaces,
    devices, unconfined profiles, foreign mounts and networks, missing site marks."""
    if not name.startswith(policy.prefix):
        raise Refused("name", f"container name {name!r} does not start with {policy.prefix!r}")
    labels = spec.get("Labels") or {}
    if labels.get(LABEL_SITE) != policy.site:
        raise Refused("labels", f"the container must carry the label {LABEL_SITE}={policy.site}")
    host = spec.get("HostConfig") or {}
    if host.get("Privileged"):
        raise Refused("privileged", "HostConfig.Privileged is refused")
    extra = sorted(c.upper().removeprefix("CAP_") for c in host.get("CapAdd") or ()
                   if c.upper().removeprefix("CAP_") not in DEFAULT_CAPS)
    if extra:
        raise Refused("cap-add", f"HostConfig.CapAdd {extra} is beyond Docker's default set")
    _check_mounts(spec, host, policy, lookup)
    _check_namespaces(host, policy, lookup)
    for key in _BAD_HOST_KEYS:
        if host.get(key):
            raise Refused(key.lower(), f"HostConfig.{key} is refused")
    if host.get("PublishAllPorts"):
        raise Refused("portbindings", "HostConfig.PublishAllPorts is refused")
    for key in ("CgroupParent", "Runtime"):
        if host.get(key):
            raise Refused(key.lower(), f"HostConfig.{key} is refused")
    for key in ("MaskedPaths", "ReadonlyPaths"):
        if host.get(key) is not None:
            raise Refused("unmasked-paths", f"HostConfig.{key} is refused (it can unmask /proc)")
    bad_opts = [o for o in host.get("SecurityOpt") or () if o not in SECURITY_OPTS]
    if bad_opts:
        raise Refused("security-opt", f"HostConfig.SecurityOpt {bad_opts} is refused")


def _check_namespaces(host: dict, policy: SitePolicy, lookup: Lookup) -> None:
    for key in ("PidMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        value = host.get(key) or ""
        if value not in ("", "private"):
            raise Refused("host-namespace", f"HostConfig.{key}={value!r} is refused")
    ipc = host.get("IpcMode") or ""
    if ipc not in _SAFE_IPC:
        raise Refused("host-namespace", f"HostConfig.IpcMode={ipc!r} is refused")
    mode = host.get("NetworkMode") or ""
    if mode != "none":
        _check_network(mode, policy, lookup)


def _check_mounts(spec: dict, host: dict, policy: SitePolicy, lookup: Lookup) -> None:
    for bind in host.get("Binds") or ():
        source = bind.split(":", 1)[0]
        _check_source(source, "bind" if source.startswith("/") else "volume", policy, lookup)
    check_mount_list(host.get("Mounts") or (), policy, lookup)
    # Anonymous volumes (Config.Volumes) hold nothing of the host's: allowed.
    endpoints = (spec.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    for net in sorted(endpoints):
        _check_network(net, policy, lookup)


def check_mount_list(mounts, policy: SitePolicy, lookup: Lookup) -> None:
    """Mounts in the Engine API's shape (a container's HostConfig.Mounts, a service's
    ContainerSpec.Mounts): binds of declared host paths and the site's volumes only."""
    for mount in mounts:
        kind = mount.get("Type") or "volume"
        if kind == "tmpfs":
            continue
        if kind not in ("bind", "volume"):
            raise Refused("mount", f"a {kind} mount is refused")
        if kind == "volume" and (mount.get("VolumeOptions") or {}).get("DriverConfig"):
            # A local volume with driver options is a bind mount of any host path.
            raise Refused("volume", "a mount's VolumeOptions.DriverConfig is refused")
        _check_source(mount.get("Source") or "", kind, policy, lookup)


def _owned(info: dict, policy: SitePolicy) -> bool:
    """A volume or network is the site's by its labels: compose's project or swarm's
    stack namespace (the stack's own) or the site label (what the backends create). A
    name prefix alone is not enough: site ``a``'s prefix ``hubdeploy-a-`` is also the
    head of site ``a-b``'s names."""
    labels = info.get("Labels") or {}
    project = project_name(policy.site)
    return (labels.get(LABEL_SITE) == policy.site
            or labels.get("com.docker.compose.project") == project
            or labels.get("com.docker.stack.namespace") == project)


def _check_network(name: str, policy: SitePolicy, lookup: Lookup) -> None:
    if not name.startswith(policy.prefix):
        raise Refused("network", f"network {name!r} is not one of this site's networks")
    info = lookup("network", name)
    if info is not None and not _owned(info, policy):
        raise Refused("network", f"network {name!r} is not labelled as this site's")


def _check_source(source: str, kind: str, policy: SitePolicy, lookup: Lookup) -> None:
    if kind == "bind":
        norm = "/" + "/".join(p for p in source.split("/") if p and p != ".")
        if ".." in norm.split("/") or not any(
                norm == p.rstrip("/") or norm.startswith(p.rstrip("/") + "/") for p in policy.bind_paths):
            raise Refused("bind", f"bind mount of host path {source} is outside the site's declared paths")
        return
    if source in policy.volumes:
        return  # declared by the site (profile volumes; the engine makes them unlabelled)
    if not source.startswith(policy.prefix):
        raise Refused("volume", f"volume {source!r} is not this site's")
    info = lookup("volume", source)
    # An absent one is made new and empty by the create; an existing one must be ours.
    if info is not None and not _owned(info, policy):
        raise Refused("volume", f"volume {source!r} is not labelled as this site's")


# -- volumes ------------------------------------------------------------------------------


def _volumes(method, rest, q, body, policy, lookup):
    if method == "GET" and len(rest) == 1:
        _check_source(rest[0], "volume", policy, lookup)
        return "volume-inspect", f"/volumes/{quote(rest[0])}{q}", False
    if method == "POST" and rest == ["create"]:
        spec = _json_body(body)
        name = spec.get("Name") or ""
        if not name.startswith(policy.prefix):
            raise Refused("volume", f"volume name {name!r} does not start with {policy.prefix!r}")
        if spec.get("Driver") not in (None, "", "local") or spec.get("DriverOpts"):
            raise Refused("volume", "a volume driver or driver options (a bind in disguise) is refused")
        if (spec.get("Labels") or {}).get(LABEL_SITE) != policy.site:
            raise Refused("labels", f"the volume must carry the label {LABEL_SITE}={policy.site}")
        return "volume-create", "/volumes/create" + q, False
    raise Refused("not-allowed", f"{method} /volumes/{'/'.join(rest)} is not on the allow-list")

