"""The ``identity`` section: where each hub user's POSIX account comes from (auto, a
passwd file, LDAP, or the one shared account) and where the homes live.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PlainSerializer, model_validator

from hubdeploy.contract import ldap as ldap_settings
from hubdeploy.contract.identity import reserved_overlap
from hubdeploy.site.fields import Closed, SiteValueError


class IdentityAuto(Closed):
    """The uids the auto source hands out: none of them may own files in the images
    (hubdeploy.contract.identity.RESERVED_IDS), so the range avoids every reserved id."""

    uid_min: int = Field(20000, ge=0, le=2**31 - 2, description="First uid (and private gid) handed out.")
    uid_max: int = Field(59999, ge=0, le=2**31 - 2, description="Last uid handed out.")

    @model_validator(mode="after")
    def _range(self) -> "IdentityAuto":
        if self.uid_max < self.uid_min:
            raise ValueError(f"uid_max {self.uid_max} is below uid_min {self.uid_min}")
        overlap = reserved_overlap(self.uid_min, self.uid_max)
        if overlap:
            ids, why = overlap
            key = "uid_min" if self.uid_min in ids else "uid_max"
            span = f"ids {ids[0]}-{ids[-1]}" if len(ids) > 1 else f"id {ids[0]}"
            raise SiteValueError([((key,), f"uids {self.uid_min}-{self.uid_max} overlap the reserved {span} "
                                           f"({why}); choose a range outside them")])
        return self


class IdentityFile(Closed):
    """passwd(5) and group(5) files the site maintains; edits apply without a restart."""

    passwd: str = Field(description="passwd file: name:x:uid:gid:gecos:home:shell per line.")
    group: str | None = Field(None, description="group file; supplementary groups by member name.")


# A number of seconds, written into hub.json as the site wrote it (10, not 10.0).
Seconds = Annotated[float, PlainSerializer(lambda v: int(v) if float(v).is_integer() else v)]


class IdentityLdap(Closed):
    """RFC 2307 posixAccount / posixGroup entries of a directory (TLS verified).

    The keys and their types, for editors; the rules are hubdeploy.contract.ldap's, which
    the hub applies to the same section."""

    url: str = Field(description="ldaps://host[:port], or ldap://host[:port] with start_tls.")
    start_tls: bool = Field(False, description="StartTLS on an ldap:// URL.")
    ca_file: str | None = Field(None, description="CA bundle that verifies the directory; default: the system's.")
    bind_dn: str = Field(description="The DN the hub binds as.")
    bind_password_file: str = Field(description="File holding the bind DN's password (mode 0600).")
    user_base: str
    user_filter: str = Field(ldap_settings.DEFAULT_USER_FILTER, description="Finds a user's posixAccount: {name}.")
    group_base: str | None = None
    group_filter: str = Field(ldap_settings.DEFAULT_GROUP_FILTER,
                              description="Finds a user's posixGroups: {name} or {dn}.")
    timeout: Seconds = Field(10, description=f"Seconds, at most {ldap_settings.TIMEOUT_MAX}.")
    cache_seconds: Seconds = Field(60, description=f"Seconds, at most {ldap_settings.CACHE_MAX}.")

    @model_validator(mode="after")
    def _rules(self) -> "IdentityLdap":
        try:
            ldap_settings.parse_config(self.model_dump())
        except ldap_settings.LdapSettingError as exc:
            raise SiteValueError([((exc.key,) if exc.key else (), exc.reason)]) from None
        return self


class Identity(Closed):
    """Where each hub user's POSIX account comes from (uid, gid, groups, home)."""

    source: Literal["auto", "file", "ldap", "shared"] = Field(
        "auto", description="auto: allocated at first spawn; file: passwd/group files; ldap: a directory; "
        "shared: every user is the image's jovyan (no isolation between users).")
    auto: IdentityAuto = Field(default_factory=IdentityAuto)
    file: IdentityFile | None = None
    ldap: IdentityLdap | None = None
    home: str = Field("/home/{name}", pattern=r"^(/[A-Za-z0-9_.-]+)+/\{name\}$",
                      description="Users' homes: a directory, then /{name} (the account name).")
    homes_host: str | None = Field(
        None, pattern=r"^(/[A-Za-z0-9_.-]+)+$",
        description="A host directory (a shared file system) holding the homes; default: a volume of the stack.")
    allow_shared_compute_account: bool = Field(
        False, description="Let compute profiles run every user's jobs as one account (no isolation).")

    @model_validator(mode="after")
    def _source(self) -> "Identity":
        for name in ("file", "ldap"):
            if (self.source == name) != (getattr(self, name) is not None):
                raise ValueError(f"identity source {self.source!r} " + (
                    f"needs its '{name}' section" if self.source == name else f"takes no '{name}' section"))
        return self

    @property
    def homes_dir(self) -> str:
        """The directory that holds every home (the mount point on nodes and login containers)."""
        return self.home.rsplit("/", 1)[0]
