"""Where a hub user's POSIX account comes from: the site's ``identity.source``.

Each source answers :meth:`IdentitySource.lookup` with an
:class:`~hubdeploy.contract.identity.Identity`, or raises
:class:`~hubdeploy.contract.identity.IdentityError` whose message names the source. A
user without an account is refused at spawn; nothing ever falls back to another account.

- ``auto``: a uid (and a private group of the same number) allocated from a range at the
  user's first spawn, kept in a JSON file on the hub's data volume, so restarts and
  ``down`` without ``--volumes`` keep it; a uid is never given out twice.
- ``file``: passwd(5) (and optionally group(5)) files the site maintains; read again
  whenever they change, so edits need no hub restart.
- ``ldap``: RFC 2307 posixAccount / posixGroup (:mod:`hubdeploy.hub.identity_ldap`).
- ``shared``: every user is the image's ``jovyan`` (uid 1000), the single account of
  hubdeploy before identities; kept only as an explicit choice.

The hub also publishes the accounts it has resolved for the stack's own Slurm cluster
(:func:`write_nss`, read there through libnss-extrausers) and creates homes
(:func:`ensure_home`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hubdeploy.contract.atomic import write_atomic
from hubdeploy.contract.identity import (
    NOTEBOOK_UID,
    USERS_GID,
    Group,
    Identity,
    IdentityConfig,
    IdentityError,
    account_name,
    check,
)
from hubdeploy.hub.identity_source import DEFAULT_TEMPLATE, IdentitySource

SHARED_UID = NOTEBOOK_UID
SHARED_GID = USERS_GID


class SharedSource(IdentitySource):
    """Everyone is the image's notebook user: no isolation between users (explicit only)."""

    name = "shared"

    async def lookup(self, user: str) -> Identity:
        return Identity(user=user, name="jovyan", uid=SHARED_UID, gid=SHARED_GID, home="/home/jovyan",
                        group_name="users")


class AutoSource(IdentitySource):
    """uids allocated from ``uid_min..uid_max`` at first spawn, persisted in ``state_file``.

    The file holds ``{"next_uid": N, "users": {hub name: uid}}``; ``next_uid`` only grows,
    so a uid whose user is removed is never handed to someone else. Writes are atomic
    (temp file + rename) and serialised by one lock (one hub process per site).
    """

    name = "auto"

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.uid_min = int(self.config.get("uid_min", 20000))
        self.uid_max = int(self.config.get("uid_max", 59999))
        self.path = Path(self.config["state_file"])
        self._lock = asyncio.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {"next_uid": int(data.get("next_uid", self.uid_min)), "users": dict(data.get("users") or {})}
        except FileNotFoundError:
            return {"next_uid": self.uid_min, "users": {}}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # Never start over: that would hand out uids that already own files.
            raise IdentityError(f"identity source 'auto' cannot read its allocations ({self.path}): "
                                f"{type(exc).__name__}; restore the file from a backup") from None

    async def lookup(self, user: str) -> Identity:
        # The file's read and its fsync'd write run in a thread: on a busy disk a write
        # takes tens of milliseconds, and in a storm of first starts each of them would
        # stop every other request the hub is serving (the lock keeps them in order).
        async with self._lock:
            uid = await asyncio.to_thread(self._allocate, user)
        name = account_name(user, uid)
        return check(Identity(user=user, name=name, uid=uid, gid=uid, home=self.home(name)), self.describe())

    def _allocate(self, user: str) -> int:
        """The user's uid, allocated (and written down) at their first start."""
        data = self._load()
        uid = data["users"].get(user)
        if uid is None:
            uid = max(data["next_uid"], self.uid_min)
            if uid > self.uid_max:
                raise IdentityError(f"identity source 'auto' has no uid left for {user!r} "
                                    f"(range {self.uid_min}-{self.uid_max} used up)")
            data["users"][user] = uid
            data["next_uid"] = uid + 1
            write_atomic(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o600)
        return uid

    def describe(self) -> str:
        return f"auto (uids {self.uid_min}-{self.uid_max})"


class FileSource(IdentitySource):
    """passwd(5) and group(5) files: the hub username is the passwd name."""

    name = "file"

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.passwd = Path(self.config["passwd_file"])
        self.group = Path(self.config["group_file"]) if self.config.get("group_file") else None
        self._cache: tuple[tuple, dict[str, Identity]] | None = None

    def _stamp(self) -> tuple:
        # mtime and size of both files: an edit (or a replace by rename) reloads them.
        out = []
        for p in (self.passwd, self.group):
            if p is None:
                continue
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _accounts(self) -> dict[str, Identity]:
        stamp = self._stamp()
        if self._cache is None or self._cache[0] != stamp:
            try:
                passwd = self.passwd.read_text(encoding="utf-8")
            except OSError as exc:
                raise IdentityError(f"identity source 'file' cannot read {self.passwd}: {exc.strerror}") from None
            group = self.group.read_text(encoding="utf-8") if self.group and self.group.exists() else ""
            self._cache = (stamp, parse_passwd(passwd, group))
        return self._cache[1]

    async def lookup(self, user: str) -> Identity:
        found = self._accounts().get(user)
        if found is None:
            raise IdentityError(f"user {user!r} has no account in identity source {self.describe()}; "
                                "ask the site's administrators to add one")
        return check(found, self.describe())

    def describe(self) -> str:
        return f"file ({self.passwd.name})"


def parse_passwd(passwd: str, group: str = "") -> dict[str, Identity]:
    """name -> Identity from passwd(5) text, with supplementary groups from group(5) text.

    Comment and blank lines are skipped; a malformed line is skipped too (a site's file
    must not stop every spawn for one bad line), and so is any later duplicate name.
    """
    groups_of: dict[str, list[Group]] = {}
    group_names: dict[int, str] = {}
    for line in group.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 4 or not parts[2].isdigit() or line.startswith("#"):
            continue
        g = Group(parts[0], int(parts[2]))
        group_names.setdefault(g.gid, g.name)
        for member in filter(None, parts[3].split(",")):
            groups_of.setdefault(member.strip(), []).append(g)
    out: dict[str, Identity] = {}
    for line in passwd.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 7 or line.startswith("#") or not parts[2].isdigit() or not parts[3].isdigit():
            continue
        name, _, uid, gid, _, home, shell = parts
        if name in out:
            continue
        out[name] = Identity(user=name, name=name, uid=int(uid), gid=int(gid), home=home or f"/home/{name}",
                             groups=tuple(groups_of.get(name, ())), group_name=group_names.get(int(gid), ""),
                             shell=shell or "/bin/bash")
    return out


SOURCES: dict[str, type[IdentitySource]] = {"auto": AutoSource, "file": FileSource, "shared": SharedSource}


def get_source(config: IdentityConfig | Mapping[str, Any]) -> IdentitySource:
    """The identity source hub.json's ``identity`` section names."""
    name = config["source"]
    if name == "ldap":
        from hubdeploy.hub.identity_ldap import LdapSource

        return LdapSource(config)
    if name not in SOURCES:
        raise ValueError(f"unknown identity source {name!r}; known: auto, file, ldap, shared")
    return SOURCES[name](config)


# -- what the hub publishes: accounts for the stack's cluster, homes ---------------------


def write_nss(nss_dir: str | Path, identities: Iterable[Identity]) -> None:
    """passwd and group files (libnss-extrausers format) listing ``identities``.

    Merged with what is there: the file is the union of every account the hub has
    resolved, so a node knows the owner of every job that may run there.
    """
    nss = Path(nss_dir)
    users: dict[str, str] = {}
    groups: dict[str, tuple[int, set[str]]] = {}
    for line in _read_lines(nss / "passwd"):
        users[line.split(":", 1)[0]] = line
    for line in _read_lines(nss / "group"):
        name, _, gid, members = line.split(":")
        groups[name] = (int(gid), set(filter(None, members.split(","))))
    for ident in identities:
        users[ident.name] = ident.passwd_line()
        pg = ident.primary_group
        groups.setdefault(pg.name, (pg.gid, set()))
        for g in ident.groups:
            groups.setdefault(g.name, (g.gid, set()))[1].add(ident.name)
    _write_if_changed(nss / "passwd", "".join(f"{u}\n" for _, u in sorted(users.items())).encode())
    text = "".join(f"{n}:x:{gid}:{','.join(sorted(m))}\n" for n, (gid, m) in sorted(groups.items()))
    _write_if_changed(nss / "group", text.encode())


def _write_if_changed(path: Path, data: bytes) -> None:
    # Every spawn publishes its account; a returning user's is already there, and an
    # fsync'd rewrite of both files would be paid on each of their starts for nothing.
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    write_atomic(path, data, 0o644)


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.count(":") >= 3]
    except FileNotFoundError:
        return []


def ensure_home(homes_dir: str | Path, ident: Identity, home_template: str = DEFAULT_TEMPLATE) -> None:
    """The user's home under the homes volume (owned by them, 0700) and its
    ``.hubdeploy/logs`` (Slurm job output); an existing home keeps its contents."""
    root = Path(homes_dir)
    prefix = home_template.split("{name}")[0].rstrip("/")
    rel = ident.home[len(prefix):].lstrip("/") if ident.home.startswith(prefix + "/") else ident.name
    home = root / rel
    for path in (home, home / ".hubdeploy", home / ".hubdeploy" / "logs"):
        if not path.is_dir():
            path.mkdir(mode=0o700)
            os.chown(path, ident.uid, ident.gid)
    # A home created by someone else (an earlier account, a restore) must still be theirs.
    st = home.stat()
    if (st.st_uid, st.st_gid) != (ident.uid, ident.gid):
        os.chown(home, ident.uid, ident.gid)
    os.chmod(home, 0o700)
