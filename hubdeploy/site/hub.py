"""The ``hub`` section: JupyterHub's version, authenticator, admins, limits on names,
servers and starts, and the pass-through traits.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from hubdeploy.contract.identity import normal_username
from hubdeploy.site.fields import Closed, Package, SiteValueError, TraitSection, Username


class Authenticator(Closed):
    # JupyterHub resolves short names through its "jupyterhub.authenticators" entry
    # points ("dummy", "github", "ldapauthenticator", ...), so any installed
    # authenticator works without hubdeploy knowing about it.
    class_: str = Field(
        "dummy",
        alias="class",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$",
        description="Authenticator entry-point name or import path.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Traits of the authenticator class, passed through as is."
    )
    packages: list[Package] = Field(
        default_factory=list, description="Extra pip packages the hub image needs for this authenticator."
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# The oldest JupyterHub the hub side (config, spawner, web layer) is tested on.
MIN_JUPYTERHUB = "5.5.0"


class Hub(Closed):
    jupyterhub_version: str = Field(
        "6.1.1",
        pattern=r"^\d+\.\d+\.\d+$",
        description="JupyterHub version of the hub; notebook images get the same jupyterhub-singleuser. "
        f"{MIN_JUPYTERHUB} or later (hubdeploy's hub side is tested on 5.5 and 6.1); changing it "
        "on a running stack upgrades the hub's database (README: Upgrading JupyterHub).",
    )

    @field_validator("jupyterhub_version")
    @classmethod
    def _supported(cls, v: str) -> str:
        if tuple(int(x) for x in v.split(".")) < tuple(int(x) for x in MIN_JUPYTERHUB.split(".")):
            raise ValueError(f"JupyterHub {v} is older than {MIN_JUPYTERHUB}, the oldest hubdeploy's hub side runs on")
        return v

    authenticator: Authenticator = Field(default_factory=Authenticator)
    admin_users: list[Username] = Field(default_factory=list)
    username_max_length: int = Field(
        64,
        ge=1,
        # JupyterHub's database keeps a username in 255 characters.
        le=255,
        description="Longest username the hub accepts, in characters after normalisation "
        "(NFKC, then the authenticator's own, e.g. lower case); longer names are refused "
        "at login and in the REST API, whatever the authenticator.",
    )
    named_server_limit_per_user: int = Field(
        3,
        ge=0,
        description="Named servers a user may have besides the default one (0: no limit).",
    )
    concurrent_spawn_limit: int = Field(
        8,
        ge=1,
        le=1000,
        description="Servers the hub starts at once; more starts wait in order (users see "
        "'waiting: N starts ahead') and their wait does not count against start_timeout. "
        "8 suits a 2-core login node: a start costs about 1.3 CPU-seconds, so more at once "
        "only slows every one of them down.",
    )
    config: dict[TraitSection, dict[str, Any]] = Field(
        default_factory=dict,
        description="Pass-through JupyterHub traits, e.g. {JupyterHub: {shutdown_on_logout: true}}.",
    )

    @model_validator(mode="after")
    def _admins_fit(self) -> "Hub":
        # The hub refuses to start with an admin name it would refuse at login.
        problems = [(("admin_users", i), f"{name!r} is {len(normal_username(name))} characters long; "
                     f"the hub refuses names longer than hub.username_max_length ({self.username_max_length})")
                    for i, name in enumerate(self.admin_users)
                    if len(normal_username(name)) > self.username_max_length]
        if problems:
            raise SiteValueError(problems)
        return self
