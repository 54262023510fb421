"""A hub user's POSIX account, and the rules both sides apply to it.

The hub resolves each user to an :class:`Identity` (``hubdeploy.hub.identity``: the
site's ``identity.source``) before a server starts; backends run the server as that
account. hub.json's ``identity`` section (:class:`IdentityConfig`) says where accounts
come from.

Account names: a hub username that is already a portable POSIX name
(:data:`POSIX_NAME_PATTERN`), not of the form ``u<digits>`` and not the name of an account
or group of the images (:data:`RESERVED_NAMES`) is the account name; any other hub username
(``has@``, ``秀樹``, ``Ann``, ``u123``, ``root``) gets ``u<uid>``. uids are never shared,
and names of the first kind never look like the second, so the mapping is injective.

Ids: no account a source hands out may have a uid, primary gid or group that owns files
in the images (:data:`RESERVED_IDS`); :func:`check` refuses it.
"""

from __future__ import annotations

import io
import re
import tarfile
import typing
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

# useradd's portable rule, lowercase only (hostnames, mail and Slurm fold case).
POSIX_NAME_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
_POSIX_NAME = re.compile(POSIX_NAME_PATTERN)
_GENERATED = re.compile(r"^u[0-9]+$")

# The notebook images' own user (jovyan): it owns /home/jovyan, and the ``shared`` source
# runs every server as it. Its group is ``users``, a group accounts may share.
NOTEBOOK_UID = 1000
USERS_GID = 100

# Ids that own files in the images, or may (a package's system account), with the reason.
# A server never runs as one of them, so no account can own, or act for the owner of,
# anything the image holds. Debian: 0-99 static and 100-999 dynamic system accounts;
# 60000-64999 globally allocated system accounts (slurm is 64030), 65534 nobody/nogroup.
RESERVED_IDS: tuple[tuple[range, str], ...] = (
    (range(0, NOTEBOOK_UID), "system accounts"),
    (range(NOTEBOOK_UID, NOTEBOOK_UID + 1), "the notebook user jovyan, owner of /home/jovyan"),
    (range(60000, 65536), "Debian's global system accounts such as slurm, and nobody"),
)

# Accounts and groups of the images (Debian's base-passwd and what the images install, the
# Slurm nodes' slurm and munge, the notebook user): an account of the same name would
# replace the image's entry in a container's /etc/passwd or /etc/group, and on the nodes
# Slurm and munge would take it for their own. tests/integration/test_images_build.py checks
# that every name of the built images is here.
RESERVED_NAMES = frozenset({
    # base-passwd's users (gnats: Debian before bookworm)
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "_apt", "nobody",
    # base-passwd's groups
    "adm", "tty", "disk", "kmem", "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo",
    "audio", "dip", "operator", "src", "shadow", "utmp", "video", "sasl", "plugdev", "staff",
    "users", "nogroup",
    # the images' own
    "jovyan", "slurm", "munge",
})

# Where accounts come from (hubdeploy.hub.identity has one class per name).
Source = Literal["auto", "file", "ldap", "shared"]
SOURCES = typing.get_args(Source)

# Hub usernames are taken in Unicode's compatibility normal form before anything compares
# them: full-width ``ａｄｍｉｎ``, ligatures and superscripts are the plain characters they
# display as, so no user can look like another one (hubdeploy.hub.web applies it).
USERNAME_FORM = "NFKC"


def normal_username(name: str) -> str:
    """``name`` in :data:`USERNAME_FORM`: ``ａｄｍｉｎ`` is ``admin``."""
    return unicodedata.normalize(USERNAME_FORM, name)


class IdentityError(Exception):
    """A user has no usable account; the message (shown to the user) names the source."""


@dataclass(frozen=True)
class Group:
    name: str
    gid: int


@dataclass(frozen=True)
class Identity:
    """One user's POSIX account: who their server runs as, and where their home is."""

    user: str  # the hub username
    name: str  # the account name
    uid: int
    gid: int
    home: str
    groups: tuple[Group, ...] = field(default_factory=tuple)  # supplementary groups
    group_name: str = ""  # the primary group's name; default: the account name
    shell: str = "/bin/bash"

    @property
    def primary_group(self) -> Group:
        return Group(self.group_name or self.name, self.gid)

    def passwd_line(self) -> str:
        return f"{self.name}:x:{self.uid}:{self.gid}::{self.home}:{self.shell}"

    def group_lines(self) -> list[str]:
        """group(5) lines: the primary group, then each supplementary group with this member."""
        lines = [f"{self.primary_group.name}:x:{self.gid}:"]
        lines += [f"{g.name}:x:{g.gid}:{self.name}" for g in self.groups if g.gid != self.gid]
        return lines


def account_name(user: str, uid: int) -> str:
    """The account name of hub user ``user`` with ``uid`` (module docstring: the rule).

    A reserved name is mapped rather than refused: facility staff whose login is
    ``daemon`` can still use the hub, as ``u<uid>``.
    """
    if _POSIX_NAME.match(user) and not _GENERATED.match(user) and user not in RESERVED_NAMES:
        return user
    return f"u{uid}"


def reserved_id(number: int) -> str | None:
    """Why ``number`` is reserved as a uid or gid (:data:`RESERVED_IDS`), or None."""
    return next((why for ids, why in RESERVED_IDS if number in ids), None)


def reserved_overlap(first: int, last: int) -> tuple[range, str] | None:
    """The first reserved range that ``first..last`` overlaps, with its reason, or None."""
    return next(((ids, why) for ids, why in RESERVED_IDS if first <= ids[-1] and ids[0] <= last), None)


def check(identity: Identity, source: str) -> Identity:
    """``identity`` if it is one a server may run as; IdentityError naming ``source`` if not."""
    problems = []
    if why := reserved_id(identity.uid):
        problems.append(f"uid {identity.uid} is reserved ({why})")
    if identity.gid != USERS_GID and (why := reserved_id(identity.gid)):
        problems.append(f"gid {identity.gid} is reserved ({why})")
    if not _POSIX_NAME.match(identity.name):
        problems.append(f"account name {identity.name!r} is not a POSIX name")
    elif identity.name in RESERVED_NAMES:
        problems.append(f"account name {identity.name!r} is an account or group of the images")
    if not identity.home.startswith("/") or ":" in identity.home or "\n" in identity.home:
        problems.append(f"home {identity.home!r} is not an absolute path")
    for g in identity.groups:
        if not _POSIX_NAME.match(g.name) or g.gid < 0:
            problems.append(f"group {g.name!r} ({g.gid}) is not a POSIX group")
        elif g.gid != USERS_GID and (why := reserved_id(g.gid)):
            # Membership is access: gid 42 (shadow) reads /etc/shadow in the images.
            problems.append(f"group {g.name!r} has reserved gid {g.gid} ({why})")
    if problems:
        raise IdentityError(f"the account of {identity.user!r} from identity source {source!r} cannot be used: "
                            + "; ".join(problems))
    return identity


@dataclass(frozen=True)
class IdentityConfig:
    """hub.json's ``identity`` section: every key is written, null where the source has
    no use for it."""

    source: Source
    home_template: str  # e.g. /home/{name}
    # Where users' homes are created (the homes volume, mounted into the hub); where the
    # stack's cluster reads accounts (libnss-extrausers). None with the shared account.
    homes_dir: str | None
    nss_dir: str | None
    # auto: the range uids are allocated from, and the file that keeps the allocations.
    uid_min: int | None
    uid_max: int | None
    state_file: str | None
    # file: passwd(5) and group(5) files the site maintains (mounted into the hub).
    passwd_file: str | None
    group_file: str | None
    # ldap: checked by hubdeploy.hub.identity_ldap when its source is made.
    ldap: dict[str, Any] | None


def etc_archive(passwd: str, group: str) -> bytes:
    """The tar of ``etc/passwd`` and ``etc/group`` (root's, 0644, USTAR, no time) uploaded at
    ``/`` of a notebook container: what the docker backend sends and what the engine proxy
    rebuilds from the parts it checked, so the engine reads only this shape."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in (("etc/passwd", passwd), ("etc/group", group)):
            data = text.encode("utf-8", "surrogateescape")
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, 0, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
