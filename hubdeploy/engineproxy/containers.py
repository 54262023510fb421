"""The engine proxy's rules for containers and execs: what the docker backend and dexec
send, in closed shapes (:mod:`hubdeploy.engineproxy.shapes`), and whose objects they touch.

Three kinds of container matter, told apart by labels the hub cannot fake (a create may
carry no ``com.docker.*`` label, and compose's and swarm's are set only by them):

- a notebook: this site's label and a user's (``hubdeploy.user``), made by the hub;
- a probe: this site's label and no user, never started, no network (the swarm backend
  reads an image's /etc/passwd from one);
- the controller: compose's ``slurmctld`` of this site's project. The hub may only exec
  there: a user's own Slurm command as that user, or, as root, one of root's commands of
  :mod:`hubdeploy.contract.slurmcmd` (the read-only listings, a user's association).

Every other container (the stack's own services, the proxy itself, other sites') is out
of reach.
"""

from __future__ import annotations

import io
import re
import tarfile
from urllib.parse import parse_qs, quote

from hubdeploy.contract import slurmcmd
from hubdeploy.contract.identity import NOTEBOOK_UID, USERS_GID, etc_archive, reserved_id
from hubdeploy.contract.labels import COMPOSE_PROJECT, COMPOSE_SERVICE, DOCKER_PREFIX, SWARM_PREFIX
from hubdeploy.contract.layout import (
    LABEL_SITE,
    LABEL_USER,
    NOTEBOOK_USER,
    SLURM_WORKDIR,
    SLURMCTLD_SERVICE,
    project_name,
)
from hubdeploy.engineproxy.objects import check_mount_list, check_network
from hubdeploy.engineproxy.shapes import (
    Refused,
    Shape,
    boolean,
    empty,
    false_only,
    integer,
    list_of,
    map_of,
    null_only,
    nullable,
    one_of,
    string,
)

# Labels only compose, swarm and the engine set: a container the hub makes with one of
# them could pass for a stack service.
RESERVED_LABEL_PREFIXES = (DOCKER_PREFIX,)

_ABS_PATH = r"/[^\x00]{0,4095}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"
_ENV = string(r"[A-Za-z_][A-Za-z0-9_]{0,255}=[^\x00]*", max_len=1 << 20)
_ARG = string(r"[^\x00]*", max_len=1 << 16)
_USER = string(r"\d{1,10}:\d{1,10}", max_len=21)
_GID = string(r"\d{1,10}", max_len=10)
_LABELS = map_of(string(r"[^\x00]{1,255}"), string(r"[^\x00]{0,4096}"), max_items=64)
# The engine's stop signal names (SIGTERM, TERM, 15).
_SIGNAL = string(r"(SIG)?[A-Z0-9]{1,10}|\d{1,2}", max_len=13)

MOUNT = Shape({
    "Target": string(_ABS_PATH), "Source": string(r"[^\x00]{1,4096}"),
    "Type": one_of("bind", "volume", "tmpfs"), "ReadOnly": boolean,
}, required=("Target", "Type"))
HOST_CONFIG = Shape({
    "Memory": integer(0), "NanoCpus": integer(0), "NetworkMode": string(_NAME),
    "CapDrop": list_of(string(r"[A-Za-z_]{1,64}"), 64), "SecurityOpt": list_of(string(r"[a-z:=-]{1,64}"), 8),
    "PidsLimit": integer(1, 1 << 22), "Init": nullable(boolean), "GroupAdd": nullable(list_of(_GID, 64)),
    "Mounts": nullable(list_of(MOUNT, 64)),
}, required=("CapDrop", "SecurityOpt", "PidsLimit"))
ENDPOINT = Shape({"Aliases": nullable(list_of(string(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"), 8))})
NETWORKING = Shape({"EndpointsConfig": map_of(string(_NAME), nullable(ENDPOINT), max_items=1)})
# docker-py's create_container fills every field it knows, most with null.
CREATE = Shape({
    "Hostname": empty, "Domainname": empty, "ExposedPorts": empty, "User": nullable(_USER),
    "Tty": false_only, "OpenStdin": false_only, "StdinOnce": false_only,
    "AttachStdin": false_only, "AttachStdout": nullable(boolean), "AttachStderr": nullable(boolean),
    "Env": nullable(list_of(_ENV, 1024)), "Cmd": nullable(list_of(_ARG, 1024)),
    "Image": string(r"[^\x00\s]{1,512}"), "Volumes": empty, "NetworkDisabled": false_only,
    "Entrypoint": null_only, "WorkingDir": nullable(string(_ABS_PATH)), "HostConfig": HOST_CONFIG,
    "NetworkingConfig": nullable(NETWORKING), "MacAddress": empty, "Labels": _LABELS,
    "StopSignal": nullable(_SIGNAL), "Healthcheck": null_only, "StopTimeout": nullable(integer(0, 3600)),
    "Runtime": null_only,
}, required=("Image", "HostConfig", "Labels"))
EXEC = Shape({
    "AttachStdin": nullable(boolean), "AttachStdout": nullable(boolean), "AttachStderr": nullable(boolean),
    "Tty": false_only, "Cmd": list_of(_ARG, 1024), "User": string(r"[a-z0-9_:]{1,32}"),
    "Env": nullable(list_of(_ENV, 256)), "WorkingDir": nullable(string(_ABS_PATH)),
    "Privileged": false_only, "DetachKeys": empty,
}, required=("Cmd", "User"))
EXEC_START = Shape({"Detach": false_only, "Tty": false_only})
# What the docker backend reads from a created container, and writes into a notebook.
ETC_FILES = ("/etc/passwd", "/etc/group")
ETC_MEMBER_LIMIT = 4 << 20
SECURITY_OPTS = frozenset({"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"})


def check_create(spec: dict, name: str, policy, lookup) -> dict:
    """The create body as it is to be forwarded, or Refused."""
    if not name.startswith(policy.prefix):
        raise Refused("name", f"container name {name!r} does not start with {policy.prefix!r}")
    spec = CREATE(spec)
    labels = spec["Labels"]
    if labels.get(LABEL_SITE) != policy.site:
        raise Refused("labels", f"the container must carry the label {LABEL_SITE}={policy.site}")
    reserved = sorted(k for k in labels if k.startswith(RESERVED_LABEL_PREFIXES))
    if reserved:
        raise Refused("labels", f"labels {reserved} are compose's, swarm's or the engine's")
    check_image(spec["Image"], policy)
    check_user(spec.get("User"), spec["HostConfig"].get("GroupAdd"))
    host = spec["HostConfig"]
    check_confined(host.get("CapDrop"), host.get("SecurityOpt"))
    check_mount_list(host.get("Mounts") or (), policy, lookup)
    networks = sorted(((spec.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}))
    mode = host.get("NetworkMode") or ""
    if LABEL_USER not in labels:
        # A probe: started never (start needs the user label), connected nowhere.
        if mode != "none" or networks or host.get("Mounts"):
            raise Refused("probe", "a container without a user label must have NetworkMode none and no mounts")
        return spec
    if mode in ("", "none", "default"):
        raise Refused("network", f"a notebook must be on one of this site's networks, not {mode or 'the default'!r}")
    for net in {mode, *networks}:
        check_network(net, policy, lookup)
    return spec


def check_image(image: str, policy) -> None:
    if image not in policy.images:
        raise Refused("image", f"image {image!r} is not one of this site's notebook images")


def check_user(user: str | None, groups=None) -> None:
    """A notebook runs as its image's user (the notebook user, never root: the images
    are the site's own) or as a user's account, never with an id the images reserve
    (root, system accounts, the notebook user: contract.identity.RESERVED_IDS) save the
    shared group ``users``: the same rule the identity sources apply."""
    if user:
        uid, gid = (int(x) for x in user.split(":"))
        if why := reserved_id(uid):
            raise Refused("user", f"uid {uid} is reserved ({why})")
        if gid != USERS_GID and (why := reserved_id(gid)):
            raise Refused("user", f"gid {gid} is reserved ({why})")
    for g in groups or ():
        if int(g) != USERS_GID and (why := reserved_id(int(g))):
            raise Refused("user", f"supplementary gid {g} is reserved ({why})")


def check_confined(cap_drop, security_opt) -> None:
    if "ALL" not in (c.upper() for c in cap_drop or ()):
        raise Refused("cap-drop", "HostConfig.CapDrop must drop ALL capabilities")
    opts = set(security_opt or ())
    if not opts or not opts <= SECURITY_OPTS:
        raise Refused("security-opt", "HostConfig.SecurityOpt must be no-new-privileges, and only that")


# -- which container is it ------------------------------------------------------------------


def kind_of(info: dict, policy) -> str:
    """``notebook``, ``probe``, ``controller`` or ``foreign`` (module docstring)."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    mounts = info.get("Mounts") or ()
    if any((m.get("Source") or "").endswith("docker.sock") for m in mounts):
        return "foreign"  # the engine proxy's own container: exec there is the raw engine
    compose = labels.get(COMPOSE_PROJECT)
    if compose is not None:
        if compose == project_name(policy.site) and labels.get(COMPOSE_SERVICE) == SLURMCTLD_SERVICE:
            return "controller"
        return "foreign"
    if labels.get(LABEL_SITE) != policy.site or any(k.startswith(SWARM_PREFIX) for k in labels):
        return "foreign"
    return "notebook" if LABEL_USER in labels else "probe"


# Per-container operations, and the kinds each may touch.
CONTAINER_OPS = {
    ("GET", "json"): {"notebook", "probe"},
    ("POST", "start"): {"notebook"},
    ("POST", "stop"): {"notebook"},
    ("DELETE", ""): {"notebook", "probe"},
    ("GET", "archive"): {"notebook", "probe"},
    ("PUT", "archive"): {"notebook"},
    ("POST", "exec"): {"controller"},
}


def container_op(method: str, ref: str, op: str, query: str, body: bytes, policy, lookup, loads):
    """(rule, target, body) of a per-container request."""
    kinds = CONTAINER_OPS.get((method, op))
    if kinds is None:
        raise Refused("not-allowed", f"{method} /containers/{{id}}/{op} is not on the allow-list")
    info = lookup("container", ref)
    if info is None:
        raise Refused("not-found", f"No such container: {ref}")
    kind = kind_of(info, policy)
    if kind not in kinds:
        raise Refused("foreign-container" if kind == "foreign" else "container-kind",
                      f"container {ref} is not one this site's hub may {method} {op or 'remove'}")
    target = f"/containers/{quote(info['Id'])}" + (f"/{op}" if op else "")
    if op == "archive":
        return f"container-archive-{method.lower()}", target + "?" + _archive_query(query, method), \
            _etc_archive(body) if method == "PUT" else None
    if op == "exec":
        return "container-exec", target, check_exec(loads(body))
    if body.strip():
        raise Refused("bad-request", f"{method} {op or 'remove'} takes no body")
    return f"container-{op or 'remove'}", target + _plain_query(query, method, op), None


def _plain_query(query: str, method: str, op: str) -> str:
    allowed = {("POST", "stop"): {"t"}, ("DELETE", ""): {"force", "v", "link"}}.get((method, op), set())
    params = parse_qs(query, keep_blank_values=True)
    if set(params) - allowed or any(len(v) != 1 or not re.fullmatch(r"[A-Za-z0-9]{0,16}", v[0])
                                    for v in params.values()):
        raise Refused("bad-request", f"query parameters {sorted(params)} of {method} {op or 'remove'}")
    return f"?{query}" if query else ""


def _archive_query(query: str, method: str) -> str:
    params = parse_qs(query, keep_blank_values=True)
    path = params.get("path", [""])
    if set(params) - {"path"} or len(path) != 1:
        raise Refused("bad-request", "an archive request takes one path and nothing else")
    wanted = ("/",) if method == "PUT" else ETC_FILES
    if path[0] not in wanted:
        raise Refused("archive-path", f"archive path {path[0]!r} is not one of {', '.join(wanted)}")
    return "path=" + quote(path[0], safe="")


def _etc_archive(body: bytes) -> bytes:
    """A tar holding exactly etc/passwd and etc/group, rebuilt from its parts: the engine
    reads the tar Python checked, whatever Go's and Python's tar readers would disagree on."""
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
            members = tar.getmembers()
            names = sorted(m.name for m in members)
            if names != ["etc/group", "etc/passwd"] or not all(m.isreg() for m in members):
                raise Refused("archive", "an upload holds etc/passwd and etc/group, as regular files, only")
            files = {}
            for m in members:
                if m.size > ETC_MEMBER_LIMIT:
                    raise Refused("archive", f"{m.name} is larger than {ETC_MEMBER_LIMIT} bytes")
                files[m.name] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError):
        raise Refused("archive", "the upload is not a plain tar") from None
    text = {name: data.decode("utf-8", "surrogateescape") for name, data in files.items()}
    return etc_archive(text["etc/passwd"], text["etc/group"])


def check_exec(spec) -> dict:
    """An exec in the controller: a user's own Slurm command as that user, or one of
    root's commands (the listings, a user's association) with nothing of the caller's
    (no environment)."""
    spec = EXEC(spec if spec is not None else {})
    argv, user = spec["Cmd"], spec["User"]
    if user in ("root", "0", "0:0"):
        if not slurmcmd.is_root_command(argv):
            raise Refused("exec-root", "as root only the Slurm listings and a user's association are allowed")
        if spec.get("Env") or spec.get("WorkingDir") not in (None, "", SLURM_WORKDIR):
            raise Refused("exec-root", f"a root command takes no environment and runs in {SLURM_WORKDIR}")
        return spec
    if user != NOTEBOOK_USER:
        if not re.fullmatch(r"\d{1,10}:\d{1,10}", user):
            raise Refused("exec-user", "an exec runs as a numeric uid:gid")
        # The notebook account too: it owns every job of a site with the shared account
        # (and any job someone submitted as it), and holds nothing of the controller's.
        if int(user.split(":")[0]) != NOTEBOOK_UID:
            check_user(user)
    if not argv or argv[0] not in slurmcmd.USER_COMMANDS:
        raise Refused("exec-command", f"only {', '.join(sorted(slurmcmd.USER_COMMANDS))} run in the controller")
    return spec


def exec_op(method: str, exec_id: str, op: str, body: bytes, policy, lookup, loads):
    """(rule, target, body, hijack) of /exec/{id}/start and /exec/{id}/json."""
    if (method, op) not in (("POST", "start"), ("GET", "json")):
        raise Refused("not-allowed", f"{method} /exec/{{id}}/{op} is not on the allow-list")
    info = lookup("exec", exec_id)
    if info is None:
        raise Refused("not-found", f"No such exec instance: {exec_id}")
    container = lookup("container", info.get("ContainerID") or "")
    if container is None or kind_of(container, policy) != "controller":
        raise Refused("foreign-container", f"exec {exec_id} is not in this site's controller")
    target = f"/exec/{quote(info.get('ID') or exec_id)}/{op}"
    if op == "start":
        return "exec-start", target, EXEC_START(loads(body) if body.strip() else {}), True
    if body.strip():
        raise Refused("bad-request", "GET takes no body")
    return "exec-json", target, None, False
