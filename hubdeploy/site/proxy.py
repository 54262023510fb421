"""Where users reach the hub: ``public`` (the proxy's published port), ``tls`` (the
proxy terminates it) and ``proxy`` (how the hub keeps the proxy's routes).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from hubdeploy.site.fields import Closed, SiteValueError


class Public(Closed):
    """Where users reach the hub. The demo binds loopback only."""

    host: str = Field("127.0.0.1", description="Address the proxy's public port binds on the host.")
    port: int = Field(8000, ge=1, le=65535, description="Public port of the proxy.")


class TLS(Closed):
    """TLS terminated by configurable-http-proxy: the site's certificate and key (paths
    relative to the site file), or ``self_signed: true`` for a trial, where hubdeploy
    generates a certificate once and keeps it with the secrets."""

    cert: str | None = Field(None, description="PEM certificate chain file.")
    key: str | None = Field(None, description="PEM private key file.")
    self_signed: bool = Field(
        False,
        description="Generate a self-signed certificate for public.host (instead of cert and key).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> "TLS":
        given = [k for k in ("cert", "key") if getattr(self, k) is not None]
        if self.self_signed and given:
            text = f"self_signed: true generates its own certificate: leave {' and '.join(given)} unset"
            raise SiteValueError([(("self_signed",), text)])
        if not self.self_signed and len(given) < 2:
            missing = " and ".join(k for k in ("cert", "key") if k not in given)
            raise SiteValueError(
                [((), f"give both 'cert' and 'key' (missing: {missing}), or self_signed: true")]
            )
        return self


class Proxy(Closed):
    route_check_interval: int = Field(
        1,
        ge=1,
        le=300,
        description="Seconds between the hub's checks that the proxy still has every route "
        "(restores routes quickly after a proxy restart). A check is one GET of the "
        "proxy's route table and a pass over the running servers: with 100 servers, every "
        "route was back 6.6 s after a proxy restart at 5 s and about 1-2 s at 1 s.",
    )
