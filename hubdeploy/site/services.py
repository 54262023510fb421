"""The ``services`` section: the idle culler, Prometheus, and a site's own hub services
(``extra``), whose names must not take one of hubdeploy's own.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from hubdeploy.contract.services import RESERVED_NAMES
from hubdeploy.site.fields import Closed, EnvName, Name, Problem, SiteValueError, repeated_names


class IdleCuller(Closed):
    enabled: bool = True
    timeout: int = Field(3600, ge=60, description="Seconds of inactivity before a server is stopped.")
    every: int = Field(300, ge=10, description="Seconds between culler runs.")


class Prometheus(Closed):
    """Prometheus in the stack, scraping the hub's /hub/metrics with a read:metrics token."""

    enabled: bool = False
    port: int | None = Field(
        None, ge=1, le=65535,
        description="Publish Prometheus (its HTTP API) on 127.0.0.1:PORT of this machine; "
        "unset: reachable only inside the stack.",
    )
    scrape_interval: int = Field(15, ge=5, le=3600, description="Seconds between scrapes of the hub.")
    retention: str = Field("15d", pattern=r"^\d+[hdwy]$", description="How long samples are kept, e.g. 15d.")


class ExtraService(Closed):
    """A hub service: an external URL, or a container that runs a command."""

    name: Name
    url: str | None = Field(None, description="URL the hub proxies /services/NAME to.")
    command: list[str] | None = Field(None, min_length=1, description="argv of a container service.")
    image: str | None = Field(
        None,
        description="Image for a container service; default: the hub image "
        "(which exports JUPYTERHUB_API_TOKEN from the secret file).",
    )
    port: int | None = Field(None, ge=1, le=65535, description="Port a container service listens on.")
    scopes: list[str] = Field(default_factory=list, description="Scopes of the service's API token.")
    environment: dict[EnvName, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> "ExtraService":
        if (self.url is None) == (self.command is None):
            raise ValueError("a service needs exactly one of 'url' or 'command'")
        if self.image is not None and self.command is None:
            raise ValueError("'image' only applies to a container service (one with 'command')")
        return self


class Services(Closed):
    idle_culler: IdleCuller = Field(default_factory=IdleCuller)
    prometheus: Prometheus = Field(default_factory=Prometheus)
    extra: list[ExtraService] = Field(default_factory=list)

    @field_validator("extra")
    @classmethod
    def _unique(cls, v: list[ExtraService]) -> list[ExtraService]:
        problems: list[Problem] = []
        repeated = repeated_names([None if s.name in RESERVED_NAMES else s.name for s in v], "service", "extra")
        for j, s in enumerate(v):
            if s.name in RESERVED_NAMES:
                problems.append(((j, "name"), f"service name {s.name!r} is reserved for hubdeploy's own "
                                 f"service (reserved: {', '.join(sorted(RESERVED_NAMES))})"))
            elif j in repeated:
                problems.append(repeated[j])
        if problems:
            raise SiteValueError(problems)
        return v
