"""The ``ldap`` identity source: RFC 2307 posixAccount / posixGroup entries.

The hub username is the entry's ``uid``; ``uidNumber``, ``gidNumber``, ``homeDirectory``
and ``loginShell`` make the account; posixGroups the user is a ``memberUid`` of are the
supplementary groups, and the posixGroup whose ``gidNumber`` is the account's names the
primary group. TLS is always verified (``ca_file``, or the system's CAs), host name
included; a plain ``ldap://`` URL is accepted only with StartTLS. The bind password is read
from ``bind_password_file`` at each connection (so a rotated secret needs no restart) and
appears in no message.

ldap3 is synchronous, so each lookup runs in a worker thread, bounded by ``timeout``.
Positive answers are cached for ``cache_seconds`` so a spawn storm does not hammer the
directory; refusals are not, so an account added by the site is seen at the next spawn.

The settings are :mod:`hubdeploy.contract.ldap`'s, checked by the same function that
``hubdeploy validate`` runs on the site file.
"""

from __future__ import annotations

import ast
import asyncio
import re
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPCertificateError, LDAPException
from ldap3.utils.conv import escape_filter_chars

from hubdeploy.contract.identity import Group, Identity, IdentityError, check
from hubdeploy.contract.ldap import parse_config
from hubdeploy.hub.identity_source import IdentitySource

USER_ATTRS = ["uid", "uidNumber", "gidNumber", "homeDirectory", "loginShell"]
GROUP_ATTRS = ["cn", "gidNumber"]
_DIGITS = re.compile(r"[0-9]+")
_PLACEHOLDER = re.compile(r"\{(name|dn)\}")


def fill(template: str, **values: str) -> str:
    """``template`` with each ``{key}`` replaced by its value escaped per RFC 4515.

    One pass: a ``{dn}`` inside a substituted username is text, not a placeholder."""
    return _PLACEHOLDER.sub(lambda m: escape_filter_chars(values[m[1]]) if m[1] in values else m[0], template)


def _values(attrs: Mapping[str, Any], key: str) -> list[str]:
    for k, v in attrs.items():
        if k.lower() == key.lower():
            vals = v if isinstance(v, (list, tuple)) else [v]
            return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in vals]
    return []


def _first(attrs: Mapping[str, Any], key: str) -> str:
    vals = _values(attrs, key)
    return vals[0].strip() if vals else ""


def _number(attrs: Mapping[str, Any], key: str, what: str, source: str) -> int:
    value = _first(attrs, key)
    if not _DIGITS.fullmatch(value):
        raise IdentityError(f"{what} in identity source {source} has no usable {key} ({value or 'none'!r})")
    return int(value)


def identity_from_entries(user: str, attrs: Mapping[str, Any], groups: list[Mapping[str, Any]],
                          source: str, default_home) -> Identity:
    """The Identity of ``user`` from their posixAccount's attributes and the posixGroups found."""
    what = f"the posixAccount of {user!r}"
    uids = _values(attrs, "uid")
    # uid matches case-insensitively in LDAP; the account name is the directory's spelling.
    name = next((u for u in uids if u.lower() == user.lower()), uids[0] if uids else "")
    if not name:
        raise IdentityError(f"{what} in identity source {source} has no uid")
    uid = _number(attrs, "uidNumber", what, source)
    gid = _number(attrs, "gidNumber", what, source)
    primary, supplementary = "", {}
    for g in groups:
        cn = _first(g, "cn")
        ggid = _number(g, "gidNumber", f"posixGroup {cn!r}", source)
        if ggid == gid:
            primary = primary or cn
        else:
            supplementary.setdefault(ggid, Group(cn, ggid))
    ident = Identity(user=user, name=name, uid=uid, gid=gid,
                     home=_first(attrs, "homeDirectory") or default_home(name),
                     groups=tuple(supplementary[k] for k in sorted(supplementary)), group_name=primary,
                     shell=_first(attrs, "loginShell") or "/bin/bash")
    return check(ident, source)


class LdapSource(IdentitySource):
    """Accounts from an LDAP directory (module docstring)."""

    name = "ldap"

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.cfg = parse_config(self.config.get("ldap"))
        self._cache: dict[str, tuple[float, Identity]] = {}

    def describe(self) -> str:
        return f"ldap ({self.cfg.url}, {self.cfg.user_base})"

    def _error(self, what: str) -> IdentityError:
        return IdentityError(f"identity source {self.describe()} {what}")

    async def lookup(self, user: str) -> Identity:
        hit = self._cache.get(user)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            ident = await asyncio.wait_for(asyncio.to_thread(self._lookup, user), self.cfg.timeout)
        except asyncio.TimeoutError:
            raise self._error(f"did not answer within {self.cfg.timeout} s") from None
        if self.cfg.cache_seconds > 0:
            self._cache[user] = (time.monotonic() + self.cfg.cache_seconds, ident)
        return ident

    # -- in the worker thread ------------------------------------------------------------

    def _lookup(self, user: str) -> Identity:
        conn = self._connect()
        try:
            flt = fill(self.cfg.user_filter, name=user)
            found = self._search(conn, self.cfg.user_base, flt, USER_ATTRS, 2)
            if not found:
                raise IdentityError(f"user {user!r} has no posixAccount in identity source {self.describe()}; "
                                    "ask the site's administrators to add one")
            if len(found) > 1:
                raise IdentityError(f"user {user!r} matches several posixAccounts in identity source "
                                    f"{self.describe()}; refusing to choose one")
            dn, attrs = found[0]
            flt = fill(self.cfg.group_filter, name=user, dn=dn)
            gid = _first(attrs, "gidNumber")
            if _DIGITS.fullmatch(gid):
                flt = f"(|{flt}(&(objectClass=posixGroup)(gidNumber={gid})))"
            groups = [a for _, a in self._search(conn, self.cfg.group_base, flt, GROUP_ATTRS, 0)
                      ] if self.cfg.group_base else []
        finally:
            _close(conn)
        return identity_from_entries(user, attrs, groups, self.describe(), self.home)

    def _connect(self) -> ldap3.Connection:
        password = self._password()
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.cfg.ca_file)
        server = ldap3.Server(self.cfg.url, tls=tls, get_info=ldap3.NONE, connect_timeout=self.cfg.timeout)
        conn = ldap3.Connection(server, user=self.cfg.bind_dn, password=password,
                                receive_timeout=self.cfg.timeout, raise_exceptions=False)
        try:
            conn.open()
            if self.cfg.start_tls and not server.ssl and not conn.start_tls():
                raise LDAPException(conn.last_error or "StartTLS refused")
            bound = conn.bind()
        except (LDAPException, OSError) as exc:
            _close(conn)
            raise self._error(f"cannot reach the directory: {_reason(exc, password)}") from None
        if not bound:
            desc = conn.result.get("description", "refused") if conn.result else "refused"
            _close(conn)
            raise self._error(f"cannot bind to the directory as {self.cfg.bind_dn or 'anonymous'!r}: {desc}")
        return conn

    def _password(self) -> str | None:
        if self.cfg.bind_password_file is None:
            return None
        try:
            password = Path(self.cfg.bind_password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise self._error(f"cannot read its bind_password_file {self.cfg.bind_password_file}: "
                              f"{exc.strerror}") from None
        if not password:
            # An empty password makes a simple bind an unauthenticated (anonymous) one.
            raise self._error(f"has an empty bind_password_file {self.cfg.bind_password_file}")
        return password

    def _search(self, conn: ldap3.Connection, base: str, flt: str, attrs: list[str],
                size_limit: int) -> list[tuple[str, dict]]:
        try:
            conn.search(base, flt, ldap3.SUBTREE, attributes=attrs, size_limit=size_limit,
                        time_limit=max(1, int(self.cfg.timeout)))
        except (LDAPException, OSError) as exc:
            raise self._error(f"lost the directory: {_reason(exc, None)}") from None
        desc = (conn.result or {}).get("description", "")
        # sizeLimitExceeded on the account search means several entries: the caller refuses.
        if desc not in ("success", "sizeLimitExceeded"):
            raise self._error(f"could not search {base!r} ({desc})")
        return [(e["dn"], dict(e["attributes"])) for e in conn.response or () if e.get("type") == "searchResEntry"]


def _close(conn: ldap3.Connection) -> None:
    # A connection whose TLS handshake failed has no usable socket left to say goodbye on.
    try:
        conn.unbind()
    except (LDAPException, OSError):
        pass


def _unnest(text: str) -> str:
    # ldap3 reports the reasons of each address it tried as the repr of a tuple of strings.
    while text.startswith(("(", "[")):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            break
        text = "; ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    return text


def _reason(exc: BaseException, password: str | None) -> str:
    """A short reason for ``exc``, with the password (should a library echo it) masked."""
    if isinstance(exc, LDAPCertificateError):
        text = "the server's certificate does not name this host"
    else:
        text = _unnest(str(exc)) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return text[:300]
