# JupyterHub configuration for hubdeploy. Static: the same file for every site.
#
# Everything site-specific comes from hub.json, which `hubdeploy render` writes; its shape
# is hubdeploy.contract.hubjson, shared with the renderer. Secrets come from files under /run/secrets, never from
# hub.json, compose.yaml or the environment. The site's pass-through `config` is applied
# last, so a site can override any value set here.
#
# Authenticator traits (hub.json authenticator.config) are set on `c.Authenticator`:
# traitlets applies a section to every subclass, so they reach whichever class the
# entry-point name resolves to, without importing it here; a site that needs the
# class-specific section can still use the pass-through (e.g. `GitHubOAuthenticator`).

from pathlib import Path

from hubdeploy.backends import UnknownBackend, backend_configs
from hubdeploy.contract import hubjson

# get_config is provided by traitlets when it loads this file.
c = get_config()  # noqa: F821

hub_json_path = hubjson.path()
try:
    hub = hubjson.load(hub_json_path)
except hubjson.ShapeError as exc:  # a missing, unknown or mistyped key: named, no traceback
    raise SystemExit(f"hubdeploy: {exc}")


def read_secret(path):
    """The stripped contents of a secret file; a missing or empty file stops the hub."""
    value = Path(path).read_text(encoding="utf-8").strip()
    if not value:
        raise SystemExit(f"hubdeploy: secret file {path} is empty")
    return value


# -- hub and proxy ------------------------------------------------------------------
c.JupyterHub.hub_bind_url = f"http://{hub.hub.ip}:{hub.hub.port}"
c.JupyterHub.hub_connect_url = hub.hub.connect_url
c.JupyterHub.cookie_secret_file = hub.cookie_secret_file
# Notebook servers outlive hub restarts (upgrades, config changes); the spawner's state in
# the database lets the restarted hub find them again.
c.JupyterHub.cleanup_servers = False
c.JupyterHub.allow_named_servers = True

# CHP runs as its own container (compose restarts it); the hub only talks to its API.
c.JupyterHub.proxy_class = "hubdeploy.hub.proxy.RouteKeepingProxy"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = hub.proxy.api_url
c.ConfigurableHTTPProxy.auth_token = read_secret(hub.proxy.token_file)
c.RouteKeepingProxy.route_check_interval = hub.proxy.route_check_interval

# -- database -------------------------------------------------------------------------
c.JupyterHub.db_url = hub.database.url
if hub.database.password_file:
    # The password goes into the URL only here, in the hub's memory: hub.json never holds
    # it. It cannot go in db_kwargs: JupyterHub stamps a new database's schema (alembic)
    # with the URL alone. JupyterHub redacts the password whenever it logs the URL.
    from urllib.parse import quote, urlsplit, urlunsplit

    _u = urlsplit(hub.database.url)
    _pw = quote(read_secret(hub.database.password_file), safe="")
    c.JupyterHub.db_url = urlunsplit(_u._replace(netloc=f"{_u.username}:{_pw}@{_u.hostname}:{_u.port}"))

if c.JupyterHub.db_url.startswith("sqlite:"):
    # Commits without an fsync each: JupyterHub commits on its event loop (hubdeploy.hub.db).
    from hubdeploy.hub.db import fast_sqlite_commits

    fast_sqlite_commits()

# -- authentication -------------------------------------------------------------------
auth = hub.authenticator
c.JupyterHub.authenticator_class = auth.class_
for key, value in auth.config.items():
    c.Authenticator[key] = value
c.Authenticator.admin_users = set(hub.admin_users)
if auth.class_ in ("dummy", "jupyterhub.auth.DummyAuthenticator"):
    # The demo: anyone may log in with any password (DummyAuthenticator without a password),
    # unless the site restricts the users.
    passthrough = hub.config
    restricted = "allowed_users" in auth.config or any(
        "allowed_users" in passthrough.get(section, {}) for section in ("Authenticator", "DummyAuthenticator")
    )
    if not restricted:
        c.Authenticator.allow_all = True

# -- services: each token gets exactly its service's scopes ---------------------------
services = []
roles = []
for svc in hub.services:
    entry = {"name": svc.name, "api_token": read_secret(svc.token_file)}
    if svc.url:
        entry["url"] = svc.url
    services.append(entry)
    if svc.scopes:
        roles.append({"name": f"service-{svc.name}", "scopes": list(svc.scopes), "services": [svc.name]})
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles

# -- notebook servers -----------------------------------------------------------------
c.JupyterHub.spawner_class = "hubdeploy.hub.spawner.HubdeploySpawner"
c.HubdeploySpawner.profiles = list(hub.spawner.profiles)
c.HubdeploySpawner.backend = hub.spawner.backend
# Every backend's config as its own Config: a bad key stops the hub here. Compute
# profiles' backend (slurm) is chosen per profile by its node type.
try:
    c.HubdeploySpawner.backend_configs = backend_configs(hub.spawner)
except (ValueError, UnknownBackend) as exc:
    raise SystemExit(f"hubdeploy: {hub_json_path}: {exc}")
# Each user's server runs as their own POSIX account from this source.
c.HubdeploySpawner.identity = hub.identity
# Starts beyond the site's limit wait in order inside the spawner (hubdeploy.hub.spawnqueue).
# JupyterHub's own concurrent_spawn_limit (default 100) would refuse them with 429 instead,
# so it is off: the queue's timeout bounds how long a start may wait.
c.HubdeploySpawner.concurrent_spawn_limit = hub.spawner.concurrent_spawn_limit
c.JupyterHub.concurrent_spawn_limit = 0

# -- web layer (hubdeploy.hub.web) ----------------------------------------------------
from hubdeploy.hub import web  # noqa: E402

c.JupyterHub.named_server_limit_per_user = hub.named_server_limit_per_user
_base_url = hub.config.get("JupyterHub", {}).get("base_url", "/")
c.JupyterHub.tornado_settings = {
    # Session, login and xsrf cookies alike: JupyterHub derives the xsrf cookie's from these.
    "cookie_options": web.cookie_options(hub.tls),
    "headers": {
        "Content-Security-Policy": web.content_security_policy(
            _base_url.rstrip("/") + "/hub/security/csp-report"
        ),
    },
}
# One log record, one line (a name with a newline cannot forge a line); no traceback for
# a refused spawn. Merged into the default console handler's logging config.
c.JupyterHub.logging_config = web.LOGGING_CONFIG

# -- the site's pass-through, last so that it wins ------------------------------------
for section, traits in hub.config.items():
    for key, value in traits.items():
        c[section][key] = value

# Whatever authenticator the site ended up with (pass-through included) applies hubdeploy's
# username policy on every path that names a user, login and REST API alike: names in
# normal form (NFKC), no control characters, at most hub.username_max_length characters.
try:
    _authenticator = web.resolve_authenticator(c.JupyterHub.authenticator_class)
except ImportError as exc:
    raise SystemExit(f"hubdeploy: authenticator {c.JupyterHub.authenticator_class!r} is not installed: {exc}")
c.JupyterHub.authenticator_class = web.username_policy(_authenticator, max_length=hub.username_max_length)
