"""hubdeploy.hub.configure: each section alone on a traitlets Config, then apply on the
hub.json render writes for several sites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

pytest.importorskip("jupyterhub")

from hubdeploy.backends.docker import DockerConfig  # noqa: E402
from hubdeploy.backends.slurm import SlurmConfig  # noqa: E402
from hubdeploy.hub import configure  # noqa: E402
from test_hub_config import CONFIG, SITE, hub_json  # noqa: E402
from hubdeploy.contract.layout import SECRETS_DIR  # noqa: E402
from hubdeploy.site.loader import load_site  # noqa: E402
from hubdeploy.state.secrets import secret_names  # noqa: E402
from test_hubjson import SITES, render_site  # noqa: E402

SECTIONS = [configure.hub_and_proxy, configure.database, configure.authenticator, configure.services,
            configure.spawner, configure.web_layer]


def read(tmp_path, text=SITE, **changes):
    """hub.json as render writes it for ``text`` (secrets in tmp_path), read as the hub reads it."""
    path, _ = hub_json(tmp_path, text, **changes)
    return configure.load(path)


def rendered_here(tmp_path: Path, text: str) -> Path:
    """The hub.json render writes for the site ``text``, its secrets generated into
    tmp_path and named there instead of /run/secrets."""
    _, written = render_site(tmp_path, text)
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    for name in secret_names(load_site(tmp_path / "site.yaml")):
        (secrets / name).write_text(f"value-of-{name}\n")
    path = tmp_path / "hub-here.json"
    path.write_text(written.read_text().replace(f'"{SECRETS_DIR}/', f'"{secrets}/'))
    return path


def keys(c: Config) -> set[tuple[str, str]]:
    return {(section, key) for section, traits in c.items() for key in traits}


def test_hub_and_proxy_alone(tmp_path):
    c = Config()
    configure.hub_and_proxy(c, read(tmp_path))
    assert c.JupyterHub.hub_bind_url == "http://0.0.0.0:8081" and c.JupyterHub.hub_connect_url == "http://hub:8081"
    assert c.JupyterHub.cleanup_servers is False and c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.proxy_class == "hubdeploy.hub.proxy.RouteKeepingProxy"
    assert (c.ConfigurableHTTPProxy.should_start, c.ConfigurableHTTPProxy.api_url) == (False, "http://proxy-api:8001")
    assert c.ConfigurableHTTPProxy.auth_token == "value-of-proxy_token"
    assert c.RouteKeepingProxy.route_check_interval == 7  # the site's, through hub.json


def test_database_alone(tmp_path):
    c = Config()
    configure.database(c, read(tmp_path))
    assert keys(c) == {("JupyterHub", "db_url")}
    assert c.JupyterHub.db_url == "postgresql+psycopg2://jupyterhub:value-of-db_password@db:5432/jupyterhub"
    c = Config()
    configure.database(c, read(tmp_path, SITE.replace("database: {type: postgresql}\n", "")))
    assert c.JupyterHub.db_url == "sqlite:////srv/jupyterhub/data/jupyterhub.sqlite"


def test_authenticator_alone(tmp_path):
    c = Config()
    configure.authenticator(c, read(tmp_path))
    assert c.JupyterHub.authenticator_class == "dummy" and c.Authenticator.admin_users == {"admin"}
    assert c.Authenticator.allow_all is True  # the demo's dummy, no users listed
    c = Config()
    configure.authenticator(c, read(tmp_path, authenticator={"class": "dummy", "config": {"allowed_users": ["a"]}}))
    assert c.Authenticator.allowed_users == ["a"] and "allow_all" not in c.Authenticator
    c = Config()
    configure.authenticator(c, read(tmp_path, config={"DummyAuthenticator": {"allowed_users": ["a"]}}))
    assert "allow_all" not in c.Authenticator  # listed in the pass-through


def test_services_alone(tmp_path):
    c = Config()
    configure.services(c, read(tmp_path))
    assert keys(c) == {("JupyterHub", "services"), ("JupyterHub", "load_roles")}
    assert [s["name"] for s in c.JupyterHub.services] == ["hubdeploy-smoke", "hubdeploy-cli", "idle-culler", "web"]
    assert {r["name"] for r in c.JupyterHub.load_roles} == {
        "service-hubdeploy-smoke", "service-hubdeploy-cli", "service-idle-culler"}


def test_spawner_alone(tmp_path):
    hub = read(tmp_path)
    c = Config()
    configure.spawner(c, hub)
    assert c.JupyterHub.spawner_class == "hubdeploy.hub.spawner.HubdeploySpawner"
    assert c.HubdeploySpawner.profiles == list(hub.spawner.profiles)
    assert c.HubdeploySpawner.backend == "docker" and c.HubdeploySpawner.identity is hub.identity
    (docker,) = c.HubdeploySpawner.backend_configs.values()
    assert isinstance(docker, DockerConfig) and docker.allowed_images == ("hubdeploy/hdtconf-base:0123456789ab",)
    assert (c.HubdeploySpawner.concurrent_spawn_limit, c.JupyterHub.concurrent_spawn_limit) == (8, 0)


def test_spawner_reads_every_backends_config_and_stops_the_hub_on_a_bad_one(tmp_path):
    path = rendered_here(tmp_path, SITES["own-slurm"])
    c = Config()
    configure.spawner(c, configure.load(path))
    assert isinstance(c.HubdeploySpawner.backend_configs["slurm"], SlurmConfig)
    data = json.loads(path.read_text())
    data["spawner"]["backends"]["slurm"]["submit_prefx"] = ["ssh"]
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"^hubdeploy: hub.json spawner: slurm backend config: unknown key "
                                         r"submit_prefx \(did you mean submit_prefix\?\)"):
        configure.spawner(Config(), configure.load(path))


def test_web_layer_alone(tmp_path):
    c = Config()
    configure.web_layer(c, read(tmp_path, tls=True, named_server_limit_per_user=5,
                                config={"JupyterHub": {"base_url": "/jh/"}}))
    assert c.JupyterHub.named_server_limit_per_user == 5
    assert c.JupyterHub.tornado_settings["cookie_options"] == {"samesite": "Lax", "secure": True}
    assert "report-uri /jh/hub/security/csp-report" in c.JupyterHub.tornado_settings["headers"][
        "Content-Security-Policy"]
    assert c.JupyterHub.logging_config["handlers"]["console"]["filters"] == ["hubdeploy_web"]


def test_passthrough_alone_and_last(tmp_path):
    hub = read(tmp_path, config={"JupyterHub": {"cleanup_servers": True}, "Spawner": {"start_timeout": 99}})
    c = Config()
    configure.passthrough(c, hub)
    assert keys(c) == {("JupyterHub", "cleanup_servers"), ("Spawner", "start_timeout")}
    c = Config()
    configure.apply(c, hub)
    assert c.JupyterHub.cleanup_servers is True  # over hub_and_proxy's False


def test_username_policy_alone(tmp_path):
    c = Config()
    c.JupyterHub.authenticator_class = "jupyterhub.auth.PAMAuthenticator"
    configure.username_policy(c, read(tmp_path))
    cls = c.JupyterHub.authenticator_class
    assert cls.__mro__[1].__qualname__ == "PAMAuthenticator" and cls.username_max_length == 64
    c.JupyterHub.authenticator_class = "no-such-authenticator"
    with pytest.raises(SystemExit, match="'no-such-authenticator' is not installed"):
        configure.username_policy(c, read(tmp_path))


def test_each_section_sets_only_its_own_traits(tmp_path):
    """No section overrides another's: the order of apply matters only for the
    pass-through and the username policy, which come last on purpose."""
    hub = read(tmp_path)
    seen: dict[tuple[str, str], str] = {}
    for section in SECTIONS:
        c = Config()
        section(c, hub)
        for key in keys(c):
            assert key not in seen, f"{section.__name__} sets {key}, which {seen.get(key)} sets"
            seen[key] = section.__name__


def test_a_hub_json_the_hub_cannot_read_stops_it_naming_the_key(tmp_path):
    path, data = hub_json(tmp_path)
    del data["spawner"]["concurrent_spawn_limit"]
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"^hubdeploy: .*hub.json lacks spawner.concurrent_spawn_limit$"):
        configure.load(path)


@pytest.mark.parametrize("site", sorted(SITES))
def test_apply_on_real_rendered_hub_json(tmp_path, site, monkeypatch):
    """Every site's hub.json configures the hub, and the static config file is apply."""
    path = rendered_here(tmp_path, SITES[site])
    hub = configure.load(path)
    c = Config()
    configure.apply(c, hub)
    assert c.HubdeploySpawner.profiles == list(hub.spawner.profiles)
    assert set(c.HubdeploySpawner.backend_configs) == {hub.spawner.backend, *hub.spawner.backends}
    assert [s["name"] for s in c.JupyterHub.services] == [s.name for s in hub.services]
    assert c.JupyterHub.authenticator_class.username_max_length == hub.username_max_length
    assert c.RouteKeepingProxy.route_check_interval == hub.proxy.route_check_interval
    assert c.JupyterHub.named_server_limit_per_user == hub.named_server_limit_per_user
    assert c.HubdeploySpawner.concurrent_spawn_limit == hub.spawner.concurrent_spawn_limit
    monkeypatch.setenv("HUBDEPLOY_HUB_JSON", str(path))
    from_file = PyFileConfigLoader(CONFIG.name, path=str(Path(CONFIG).parent)).load_config()
    assert _comparable(from_file) == _comparable(c)


def _comparable(c: Config) -> dict:
    # The username policy makes a new subclass each time: compare what it wraps.
    out = {k: dict(v) for k, v in c.items()}
    cls = out["JupyterHub"].pop("authenticator_class")
    return {**out, "wrapped": (cls.__mro__[1], cls.username_max_length)}
