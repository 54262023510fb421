"""The engine proxy's rules for the swarm API the swarm backend uses (orchestrator swarm).

The same ideas as for containers: a service or config is the site's by its label and
name prefix; a new service is checked like a container create (no added capability,
mounts only of the site's declared paths and volumes, only the site's networks and
configs, no published port, no secrets); listings get the site's label filter.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlencode

from hubdeploy.contract.layout import LABEL_SITE


def route(method, parts, query, body, policy, lookup, *, refused, check_mounts, check_network, json_body,
          with_site_filter, default_caps):
    """(rule, target, hijack) for a /services, /tasks or /configs request; ``refused``
    builds the exception to raise (policy.Refused)."""
    q = f"?{query}" if query else ""
    kind, rest = parts[0], parts[1:]
    if kind in ("services", "configs") and method == "GET" and not rest:
        return f"list-site-{kind}", f"/{kind}?" + with_site_filter(query, policy.site), False
    if kind == "services" and method == "POST" and rest == ["create"]:
        _check_service(json_body(body), policy, lookup, refused, check_mounts, check_network, default_caps)
        return "service-create", "/services/create" + q, False
    if kind == "configs" and method == "POST" and rest == ["create"]:
        spec = json_body(body)
        if not str(spec.get("Name") or "").startswith(policy.prefix):
            raise refused("name", f"config name {spec.get('Name')!r} does not start with {policy.prefix!r}")
        if (spec.get("Labels") or {}).get(LABEL_SITE) != policy.site:
            raise refused("labels", f"the config must carry the label {LABEL_SITE}={policy.site}")
        return "config-create", "/configs/create" + q, False
    if kind in ("services", "configs") and len(rest) == 1 and method in ("GET", "DELETE"):
        full = _site_object(kind[:-1], rest[0], policy, lookup, refused)
        return f"{kind[:-1]}-{'inspect' if method == 'GET' else 'remove'}", f"/{kind}/{quote(full)}{q}", False
    if kind == "tasks" and method == "GET" and not rest:
        return "list-site-tasks", "/tasks?" + _tasks_query(query, policy, lookup, refused), False
    raise refused("not-allowed", f"{method} /{'/'.join(parts)} is not on the engine proxy's allow-list")


def _site_object(kind: str, ref: str, policy, lookup, refused) -> str:
    info = lookup(kind, ref)
    if info is None:
        raise refused("not-found", f"{kind} {ref} not found")
    labels = (info.get("Spec") or {}).get("Labels") or {}
    if labels.get(LABEL_SITE) != policy.site:
        raise refused(f"foreign-{kind}", f"{kind} {ref} does not carry {LABEL_SITE}={policy.site}")
    return info["ID"]


def _tasks_query(query: str, policy, lookup, refused) -> str:
    """Tasks only of the site's services: the filter must name them."""
    params = parse_qs(query, keep_blank_values=True)
    try:
        filters = json.loads(params.get("filters", ["{}"])[0] or "{}")
    except ValueError:
        raise refused("bad-request", "filters is not JSON") from None
    services = filters.get("service") if isinstance(filters, dict) else None
    if isinstance(services, dict):
        services = [k for k, v in services.items() if v]
    if not services:
        raise refused("not-allowed", "a task listing must name this site's services (filters.service)")
    filters["service"] = [_site_object("service", s, policy, lookup, refused) for s in services]
    params["filters"] = [json.dumps(filters, sort_keys=True)]
    return urlencode(params, doseq=True)


def _check_service(spec: dict, policy, lookup, refused, check_mounts, check_network, default_caps) -> None:
    name = str(spec.get("Name") or "")
    if not name.startswith(policy.prefix):
        raise refused("name", f"service name {name!r} does not start with {policy.prefix!r}")
    if (spec.get("Labels") or {}).get(LABEL_SITE) != policy.site:
        raise refused("labels", f"the service must carry the label {LABEL_SITE}={policy.site}")
    task = spec.get("TaskTemplate") or {}
    if task.get("PluginSpec") or task.get("NetworkAttachmentSpec"):
        raise refused("runtime", "only container tasks are allowed")
    cs = task.get("ContainerSpec") or {}
    if (cs.get("Labels") or {}).get(LABEL_SITE) != policy.site:
        raise refused("labels", f"the task's containers must carry the label {LABEL_SITE}={policy.site}")
    if cs.get("Privileges"):
        raise refused("privileges", "ContainerSpec.Privileges is refused")
    extra = sorted(c.upper().removeprefix("CAP_") for c in cs.get("CapabilityAdd") or ()
                   if c.upper().removeprefix("CAP_") not in default_caps)
    if extra:
        raise refused("cap-add", f"ContainerSpec.CapabilityAdd {extra} is beyond Docker's default set")
    for key in ("Sysctls", "Secrets"):
        if cs.get(key):
            raise refused(key.lower(), f"ContainerSpec.{key} is refused")
    check_mounts(cs.get("Mounts") or (), policy, lookup)
    for ref in cs.get("Configs") or ():
        _site_object("config", ref.get("ConfigID") or "", policy, lookup, refused)
    nets = list(task.get("Networks") or ()) + list(spec.get("Networks") or ())
    for net in nets:
        target = net.get("Target") or ""
        info = lookup("network", target)
        check_network(info.get("Name") if info else target, policy, lookup)
    if (spec.get("EndpointSpec") or {}).get("Ports"):
        raise refused("portbindings", "published ports are refused")
