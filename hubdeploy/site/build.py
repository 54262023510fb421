"""The ``build`` section: how images are built on this machine (CA, proxies, Debian mirror)."""

from __future__ import annotations

from pydantic import Field

from hubdeploy.site.fields import Closed


class Debian(Closed):
    suite: str = Field("bookworm", pattern=r"^[a-z]+$")
    mirror: str = Field("http://deb.debian.org/debian", pattern=r"^https?://\S+$")


class Build(Closed):
    """How images are built here: trust and proxies apply to every build step."""

    ca_bundle: str | None = Field(
        None, description="PEM bundle of the site's CA (for TLS-inspecting proxies). Relative to the site file."
    )
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    debian: Debian = Field(default_factory=Debian)
