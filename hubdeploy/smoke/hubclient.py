"""A small JupyterHub REST client for the smoke test.

Two ways in, as a site allows:

- the login form (``login``): what a person does with an authenticator that has a form
  (the dummy authenticator); the session cookie then creates an API token for the user;
- a service token (``HubClient(base, token=...)``) for hubs whose login is OAuth or LDAP:
  the ``hubdeploy-smoke`` service creates the test user, issues it a short-lived token and
  deletes it afterwards. Its scopes are ``SMOKE_SERVICE_SCOPES``.

Every request has a timeout; no method logs or returns a token except ``create_token``.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

import requests

from hubdeploy.contract.services import SMOKE

# What the smoke service's token may do (hubdeploy.contract.services says why).
SMOKE_SERVICE_SCOPES = list(SMOKE.scopes)


def user_token_scopes(username: str) -> list[str]:
    """Scopes of the token the smoke test works with: its own servers, nothing else."""
    return [f"servers!user={username}", f"access:servers!user={username}"]


class HubAPIError(Exception):
    """A hub request failed; carries the status and the hub's message (never a token)."""

    def __init__(self, method: str, path: str, status: int | None, message: str):
        self.status = status
        where = f"{method} {path}"
        super().__init__(f"{where}: {status} {message}" if status else f"{where}: {message}")


class SpawnFailed(Exception):
    """The hub reported the spawn as failed; the message is the hub's reason."""


def escape_path(name: str) -> str:
    """Escape a user or server name for a URL path, as JupyterHub's url_escape_path does."""
    return quote(name, safe="@~")


def _hub_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return str(body.get("message") or body)[:500] if isinstance(body, dict) else str(body)[:500]
    except ValueError:
        pass
    if "html" in resp.headers.get("Content-Type", ""):
        return resp.reason or ""  # an error page: its markup would only bury the status
    return (resp.text or resp.reason or "")[:500]


class HubClient:
    """Talks to ``BASE/hub/api`` with either a token or a login-form cookie session."""

    def __init__(self, base_url: str, *, token: str | None = None, verify: bool | str = True,
                 request_timeout: float = 30.0):
        self.base_url = base_url.rstrip("/") + "/"
        self.request_timeout = request_timeout
        self.http = requests.Session()
        self.http.verify = verify
        self.http.headers["User-Agent"] = "hubdeploy-smoke"
        if token:
            self.http.headers["Authorization"] = f"token {token}"
        self._cookie_auth = False

    def close(self) -> None:
        self.http.close()

    # -- plumbing --------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path.lstrip("/")

    def _xsrf_cookie(self) -> str | None:
        # The hub sets _xsrf on /hub/ (and maybe elsewhere); any valid one is accepted.
        for cookie in self.http.cookies:
            if cookie.name == "_xsrf":
                return cookie.value
        return None

    def request(self, method: str, path: str, *, ok=(200, 201, 202, 204), **kw) -> requests.Response:
        """One request to the hub; raises HubAPIError unless the status is in ``ok``."""
        headers = kw.pop("headers", {})
        if self._cookie_auth and method not in ("GET", "HEAD"):
            # Cookie-authenticated API writes need the xsrf token as a header (JupyterHub 4+).
            headers["X-XSRFToken"] = self._xsrf_cookie() or ""
        kw.setdefault("timeout", self.request_timeout)
        try:
            # Per request: requests lets REQUESTS_CA_BUNDLE in the environment override a
            # session's verify, which would ignore the site's CA given by the caller.
            kw.setdefault("verify", self.http.verify)
            resp = self.http.request(method, self.url(path), headers=headers, **kw)
        except requests.RequestException as exc:
            raise HubAPIError(method, path, None, f"{type(exc).__name__}: {exc}") from None
        if resp.status_code not in ok:
            raise HubAPIError(method, path, resp.status_code, _hub_message(resp))
        return resp

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return self.request(method, "hub/api/" + path.lstrip("/"), **kw)

    # -- login -----------------------------------------------------------------------

    def login(self, username: str, password: str) -> None:
        """Log in through the hub's login form, as a browser does; keeps the cookies."""
        page = self.request("GET", "hub/login")
        match = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        xsrf = match.group(1) if match else self._xsrf_cookie()
        if not xsrf:
            raise HubAPIError("GET", "hub/login", page.status_code,
                              "the login page has no _xsrf field: does this authenticator have a form?")
        # A rejected login is the form again: 403 on current hubs, 200 on old ones.
        resp = self.request("POST", "hub/login", ok=(200, 302, 303, 403),
                            data={"username": username, "password": password, "_xsrf": xsrf},
                            allow_redirects=False)
        if resp.status_code in (200, 403) or not any(c.name.startswith("jupyterhub-") for c in self.http.cookies):
            raise HubAPIError("POST", "hub/login", resp.status_code,
                              "login rejected (wrong user name or password?)")
        self._cookie_auth = True
        # The xsrf token is bound to the login: the first page after login issues the
        # one that API writes must carry.
        self.request("GET", "hub/home", ok=(200,))

    def logout(self) -> None:
        """End a form login's hub session (best effort: the cookies die with us anyway)."""
        if self._cookie_auth:
            try:
                self.request("GET", "hub/logout", ok=(200, 302, 303), allow_redirects=False)
            except HubAPIError:
                pass
            self._cookie_auth = False

    # -- users and tokens ------------------------------------------------------------

    def create_user(self, name: str) -> bool:
        """Create the user; True if created, False if it already existed."""
        resp = self.api("POST", f"users/{escape_path(name)}", ok=(201, 409))
        return resp.status_code == 201

    def delete_user(self, name: str) -> bool:
        """Delete the user; False if it did not exist."""
        resp = self.api("DELETE", f"users/{escape_path(name)}", ok=(204, 404))
        return resp.status_code == 204

    def user_model(self, name: str) -> dict:
        return self.api("GET", f"users/{escape_path(name)}").json()

    def create_token(self, name: str, *, scopes: list[str] | None, expires_in: int,
                     note: str = "hubdeploy smoke") -> tuple[str, str]:
        """Issue an API token for ``name``; returns (token, token id)."""
        body = {"note": note, "expires_in": int(expires_in)}
        if scopes is not None:
            body["scopes"] = scopes
        model = self.api("POST", f"users/{escape_path(name)}/tokens", json=body, ok=(200, 201)).json()
        return model["token"], model["id"]

    def delete_token(self, name: str, token_id: str) -> None:
        self.api("DELETE", f"users/{escape_path(name)}/tokens/{token_id}", ok=(204, 404))

    # -- servers ---------------------------------------------------------------------

    def server_url(self, user: str, server: str = "") -> str:
        """Public URL of a user's server, as the proxy routes it."""
        tail = f"{escape_path(server)}/" if server else ""
        return self.url(f"user/{escape_path(user)}/{tail}")

    def _server_path(self, user: str, server: str) -> str:
        # The default server has a path of its own: "servers//progress" is not it (the
        # empty segment is collapsed on the way and the hub answers 404).
        if not server:
            return f"users/{escape_path(user)}/server"
        return f"users/{escape_path(user)}/servers/{escape_path(server)}"

    def server_model(self, user: str, server: str) -> dict | None:
        """The server's entry in the user model; None when it is not active."""
        return self.user_model(user).get("servers", {}).get(server)

    def start_server(self, user: str, server: str, profile: str | None) -> bool:
        """Ask the hub to start a named server; True if it is ready at once (201)."""
        # A top-level body is user_options on every JupyterHub version; JupyterHub 6 also
        # takes {"user_options": ...}, older hubs would nest that one level too deep.
        body = {"profile": profile} if profile is not None else None
        try:
            resp = self.api("POST", self._server_path(user, server), json=body, ok=(201, 202))
        except HubAPIError as exc:
            if exc.status is None or exc.status < 500:
                raise
            # A spawner that fails at once gets a bare 500 (and JupyterHub 6.1 may hide the
            # reason behind an InvalidStateError); the progress stream still has the reason.
            raise SpawnFailed(f"{self.spawn_failure(user, server) or 'spawn failed'} ({exc})") from None
        return resp.status_code == 201

    def spawn_failure(self, user: str, server: str) -> str | None:
        """The hub's message for a server whose spawn has failed, if it has one."""
        try:
            with self.api("GET", self._server_path(user, server) + "/progress", stream=True,
                          ok=(200,), timeout=(self.request_timeout, 10)) as resp:
                for line in resp.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        event = json.loads(line[5:])
                        if event.get("failed"):
                            return event.get("message")
                        if event.get("ready"):
                            return None
        except (requests.RequestException, HubAPIError, ValueError):
            pass
        return None

    def wait_ready(self, user: str, server: str, deadline: float) -> str:
        """Follow the spawn's progress events until ready; return the last message.

        Raises SpawnFailed with the hub's reason, or TimeoutError at ``deadline``.
        """
        last = "no progress events"
        path = self._server_path(user, server) + "/progress"
        try:
            resp = self.api("GET", path, stream=True, ok=(200,),
                            timeout=(self.request_timeout, 20))  # the hub sends keepalives every 8 s
            with resp:
                for line in resp.iter_lines(decode_unicode=True):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not ready in time; last progress: {last}")
                    if not line or not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    last = event.get("message") or last
                    if event.get("failed"):
                        raise SpawnFailed(last)
                    if event.get("ready"):
                        return last
        except (requests.RequestException, HubAPIError) as exc:
            # The stream is a convenience: fall through to polling the user model.
            last = f"progress stream ended: {exc}"
        while time.monotonic() < deadline:
            model = self.server_model(user, server)
            if model is None:
                raise SpawnFailed(f"server stopped while starting ({last})")
            if model.get("ready"):
                return last
            time.sleep(0.5)
        raise TimeoutError(f"not ready in time; last progress: {last}")

    def stop_server(self, user: str, server: str, deadline: float, *, remove: bool = True) -> None:
        """Stop a named server (and forget it with ``remove``); wait until it is gone."""
        # The default server cannot be removed, only stopped.
        body = {"remove": remove} if server else None
        self.api("DELETE", self._server_path(user, server), json=body, ok=(202, 204, 404))
        while time.monotonic() < deadline:
            if self.server_model(user, server) is None:
                return
            time.sleep(0.5)
        raise TimeoutError(f"server {server!r} still stopping")
