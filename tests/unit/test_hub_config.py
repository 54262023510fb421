"""config/jupyterhub_config.py read with a hub.json as `hubdeploy render` writes it."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import quote

import pytest
from traitlets.config.loader import PyFileConfigLoader

from hubdeploy import render, resources
from hubdeploy.contract.layout import SECRETS_DIR
from hubdeploy.contract.strict import plain
from hubdeploy.site.loader import load_site_text
from hubdeploy.state.secrets import secret_names

CONFIG = resources.path("config/jupyterhub_config.py")

# What `hubdeploy render` turns into the hub.json below: the producer's real output, so
# this file tests the config against what the renderer writes, never a hand-made copy.
SITE = """\
name: hdtconf
database: {type: postgresql}
services:
  extra:
    - {name: web, command: [python3, -m, web], port: 9000}
hub:
  admin_users: [admin]
  config: {JupyterHub: {shutdown_on_logout: true}, Spawner: {start_timeout: 99}}
proxy: {route_check_interval: 7}
profiles:
  - {name: base, image: base, default: true}
"""
REFS = {"base": "hubdeploy/hdtconf-base:0123456789ab", "hub": "hubdeploy/hdtconf-hub:1",
        "proxy": "hubdeploy/hdtconf-proxy:2", "db": "hubdeploy/hdtconf-db:3"}


def relocate(value, secrets_dir):
    """hub.json with /run/secrets/NAME paths pointing into ``secrets_dir``."""
    if isinstance(value, dict):
        return {k: relocate(v, secrets_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, secrets_dir) for v in value]
    if isinstance(value, str) and value.startswith(SECRETS_DIR + "/"):
        return str(secrets_dir / value[len(SECRETS_DIR) + 1:])
    return value


def hub_json(tmp_path, text=SITE, **changes):
    """hub.json as render.hub_data writes it for ``text``, with every secret the CLI side
    generates for that site (secret_names) written into tmp_path."""
    site = load_site_text(text, "site.yaml")
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    for name in secret_names(site):
        (secrets_dir / name).write_text(f"value-of-{name}\n")
    data = relocate(plain(render.hub_data(site, REFS)), secrets_dir)
    for key, value in changes.items():
        data[key] = value
    path = tmp_path / "hub.json"
    path.write_text(json.dumps(data))
    return path, data


def load(monkeypatch, path):
    monkeypatch.setenv("HUBDEPLOY_HUB_JSON", str(path))
    return PyFileConfigLoader(CONFIG.name, path=str(CONFIG.parent)).load_config()


def test_static_config(tmp_path, monkeypatch):
    path, data = hub_json(tmp_path)
    c = load(monkeypatch, path)
    assert data["hub"]["ip"] == "0.0.0.0"
    assert c.JupyterHub.hub_bind_url == "http://0.0.0.0:8081"
    assert c.JupyterHub.hub_connect_url == "http://hub:8081"
    assert c.JupyterHub.cookie_secret_file == data["cookie_secret_file"]
    assert c.JupyterHub.cleanup_servers is False
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.proxy_class == "hubdeploy.hub.proxy.RouteKeepingProxy"
    assert c.ConfigurableHTTPProxy.should_start is False
    assert c.ConfigurableHTTPProxy.api_url == "http://proxy-api:8001"
    assert c.ConfigurableHTTPProxy.auth_token == "value-of-proxy_token"
    assert c.RouteKeepingProxy.route_check_interval == 7
    assert c.JupyterHub.spawner_class == "hubdeploy.hub.spawner.HubdeploySpawner"
    assert plain(c.HubdeploySpawner.profiles) == data["spawner"]["profiles"]
    assert c.HubdeploySpawner.backend == "docker"
    assert c.HubdeploySpawner.backend_configs["docker"].network == "hubdeploy-hdtconf-users"
    assert c.HubdeploySpawner.backend_configs["docker"].allowed_images == (REFS["base"],)
    assert c.Authenticator.admin_users == {"admin"}
    # The entry point's class, wrapped in hubdeploy's username policy.
    assert c.JupyterHub.authenticator_class.__mro__[1].__qualname__ == "DummyAuthenticator"
    assert not c.JupyterHub.authenticator_class().validate_username("a\nb")
    assert c.JupyterHub.authenticator_class.username_max_length == data["username_max_length"] == 64
    assert c.Authenticator.allow_all is True
    assert c.JupyterHub.named_server_limit_per_user == 3
    assert c.JupyterHub.tornado_settings["cookie_options"] == {"samesite": "Lax"}
    csp = c.JupyterHub.tornado_settings["headers"]["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "report-uri /hub/security/csp-report" in csp
    assert c.JupyterHub.logging_config["handlers"]["console"]["filters"] == ["hubdeploy_web"]
    # pass-through
    assert c.JupyterHub.shutdown_on_logout is True
    assert c.Spawner.start_timeout == 99


def test_database_password_only_in_memory_url(tmp_path, monkeypatch):
    path, _ = hub_json(tmp_path)
    c = load(monkeypatch, path)
    # alembic stamps a new schema with the URL alone, so the password must be in it; it
    # comes from the secret file at start, never from hub.json.
    assert c.JupyterHub.db_url == "postgresql+psycopg2://jupyterhub:value-of-db_password@db:5432/jupyterhub"


def test_sqlite_has_no_password(tmp_path, monkeypatch):
    path, _ = hub_json(tmp_path, database={"url": "sqlite:////srv/jupyterhub/data/jupyterhub.sqlite",
                                           "password_file": None})
    c = load(monkeypatch, path)
    assert c.JupyterHub.db_url.startswith("sqlite:")
    assert "db_kwargs" not in c.JupyterHub


def test_services_get_exactly_their_scopes(tmp_path, monkeypatch):
    path, _ = hub_json(tmp_path)
    c = load(monkeypatch, path)
    assert c.JupyterHub.services == [
        {"name": "hubdeploy-smoke", "api_token": "value-of-service-hubdeploy-smoke_token"},
        {"name": "hubdeploy-cli", "api_token": "value-of-service-hubdeploy-cli_token"},
        {"name": "idle-culler", "api_token": "value-of-service-idle-culler_token"},
        {"name": "web", "api_token": "value-of-service-web_token", "url": "http://web:9000"},
    ]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["service-idle-culler"] == {
        "name": "service-idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
    assert roles["service-hubdeploy-smoke"]["scopes"] == [
        "admin:users!user=hubdeploy-smoke-user", "tokens!user=hubdeploy-smoke-user"]
    assert "service-web" not in roles  # no scopes asked, none given


def test_authenticator_config_and_restricted_dummy(tmp_path, monkeypatch):
    path, _ = hub_json(tmp_path, authenticator={"class": "dummy", "config": {"allowed_users": ["ann"]}})
    c = load(monkeypatch, path)
    assert c.Authenticator.allowed_users == ["ann"]
    assert "allow_all" not in c.Authenticator


def test_other_authenticator_not_open(tmp_path, monkeypatch):
    path, _ = hub_json(
        tmp_path, authenticator={"class": "pam", "config": {"client_id": "abc", "allowed_organizations": ["x"]}}
    )
    c = load(monkeypatch, path)
    assert c.JupyterHub.authenticator_class.__mro__[1].__qualname__ == "PAMAuthenticator"
    assert c.Authenticator.client_id == "abc"
    assert "allow_all" not in c.Authenticator


def test_authenticator_not_installed_stops_the_hub(tmp_path, monkeypatch):
    path, _ = hub_json(tmp_path, authenticator={"class": "no-such-authenticator", "config": {}})
    with pytest.raises(SystemExit, match="'no-such-authenticator' is not installed"):
        load(monkeypatch, path)


def test_tls_site_cookies_are_secure_and_limit_comes_from_hub_json(tmp_path, monkeypatch):
    path, _ = hub_json(tmp_path, tls=True, named_server_limit_per_user=5)
    c = load(monkeypatch, path)
    assert c.JupyterHub.tornado_settings["cookie_options"] == {"samesite": "Lax", "secure": True}
    assert c.JupyterHub.named_server_limit_per_user == 5


def test_passthrough_authenticator_is_wrapped_too(tmp_path, monkeypatch):
    path, _ = hub_json(tmp_path, config={"JupyterHub": {"authenticator_class": "jupyterhub.auth.PAMAuthenticator",
                                                       "base_url": "/jh/", "named_server_limit_per_user": 0}})
    c = load(monkeypatch, path)
    assert c.JupyterHub.authenticator_class.__mro__[1].__qualname__ == "PAMAuthenticator"
    assert not c.JupyterHub.authenticator_class().validate_username("a\x1bb")
    csp = c.JupyterHub.tornado_settings["headers"]["Content-Security-Policy"]
    assert "report-uri /jh/hub/security/csp-report" in csp
    assert c.JupyterHub.named_server_limit_per_user == 0


def test_username_max_length_is_the_one_hub_json_carries(tmp_path, monkeypatch):
    site = SITE.replace("  admin_users: [admin]\n", "  admin_users: [admin]\n  username_max_length: 20\n")
    path, data = hub_json(tmp_path, site)
    assert data["username_max_length"] == 20
    auth = load(monkeypatch, path).JupyterHub.authenticator_class()
    assert auth.validate_username("a" * 20) and not auth.validate_username("a" * 21)
    # The default is the schema's alone: the hub never supplies one of its own.
    del data["username_max_length"]
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="hub.json lacks username_max_length$"):
        load(monkeypatch, path)


def test_passthrough_wins(tmp_path, monkeypatch):
    passthrough = {"JupyterHub": {"cleanup_servers": True}, "Authenticator": {"allow_all": False}}
    path, _ = hub_json(tmp_path, config=passthrough)
    c = load(monkeypatch, path)
    assert c.JupyterHub.cleanup_servers is True
    assert c.Authenticator.allow_all is False


def test_empty_secret_stops_the_hub(tmp_path, monkeypatch):
    path, data = hub_json(tmp_path)
    open(data["proxy"]["token_file"], "w").close()
    with pytest.raises(SystemExit, match="empty"):
        load(monkeypatch, path)


def test_jupyterhub_accepts_the_config(tmp_path, monkeypatch):
    """JupyterHub itself loads the file and builds the authenticator and proxy from it."""
    pytest.importorskip("jupyterhub")
    from jupyterhub.app import JupyterHub

    path, _ = hub_json(tmp_path, database={"url": f"sqlite:///{tmp_path}/jupyterhub.sqlite", "password_file": None})
    monkeypatch.setenv("HUBDEPLOY_HUB_JSON", str(path))
    app = JupyterHub()
    app.load_config_file(str(CONFIG))
    assert app.cleanup_servers is False
    assert app.authenticator_class.__name__ == "DummyAuthenticator"
    assert app.proxy_class.__name__ == "RouteKeepingProxy"
    assert app.spawner_class.__name__ == "HubdeploySpawner"


def test_a_real_jupyterhub_normalises_and_limits_usernames(tmp_path, monkeypatch):
    """JupyterHub 6.1.1 built from the config and a rendered hub.json: the site's admin,
    spelt full-width (ａｄｍｉｎ), is ``admin`` in the database; the login normalises
    before its admin check; the REST API's user creation (the bulk POST normalises, the
    single POST does not) never makes a second spelling or an over-long name."""
    pytest.importorskip("jupyterhub")
    path, _ = hub_json(tmp_path, SITE.replace("admin_users: [admin]", "admin_users: [ａｄｍｉｎ]"),
                       database={"url": f"sqlite:///{tmp_path}/jupyterhub.sqlite", "password_file": None})
    secret = tmp_path / "secrets" / "cookie_secret"
    secret.write_text("ab" * 32)
    secret.chmod(0o600)  # JupyterHub refuses a cookie secret others may read
    monkeypatch.setenv("HUBDEPLOY_HUB_JSON", str(path))
    asyncio.run(_normalises_and_limits(tmp_path))


async def _normalises_and_limits(tmp_path):
    from jupyterhub import orm
    from jupyterhub.app import JupyterHub
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer

    app = JupyterHub()
    await app.initialize(["-f", str(CONFIG)])
    assert app.authenticator.admin_users == {"admin"}
    assert [u.name for u in app.db.query(orm.User)] == ["admin"]
    login = await app.authenticator.get_authenticated_user(None, {"username": "ａｄｍｉｎ", "password": ""})
    assert (login["name"], login["admin"]) == ("admin", True)
    assert await app.authenticator.get_authenticated_user(None, {"username": "x" * 10_000, "password": ""}) is None

    token = orm.User.find(app.db, "admin").new_api_token()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = HTTPServer(app.tornado_application)
    server.listen(port, "127.0.0.1")
    client = AsyncHTTPClient()

    async def api(method, path, body=None):
        resp = await client.fetch(f"http://127.0.0.1:{port}/hub/api/{path}", method=method, raise_error=False,
                                  headers={"Authorization": f"token {token}"},
                                  body=json.dumps(body) if body is not None else (b"" if method == "POST" else None))
        return resp.code, json.loads(resp.body or b"null")

    try:
        code, created = await api("POST", "users", {"usernames": ["ｃａｒｏｌ", "r" * 64]})
        assert code == 201 and sorted(u["name"] for u in created) == ["carol", "r" * 64]
        assert (await api("POST", "users", {"usernames": ["ＣＡＲＯＬ"]}))[0] == 409  # carol again
        assert (await api("POST", f"users/{quote('ａｄｍｉｎ')}"))[0] == 400
        code, refused = await api("POST", "users", {"usernames": ["x" * 10_000]})
        assert code == 400 and refused["message"].startswith("Invalid username")
        assert (await api("POST", "users", {"usernames": ["r" * 65]}))[0] == 400
        assert (await api("POST", "users/" + "y" * 10_000))[0] == 400
        names = {u["name"] for u in (await api("GET", "users"))[1]}
        assert names == {"admin", "carol", "r" * 64}
    finally:
        server.stop()
        app.db.close()
