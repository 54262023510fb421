"""``hubdeploy smoke``: prove a site's stack works, as a user would use it.

Sites whose authenticator has a login form (the dummy authenticator) are tested through
that form; others through the ``hubdeploy-smoke`` hub service, whose token hubdeploy
provisions with the narrowest scopes that work (hubdeploy.smoke.hubclient).
"""

from __future__ import annotations

from pathlib import Path

from hubdeploy.contract.services import SMOKE
from hubdeploy.ops import stack
from hubdeploy.state.secrets import read_secret

FORM_AUTHENTICATORS = {"dummy", "jupyterhub.auth.DummyAuthenticator"}


def smoke(site_file: Path, *, throwaway: bool = False, profiles: list[str] | None = None,
          timeout: int = 300, console=None, verify: bool | str = True):
    """Run the smoke test; returns a SmokeReport (never raises for a failed step)."""
    from hubdeploy.errors import SiteError
    from hubdeploy.smoke.run import run_smoke

    prep = stack.prepare(site_file)
    known = [p.name for p in prep.site.profiles]
    unknown = [p for p in profiles or [] if p not in known]
    if unknown:
        raise SiteError(f"unknown profile(s): {', '.join(unknown)}; profiles: {', '.join(known)}")
    if throwaway:
        stack.up(prep, console=console)
    if verify is True and prep.self_signed_cert is not None:
        # hubdeploy made this certificate itself: trust exactly it, not the system's CAs.
        verify = str(prep.self_signed_cert)
    try:
        auth = prep.site.hub.authenticator
        # With a form, log in through it as a person would; the service token is then only
        # used to delete the test user at the end (a user cannot delete itself).
        password = str(auth.config.get("password", "")) if auth.class_ in FORM_AUTHENTICATORS else None
        return run_smoke(
            prep.url,
            profiles=profiles or known,
            password=password,
            service_token=read_secret(prep.state / "secrets", SMOKE.secret),
            timeout=timeout,
            console=console,
            verify=verify,
        )
    finally:
        if throwaway:
            stack.down(prep, volumes=True)
