"""The hub's JupyterHub configuration from hub.json, one function per section.

``config/jupyterhub_config.py`` (the static file ``hubdeploy render`` copies into every
site's rendered state) only calls :func:`apply` with traitlets' config and hub.json as
:func:`load` reads it. :func:`apply` calls the sections in order, each setting its own
traits, as TLJH's configurer does, so each can be tested alone on a traitlets ``Config``.

Everything site-specific comes from hub.json (:mod:`hubdeploy.contract.hubjson`), whose
every key the CLI side writes with the schema's defaults: no section supplies a default
of its own. Secrets come from files under /run/secrets, never from hub.json, compose.yaml
or the environment. What a site can fix (a key hub.json lacks or misspells, an empty
secret file, a backend or authenticator that is not installed) stops the hub with one
line naming it, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from traitlets.config import Config

from hubdeploy.backends import UnknownBackend, backend_configs
from hubdeploy.contract import hubjson
from hubdeploy.contract.hubjson import HubJson
from hubdeploy.hub import web
from hubdeploy.hub.db import fast_sqlite_commits

# The demo's authenticator: anyone may log in unless the site lists its users.
DUMMY = ("dummy", "jupyterhub.auth.DummyAuthenticator")


def load(where: Path | str | None = None) -> HubJson:
    """hub.json (default: :func:`hubdeploy.contract.hubjson.path`), checked; a missing,
    unknown or mistyped key stops the hub, named."""
    try:
        return hubjson.load(where)
    except hubjson.ShapeError as exc:
        raise SystemExit(f"hubdeploy: {exc}") from None


def apply(c: Config, hub: HubJson) -> None:
    """Configure JupyterHub for the site ``hub`` describes.

    The site's pass-through ``config`` comes after every section of hubdeploy's, so it
    wins; only the username policy follows it, because it wraps whichever authenticator
    class the site ended up with.
    """
    hub_and_proxy(c, hub)
    database(c, hub)
    authenticator(c, hub)
    services(c, hub)
    spawner(c, hub)
    web_layer(c, hub)
    passthrough(c, hub)
    username_policy(c, hub)


def read_secret(path: str) -> str:
    """The stripped contents of a secret file; a missing or empty file stops the hub."""
    value = Path(path).read_text(encoding="utf-8").strip()
    if not value:
        raise SystemExit(f"hubdeploy: secret file {path} is empty")
    return value


def hub_and_proxy(c: Config, hub: HubJson) -> None:
    """Where the hub listens and how it reaches CHP, which runs as its own container."""
    c.JupyterHub.hub_bind_url = f"http://{hub.hub.ip}:{hub.hub.port}"
    c.JupyterHub.hub_connect_url = hub.hub.connect_url
    c.JupyterHub.cookie_secret_file = hub.cookie_secret_file
    # Notebook servers outlive hub restarts (upgrades, config changes); the spawner's
    # state in the database lets the restarted hub find them again.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.allow_named_servers = True
    # Compose restarts CHP; the hub only talks to its API, and puts routes back soon
    # after a restart emptied it (hubdeploy.hub.proxy).
    c.JupyterHub.proxy_class = "hubdeploy.hub.proxy.RouteKeepingProxy"
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = hub.proxy.api_url
    c.ConfigurableHTTPProxy.auth_token = read_secret(hub.proxy.token_file)
    c.RouteKeepingProxy.route_check_interval = hub.proxy.route_check_interval


def database(c: Config, hub: HubJson) -> None:
    """The database URL, with PostgreSQL's password from its secret file."""
    c.JupyterHub.db_url = hub.database.url
    if hub.database.password_file:
        # The password goes into the URL only here, in the hub's memory: hub.json never
        # holds it. It cannot go in db_kwargs: JupyterHub stamps a new database's schema
        # (alembic) with the URL alone. JupyterHub redacts the password when it logs the URL.
        url = urlsplit(hub.database.url)
        password = quote(read_secret(hub.database.password_file), safe="")
        netloc = f"{url.username}:{password}@{url.hostname}:{url.port}"
        c.JupyterHub.db_url = urlunsplit(url._replace(netloc=netloc))
    if hub.database.url.startswith("sqlite:"):
        # Commits without an fsync each: JupyterHub commits on its event loop.
        fast_sqlite_commits()


def authenticator(c: Config, hub: HubJson) -> None:
    """The authenticator class and its traits, and the site's admins.

    Traits go on ``c.Authenticator``: traitlets applies a section to every subclass, so
    they reach whichever class the entry-point name resolves to without importing it
    here; a site that needs a class's own section uses the pass-through.
    """
    auth = hub.authenticator
    c.JupyterHub.authenticator_class = auth.class_
    for key, value in auth.config.items():
        c.Authenticator[key] = value
    c.Authenticator.admin_users = set(hub.admin_users)
    if auth.class_ in DUMMY and not _restricts_users(hub):
        # The demo: anyone may log in with any password (DummyAuthenticator without one).
        c.Authenticator.allow_all = True


def _restricts_users(hub: HubJson) -> bool:
    sections = (hub.config.get(name, {}) for name in ("Authenticator", "DummyAuthenticator"))
    return "allowed_users" in hub.authenticator.config or any("allowed_users" in s for s in sections)


def services(c: Config, hub: HubJson) -> None:
    """The hub services with their tokens; each token gets exactly its service's scopes."""
    entries, roles = [], []
    for svc in hub.services:
        entry = {"name": svc.name, "api_token": read_secret(svc.token_file)}
        if svc.url:
            entry["url"] = svc.url
        entries.append(entry)
        if svc.scopes:
            roles.append({"name": f"service-{svc.name}", "scopes": list(svc.scopes), "services": [svc.name]})
    c.JupyterHub.services = entries
    c.JupyterHub.load_roles = roles


def spawner(c: Config, hub: HubJson) -> None:
    """hubdeploy's spawner: the profiles, every backend's config, the users' accounts
    and the spawn queue's limit."""
    c.JupyterHub.spawner_class = "hubdeploy.hub.spawner.HubdeploySpawner"
    c.HubdeploySpawner.profiles = list(hub.spawner.profiles)
    c.HubdeploySpawner.backend = hub.spawner.backend
    # Each backend's config read as its own Config here, so a bad key stops the hub at
    # start. Compute profiles' backend is chosen per profile by its node type.
    try:
        c.HubdeploySpawner.backend_configs = backend_configs(hub.spawner)
    except (ValueError, UnknownBackend) as exc:
        raise SystemExit(f"hubdeploy: hub.json spawner: {exc}") from None
    c.HubdeploySpawner.identity = hub.identity
    # Starts beyond the site's limit wait in order inside the spawner
    # (hubdeploy.hub.spawnqueue). JupyterHub's own limit would refuse them with 429
    # instead, so it is off: the queue's timeout bounds how long a start may wait.
    c.HubdeploySpawner.concurrent_spawn_limit = hub.spawner.concurrent_spawn_limit
    c.JupyterHub.concurrent_spawn_limit = 0


def web_layer(c: Config, hub: HubJson) -> None:
    """Cookies, the Content-Security-Policy, named servers and one-line logs
    (:mod:`hubdeploy.hub.web`)."""
    c.JupyterHub.named_server_limit_per_user = hub.named_server_limit_per_user
    base_url = hub.config.get("JupyterHub", {}).get("base_url", "/")  # JupyterHub's default
    c.JupyterHub.tornado_settings = {
        # Session, login and xsrf cookies alike: JupyterHub derives the xsrf cookie's from these.
        "cookie_options": web.cookie_options(hub.tls),
        "headers": {
            "Content-Security-Policy": web.content_security_policy(base_url.rstrip("/") + "/hub/security/csp-report"),
        },
    }
    # One log record, one line (a name with a newline cannot forge a line); no traceback
    # for a refused spawn. Merged into the default console handler's logging config.
    c.JupyterHub.logging_config = web.LOGGING_CONFIG


def passthrough(c: Config, hub: HubJson) -> None:
    """The site's own traits (``hub.config``), over whatever the sections set."""
    for section, traits in hub.config.items():
        for key, value in traits.items():
            c[section][key] = value


def username_policy(c: Config, hub: HubJson) -> None:
    """Whatever authenticator the site ended up with (pass-through included) applies
    hubdeploy's username policy on every path that names a user, login and REST API
    alike: names in normal form (NFKC), no control characters, at most
    ``username_max_length`` characters."""
    try:
        authenticator_class = web.resolve_authenticator(c.JupyterHub.authenticator_class)
    except ImportError as exc:
        raise SystemExit(f"hubdeploy: authenticator {c.JupyterHub.authenticator_class!r} is not installed: {exc}")
    c.JupyterHub.authenticator_class = web.username_policy(authenticator_class, max_length=hub.username_max_length)
