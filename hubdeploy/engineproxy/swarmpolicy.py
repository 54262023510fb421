"""The engine proxy's rules for the swarm API the swarm backend uses (orchestrator swarm).

The same ideas as for containers: a service or config is the site's by its label and
name prefix; a new service has the closed shape of what the backend sends (one replica
of a site notebook image as a user's account, no capability, mounts only of the site's
declared paths and volumes, only the site's networks and configs, no published port, no
secret); listings get the site's label filter.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlencode

from hubdeploy.contract.labels import DOCKER_PREFIX
from hubdeploy.contract.layout import LABEL_SITE, LABEL_USER
from hubdeploy.engineproxy import containers
from hubdeploy.engineproxy.objects import (
    check_mount_list,
    check_name_and_label,
    check_network,
    with_site_filter,
)
from hubdeploy.engineproxy.shapes import (
    Refused,
    Shape,
    boolean,
    empty,
    integer,
    list_of,
    loads,
    map_of,
    nullable,
    one_of,
    string,
)

_NAME = string(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_LABELS = map_of(string(r"[^\x00]{1,255}"), string(r"[^\x00]{0,4096}"), 64)
_ARGS = nullable(list_of(string(r"[^\x00]*", max_len=1 << 16), 1024))
_CONSTRAINT = string(r"[A-Za-z0-9_.-]+ ?(==|!=) ?[A-Za-z0-9_.:/-]+", max_len=512)
_ID = string(r"[A-Za-z0-9]{1,64}")

CONFIG_FILE = Shape({"Name": string(r"/etc/(passwd|group)"), "UID": one_of("0"), "GID": one_of("0"),
                     "Mode": one_of(0o444)}, required=("Name",))
CONFIG_REF = Shape({"ConfigName": _NAME, "ConfigID": _ID, "File": CONFIG_FILE}, required=("ConfigID", "File"))
CONTAINER_SPEC = Shape({
    "Image": string(r"[^\x00\s]{1,512}"), "Command": _ARGS, "Args": _ARGS,
    "Env": nullable(list_of(string(r"[A-Za-z_][A-Za-z0-9_]{0,255}=[^\x00]*", max_len=1 << 20), 1024)),
    "Dir": nullable(string(r"/[^\x00]{0,4095}")), "User": nullable(string(r"\d{1,10}:\d{1,10}")),
    "Groups": nullable(list_of(string(r"\d{1,10}"), 64)), "StopGracePeriod": nullable(integer(0, 3600 * 10**9)),
    "Labels": _LABELS, "Mounts": nullable(list_of(containers.MOUNT, 64)),
    "Configs": nullable(list_of(CONFIG_REF, 4)), "Init": nullable(boolean),
    "CapabilityDrop": list_of(string(r"[A-Za-z_]{1,64}"), 64),
}, required=("Image", "Labels", "CapabilityDrop"))
_CPU_MEM = {"NanoCPUs": integer(0), "MemoryBytes": integer(0)}
RESOURCES = Shape({"Limits": nullable(Shape({**_CPU_MEM, "Pids": integer(1, 1 << 22)}, required=("Pids",))),
                   "Reservations": nullable(Shape(_CPU_MEM))}, required=("Limits",))
RESTART = Shape({"Condition": one_of("none"), "Delay": integer(0), "MaxAttempts": integer(0),
                 "Window": integer(0)}, required=("Condition",))
PLACEMENT = Shape({
    "Constraints": nullable(list_of(_CONSTRAINT, 32)),
    "Preferences": nullable(list_of(Shape({"Spread": Shape({"SpreadDescriptor": string(
        r"node\.(labels\.)?[A-Za-z0-9_.-]+")}, required=("SpreadDescriptor",))}, required=("Spread",)), 8)),
})
NETWORK_ATTACHMENT = Shape({"Target": _NAME, "Aliases": nullable(list_of(_NAME, 8)), "DriverOpts": empty},
                           required=("Target",))
TASK_TEMPLATE = Shape({
    "ContainerSpec": CONTAINER_SPEC, "Resources": RESOURCES, "RestartPolicy": RESTART,
    "Placement": nullable(PLACEMENT), "Networks": list_of(NETWORK_ATTACHMENT, 1),
}, required=("ContainerSpec", "Resources", "RestartPolicy", "Networks"))
SERVICE = Shape({
    "Name": _NAME, "Labels": _LABELS, "TaskTemplate": TASK_TEMPLATE,
    "Mode": Shape({"Replicated": Shape({"Replicas": one_of(1)}, required=("Replicas",))}, required=("Replicated",)),
    "Networks": empty, "EndpointSpec": Shape({"Mode": one_of("dnsrr")}, required=("Mode",)),
}, required=("Name", "Labels", "TaskTemplate", "Mode", "EndpointSpec"))
CONFIG_CREATE = Shape({"Name": _NAME, "Labels": _LABELS, "Data": string(r"[A-Za-z0-9+/=]*", max_len=8 << 20)},
                      required=("Name", "Labels", "Data"))


def route(method, parts, query, body, policy, lookup):
    """(rule, target, body to forward) for a /services, /tasks or /configs request."""
    kind, rest = parts[0], parts[1:]
    if kind in ("services", "configs") and method == "GET" and not rest:
        return f"list-site-{kind}", f"/{kind}?" + with_site_filter(query, policy.site), None
    if method == "POST" and rest == ["create"] and kind in ("services", "configs"):
        if query:
            raise Refused("bad-request", f"a {kind[:-1]} create takes no parameters")
        check = _check_service if kind == "services" else _check_config
        return f"{kind[:-1]}-create", f"/{kind}/create", check(loads(body), policy, lookup)
    if kind in ("services", "configs") and len(rest) == 1 and method in ("GET", "DELETE"):
        if body.strip() or (query and not (method == "GET" and query in ("insertDefaults=false",))):
            raise Refused("bad-request", f"{method} {kind[:-1]} takes no body and no parameters")
        full = _site_object(kind[:-1], rest[0], policy, lookup)
        return f"{kind[:-1]}-{'inspect' if method == 'GET' else 'remove'}", \
            f"/{kind}/{quote(full)}" + (f"?{query}" if query else ""), None
    if kind == "tasks" and method == "GET" and not rest:
        return "list-site-tasks", "/tasks?" + _tasks_query(query, policy, lookup), None
    raise Refused("not-allowed", f"{method} /{'/'.join(parts)} is not on the engine proxy's allow-list")


def _site_object(kind: str, ref: str, policy, lookup) -> str:
    info = lookup(kind, ref)
    if info is None:
        raise Refused("not-found", f"{kind} {ref} not found")
    labels = (info.get("Spec") or {}).get("Labels") or {}
    if labels.get(LABEL_SITE) != policy.site:
        raise Refused(f"foreign-{kind}", f"{kind} {ref} does not carry {LABEL_SITE}={policy.site}")
    return info["ID"]


def _tasks_query(query: str, policy, lookup) -> str:
    """Tasks only of the site's services: the filter must name them."""
    params = parse_qs(query, keep_blank_values=True)
    try:
        filters = json.loads(params.get("filters", ["{}"])[0] or "{}")
    except ValueError:
        raise Refused("bad-request", "filters is not JSON") from None
    services = filters.get("service") if isinstance(filters, dict) else None
    if isinstance(services, dict):
        services = [k for k, v in services.items() if v]
    if not services or set(filters) - {"service", "desired-state"}:
        raise Refused("not-allowed", "a task listing must name this site's services (filters.service), only")
    filters["service"] = [_site_object("service", s, policy, lookup) for s in services]
    params["filters"] = [json.dumps(filters, sort_keys=True)]
    return urlencode(params, doseq=True)


def _check_config(spec, policy, lookup) -> dict:
    spec = CONFIG_CREATE(spec)
    check_name_and_label("config", spec["Name"], spec["Labels"], policy)
    return spec


def _check_service(spec, policy, lookup) -> dict:
    spec = SERVICE(spec)
    if not spec["Name"].startswith(policy.prefix):
        raise Refused("name", f"service name {spec['Name']!r} does not start with {policy.prefix!r}")
    cs = spec["TaskTemplate"]["ContainerSpec"]
    for labels, what in ((spec["Labels"], "service"), (cs["Labels"], "task's containers")):
        if labels.get(LABEL_SITE) != policy.site or LABEL_USER not in labels:
            raise Refused("labels", f"the {what} must carry {LABEL_SITE}={policy.site} and a user")
        if any(k.startswith(containers.RESERVED_LABEL_PREFIXES) for k in labels):
            raise Refused("labels", f"the {what} may carry no {DOCKER_PREFIX}* label")
    containers.check_image(cs["Image"], policy)
    containers.check_user(cs.get("User"), cs.get("Groups"))
    if "ALL" not in (c.upper() for c in cs["CapabilityDrop"]):
        raise Refused("cap-drop", "ContainerSpec.CapabilityDrop must drop ALL capabilities")
    check_mount_list(cs.get("Mounts") or (), policy, lookup)
    for ref in cs.get("Configs") or ():
        _site_object("config", ref["ConfigID"], policy, lookup)
    for net in spec["TaskTemplate"]["Networks"]:
        info = lookup("network", net["Target"])
        check_network(info.get("Name") if info else net["Target"], policy, lookup)
    return spec
