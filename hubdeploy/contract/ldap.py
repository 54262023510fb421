"""The ``ldap`` identity source's settings (``identity.ldap``), checked once.

``hubdeploy validate`` checks the site's section with :func:`parse_config` (through the
schema), and the hub parses hub.json's copy with the same function before its first
lookup, so a site that passes ``validate`` is never refused at a spawn. Messages name the
key (:attr:`LdapSettingError.key`) and never echo a value that could hold a password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

DEFAULT_USER_FILTER = "(&(objectClass=posixAccount)(uid={name}))"
DEFAULT_GROUP_FILTER = "(&(objectClass=posixGroup)(memberUid={name}))"
# Seconds: a lookup holds a spawn (and a worker thread) at most this long; positive
# answers are kept at most an hour, so an account the site changes is seen within it.
TIMEOUT_MAX = 120
CACHE_MAX = 3600
# A host name or an IPv6 literal, with an optional port.
_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")


@dataclass(frozen=True)
class LdapConfig:
    url: str
    user_base: str
    # The hub always binds: a directory that answers anonymous searches would answer
    # anyone's, and the site's ACLs are written for the hub's DN.
    bind_dn: str
    bind_password_file: str
    group_base: str | None = None  # None: no posixGroup search (no supplementary groups)
    start_tls: bool = False
    ca_file: str | None = None
    user_filter: str = DEFAULT_USER_FILTER
    group_filter: str = DEFAULT_GROUP_FILTER
    timeout: float = 10
    cache_seconds: float = 60


class LdapSettingError(ValueError):
    """A setting that is wrong; ``key`` is None for the section as a whole."""

    def __init__(self, key: str | None, reason: str):
        super().__init__(f"identity.ldap.{key} {reason}" if key else f"identity.ldap {reason}")
        self.key = key
        self.reason = reason


# The keys that are not strings, and the types they accept.
_TYPES: dict[str, tuple[type, ...]] = {"start_tls": (bool,), "timeout": (int, float), "cache_seconds": (int, float)}


def parse_config(raw: Any) -> LdapConfig:
    """``identity.ldap`` (the site's, or hub.json's), checked; LdapSettingError if not."""
    if not isinstance(raw, Mapping):
        raise LdapSettingError(None, "must be a mapping")
    if "bind_password" in raw:
        raise LdapSettingError("bind_password", "is refused: put the password in a file and name it in "
                                                "bind_password_file")
    known = {f.name: f for f in fields(LdapConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise LdapSettingError(None, f"has unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    for key, f in known.items():
        _check_type(raw, key, f.default)
    cfg = LdapConfig(**raw)
    _check_url(cfg)
    _check_filters(cfg)
    if not 0 < cfg.timeout <= TIMEOUT_MAX:
        raise LdapSettingError("timeout", f"must be greater than 0 and at most {TIMEOUT_MAX} (seconds)")
    if not 0 <= cfg.cache_seconds <= CACHE_MAX:
        raise LdapSettingError("cache_seconds", f"must be between 0 and {CACHE_MAX} (seconds)")
    return cfg


def _check_type(raw: Mapping[str, Any], key: str, default: Any) -> None:
    types = _TYPES.get(key, (str,))
    if key not in raw:
        if default is MISSING:
            raise LdapSettingError(key, "is required")
        return
    if raw[key] is None and default is None:
        return
    # bool is an int: a timeout of `true` is a mistake, not one second.
    if not isinstance(raw[key], types) or (bool not in types and isinstance(raw[key], bool)):
        raise LdapSettingError(key, f"must be {' or '.join(t.__name__ for t in types)}")


def _check_url(cfg: LdapConfig) -> None:
    parts = urlsplit(cfg.url)
    # The URL is not echoed: one with user information may carry a password.
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.username or parts.password:
        raise LdapSettingError("url", "must be ldap://host[:port] or ldaps://host[:port], without credentials")
    try:
        parts.port  # noqa: B018 - a port that is no number raises here
    except ValueError:
        raise LdapSettingError("url", "has a port that is not a number") from None
    if not _HOST.match(parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc):
        raise LdapSettingError("url", "must name the server by a host name or an address")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise LdapSettingError("url", "must name only the server (no base DN, no query)")
    if parts.scheme == "ldap" and not cfg.start_tls:
        raise LdapSettingError("url", "ldap:// needs start_tls: true (the bind and the accounts must not "
                                      "cross the network in clear)")


def _check_filters(cfg: LdapConfig) -> None:
    if "{name}" not in cfg.user_filter:
        raise LdapSettingError("user_filter", "must contain {name} (the hub username)")
    if "{name}" not in cfg.group_filter and "{dn}" not in cfg.group_filter:
        raise LdapSettingError("group_filter", "must contain {name} or {dn} (the user's entry)")
    for key in ("user_filter", "group_filter"):
        value = getattr(cfg, key)
        if not (value.startswith("(") and value.endswith(")")):
            raise LdapSettingError(key, "must be a parenthesised LDAP filter")
