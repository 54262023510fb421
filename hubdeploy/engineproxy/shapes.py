"""Request bodies as the engine will read them: strict JSON, and closed shapes.

The engine decodes JSON with Go's ``encoding/json``, which differs from Python's where a
filter can be talked past: it matches field names regardless of case (``privileged``,
``Mountſ`` and ``MOUNTS`` all fill ``Mounts``), and a repeated key is merged into, or
overrides, the first. So the proxy never decides on one reading and forwards another:

- :func:`loads` refuses a repeated key at any level, and numbers Go cannot hold
  (``NaN``, ``Infinity``);
- a :class:`Shape` names each endpoint's fields exactly (an allow-list: what the
  backends send, nothing else), refuses any other key, and says so plainly when a key
  matches a field only with its case ignored;
- the server forwards :func:`dumps` of the checked value, never the client's bytes.

Every refusal is a :class:`Refused` carrying its rule and where in the body it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MAX_ITEMS = 4096


class Refused(Exception):
    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Refused("duplicate-key", f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise Refused("bad-request", f"{name} is not a JSON number the engine reads")


def loads(body: bytes) -> Any:
    """The JSON value of ``body``; Refused for anything two decoders could read apart."""
    if not body.strip():
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("bad-request", "the request body is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except Refused:
        raise
    except (ValueError, RecursionError):
        raise Refused("bad-request", "the request body is not JSON") from None


def dumps(value: Any) -> bytes:
    """What is forwarded: the checked value, in one canonical spelling (ASCII only)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


# -- shapes --------------------------------------------------------------------------------

# A spec checks one value at ``where`` (a dotted path, for messages) and returns it as it
# is to be forwarded; it raises Refused otherwise.
Spec = Callable[[Any, str], Any]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _bad(where: str, what: str, value: Any, rule: str = "field-value") -> Refused:
    return Refused(rule, f"{where} must be {what}, not {_kind(value)}")


class Shape:
    """A JSON object with exactly these fields, each checked by its spec; absent fields
    stay absent (the engine's default), null stays null. ``required`` fields must be there."""

    def __init__(self, fields: Mapping[str, Spec], required: Iterable[str] = ()):
        self.fields = dict(fields)
        self.required = tuple(required)
        self._folded = {k.casefold(): k for k in self.fields}

    def __call__(self, value: Any, where: str = "body") -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        out = {}
        for key, item in value.items():
            spec = self.fields.get(key)
            if spec is None:
                near = self._folded.get(key.casefold())
                if near is not None:
                    raise Refused("field-case", f"{where}: key {key!r} matches field {near!r} only when case "
                                  "is ignored (the engine would read it as that field)")
                raise Refused("field", f"{where}: field {key!r} is not on this endpoint's allow-list")
            out[key] = spec(item, f"{where}.{key}")
        missing = [k for k in self.required if out.get(k) is None]
        if missing:
            raise Refused("field-missing", f"{where}: {', '.join(missing)} must be set")
        return out


def nullable(spec: Spec) -> Spec:
    def check(value, where):
        return None if value is None else spec(value, where)
    return check


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, "a boolean", value)
    return value


def false_only(value: Any, where: str) -> bool | None:
    """A switch the backends leave off (null or false); true is refused."""
    if value is None or value is False:
        return value
    raise Refused("field-value", f"{where} must be false")


def null_only(value: Any, where: str) -> None:
    """A field the backends send only as null (docker-py fills every field)."""
    if value is not None:
        raise Refused("field-value", f"{where} must be null")
    return None


def empty(value: Any, where: str) -> Any:
    """null, or an empty string, list or object (docker-py's way of saying 'none')."""
    if value is None or value in ("", [], {}):
        return value
    raise Refused("field-value", f"{where} must be empty")


def integer(lo: int = 0, hi: int = 2**63 - 1) -> Spec:
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise Refused("field-value", f"{where} must be a whole number from {lo} to {hi}")
        return value
    return check


def string(pattern: str | None = None, max_len: int = 65536) -> Spec:
    rx = re.compile(pattern) if pattern else None

    def check(value, where):
        if not isinstance(value, str):
            raise _bad(where, "a string", value)
        if len(value) > max_len or (rx is not None and not rx.fullmatch(value)):
            raise Refused("field-value", f"{where} is not an allowed value")
        return value
    return check


def one_of(*allowed: Any) -> Spec:
    def check(value, where):
        if value not in allowed or type(value) not in {type(a) for a in allowed}:
            raise Refused("field-value", f"{where} must be one of {', '.join(map(repr, allowed))}")
        return value
    return check


def list_of(item: Spec, max_items: int = MAX_ITEMS) -> Spec:
    def check(value, where):
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        if len(value) > max_items:
            raise Refused("field-value", f"{where} has more than {max_items} items")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return check


def map_of(key: Spec, value_spec: Spec, max_items: int = MAX_ITEMS) -> Spec:
    def check(value, where):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        if len(value) > max_items:
            raise Refused("field-value", f"{where} has more than {max_items} entries")
        return {key(k, f"{where} key"): value_spec(v, f"{where}[{k!r}]") for k, v in value.items()}
    return check

