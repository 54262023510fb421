"""A hub user's POSIX account, and the rules both sides apply to it.

The hub resolves each user to an :class:`Identity` (``hubdeploy.hub.identity``: the
site's ``identity.source``) before a server starts; backends run the server as that
account. hub.json's ``identity`` section (:class:`IdentityConfig`) says where accounts
come from.

Account names: a hub username that is already a portable POSIX name
(:data:`POSIX_NAME_PATTERN`) and not of the form ``u<digits>`` is the account name; any
other hub username (``has@``, ``秀樹``, ``Ann``, ``u123``) gets ``u<uid>``. uids are never
shared, and names of the first kind never look like the second, so the mapping is
injective.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, TypedDict

# useradd's portable rule, lowercase only (hostnames, mail and Slurm fold case).
POSIX_NAME_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
_POSIX_NAME = re.compile(POSIX_NAME_PATTERN)
_GENERATED = re.compile(r"^u[0-9]+$")
# uids below this are the system's; a user's server never runs as one of them.
MIN_UID = 1000

SOURCES = ("auto", "file", "ldap", "shared")


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
    """The account name of hub user ``user`` with ``uid`` (module docstring: the rule)."""
    if _POSIX_NAME.match(user) and not _GENERATED.match(user):
        return user
    return f"u{uid}"


def check(identity: Identity, source: str) -> Identity:
    """``identity`` if it is one a server may run as; IdentityError naming ``source`` if not."""
    problems = []
    if identity.uid < MIN_UID or identity.gid < MIN_UID and identity.gid != 100:
        problems.append(f"uid {identity.uid} / gid {identity.gid} is a system id (below {MIN_UID})")
    if not _POSIX_NAME.match(identity.name):
        problems.append(f"account name {identity.name!r} is not a POSIX name")
    if not identity.home.startswith("/") or ":" in identity.home or "\n" in identity.home:
        problems.append(f"home {identity.home!r} is not an absolute path")
    for g in identity.groups:
        if not _POSIX_NAME.match(g.name) or g.gid < 0:
            problems.append(f"group {g.name!r} ({g.gid}) is not a POSIX group")
    if problems:
        raise IdentityError(f"the account of {identity.user!r} from identity source {source!r} cannot be used: "
                            + "; ".join(problems))
    return identity


class IdentityConfig(TypedDict, total=False):
    """hub.json's ``identity`` section."""

    source: Literal["auto", "file", "ldap", "shared"]  # always present
    # auto: the range uids are allocated from, and the file that keeps the allocations.
    uid_min: int
    uid_max: int
    state_file: str
    # file: passwd(5) and group(5) files the site maintains (mounted into the hub).
    passwd_file: str
    group_file: str | None
    # ldap: see hubdeploy.hub.identity_ldap.
    ldap: dict
    # Where users' homes are created (the homes volume, mounted into the hub) and their
    # path on every node; where the stack's cluster reads accounts (libnss-extrausers).
    homes_dir: str
    home_template: str  # e.g. /home/{name}
    nss_dir: str | None
