"""What the hub may ask of the Docker engine: one request in, allow or deny out.

An allow-list, built from the calls the docker and swarm backends (docker SDK) and
:mod:`hubdeploy.hub.dexec` make; any other path or method is refused by rule
``not-allowed``. Every refusal names its rule, so a log line or a 403 says which check
fired. The function is pure except for ``lookup``, which the server answers by inspecting
the named object on the real engine (and a test answers from a dict): a per-object rule
needs to know whose object it is, which the request itself never says.

What is decided is what the engine will read: a JSON body is parsed strictly and checked
against its endpoint's closed shape (:mod:`hubdeploy.engineproxy.shapes`), and
:class:`Allow` carries the checked body, serialised again, for the server to forward in
place of the client's bytes. Objects are the site's by their labels, never by what the
request claims; allowed per-object requests are forwarded with the object's full id in
the path, so a name rebound between the check and the call still reaches the object that
was checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlencode

from hubdeploy.engineproxy import containers, swarmpolicy
from hubdeploy.engineproxy.objects import Lookup, SitePolicy, check_name_and_label, with_site_filter
from hubdeploy.engineproxy.shapes import (
    Refused,
    Shape,
    dumps,
    loads,
    map_of,
    nullable,
    one_of,
    string,
)

__all__ = ["MAX_BODY", "Allow", "Decision", "Deny", "Lookup", "Request", "SitePolicy", "decide"]

MAX_BODY = 64 * 1024 * 1024  # a swarm config or an /etc archive is a few KiB

_VERSION_PREFIX = "/v"

VOLUME_CREATE = Shape({
    "Name": string(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"), "Labels": map_of(string(r"[^\x00]{1,255}"),
                                                                        string(r"[^\x00]{0,4096}"), 64),
    "Driver": nullable(one_of("local")), "DriverOpts": nullable(map_of(string(r"x"), string(r"x"), 0)),
}, required=("Name", "Labels"))


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
    # What to send as the body: the checked value serialised again (never the client's
    # bytes); None for a request without one.
    body: bytes | None = None


@dataclass(frozen=True)
class Deny:
    rule: str
    reason: str
    status: int = 403


Decision = Allow | Deny


def decide(req: Request, policy: SitePolicy, lookup: Lookup) -> Decision:
    """Allow (with the path and body to forward) or Deny (with the rule and a reason)."""
    version, path = _split_version(req.path)
    try:
        rule, target, body, hijack = _route(req.method, path, req.query, req.body, policy, lookup)
    except Refused as exc:
        status = 404 if exc.rule == "not-found" else 400 if exc.rule == "bad-request" else 403
        return Deny(exc.rule, exc.reason, status)
    return Allow(rule, version + target, hijack, None if body is None else
                 body if isinstance(body, bytes) else dumps(body))


def _split_version(path: str) -> tuple[str, str]:
    """``/v1.41/containers/x`` -> (``/v1.41``, ``/containers/x``)."""
    if path.startswith(_VERSION_PREFIX):
        head, sep, rest = path[1:].partition("/")
        number = head[1:]
        major, dot, minor = number.partition(".")
        if sep and dot and major.isdigit() and minor.isdigit() and len(number) <= 8:
            return "/" + head, "/" + rest
    return "", path


def _route(method: str, path: str, query: str, body: bytes, policy: SitePolicy, lookup: Lookup):
    """(rule, target, body to forward, hijack)."""
    parts = [unquote(p) for p in path.split("/") if p]
    if ("%2f" in path.lower() or "%00" in path or any(p in (".", "..") for p in parts)
            or "//" in path or not path.startswith("/")):
        # The engine would clean or decode these into another path than the one checked.
        raise Refused("bad-request", "dot segments, empty segments and escaped slashes in the path are refused")
    if method in ("GET", "HEAD") and parts in (["_ping"], ["version"]) and not body:
        return "engine-info", path + (f"?{query}" if query else ""), None, False
    if parts[:1] == ["containers"]:
        return _containers(method, parts[1:], query, body, policy, lookup)
    if parts[:1] == ["exec"] and len(parts) == 3:
        rule, target, out, hijack = containers.exec_op(method, parts[1], parts[2], body, policy, lookup, loads)
        return rule, target + (f"?{query}" if query else ""), out, hijack
    if parts == ["volumes", "create"] and method == "POST":
        return "volume-create", "/volumes/create", _volume_create(loads(body), policy), False
    if parts[:1] in (["services"], ["tasks"], ["configs"]):
        rule, target, out = swarmpolicy.route(method, parts, query, body, policy, lookup)
        return rule, target, out, False
    raise Refused("not-allowed", f"{method} {path} is not on the engine proxy's allow-list")


def _containers(method, rest, query, body, policy, lookup):
    if rest == ["json"] and method == "GET":
        return "list-site-containers", "/containers/json?" + with_site_filter(query, policy.site), None, False
    if rest == ["create"] and method == "POST":
        params = parse_qs(query, keep_blank_values=True)
        if set(params) - {"name"} or len(params.get("name", [])) != 1:
            raise Refused("bad-request", "a create takes one name and no other parameter")
        name = params["name"][0]
        spec = containers.check_create(loads(body), name, policy, lookup)
        return "create", "/containers/create?" + urlencode({"name": name}), spec, False
    if not rest or len(rest) > 2:
        raise Refused("not-allowed", f"{method} /containers/{'/'.join(rest)} is not on the allow-list")
    rule, target, out = containers.container_op(method, rest[0], "/".join(rest[1:]), query, body,
                                                policy, lookup, loads)
    return rule, target, out, False


def _volume_create(spec, policy: SitePolicy) -> dict:
    spec = VOLUME_CREATE(spec)
    check_name_and_label("volume", spec["Name"], spec["Labels"], policy, name_rule="volume")
    return spec

