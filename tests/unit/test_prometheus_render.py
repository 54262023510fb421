"""services.prometheus: the rendered scrape config, compose service, token and image plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.contract.services import PROMETHEUS
from hubdeploy.errors import SiteError
from hubdeploy.images.plan import plan_images
from hubdeploy.site.loader import load_site_text, where
from hubdeploy.state.secrets import ensure_secrets, secret_names

SITE = """\
name: promsite
public: {{host: 0.0.0.0, port: 8000}}
services:
  prometheus: {prom}
profiles:
  - {{name: small, image: base, default: true}}
"""
REFS = {"base": "b:1", "hub": "h:1", "proxy": "p:1", "prometheus": "m:1"}


def _render(prom: str, tmp_path: Path):
    site = load_site_text(SITE.format(prom=prom), "site.yaml")
    files = render.render(site, tmp_path, REFS)
    return site, files, YAML(typ="safe").load(files["compose.yaml"])


def test_disabled_by_default_renders_nothing(tmp_path):
    site, files, doc = _render("{enabled: false}", tmp_path)
    assert "prometheus" not in doc["services"] and not any(k.startswith("prometheus/") for k in files)
    assert "prometheus" not in plan_images(site, tmp_path)
    assert PROMETHEUS.secret not in secret_names(site)


def test_scrape_config_uses_the_token_file_and_the_hub_metrics(tmp_path):
    _, files, _ = _render("{enabled: true, scrape_interval: 30}", tmp_path)
    conf = YAML(typ="safe").load(files["prometheus/prometheus.yml"])
    assert conf["global"]["scrape_interval"] == "30s"
    [job] = conf["scrape_configs"]
    assert job["metrics_path"] == "/hub/metrics"
    assert job["static_configs"] == [{"targets": ["hub:8081"]}]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/hubdeploy/scrape_token"}


def test_token_has_read_metrics_only_and_is_a_secret_file(tmp_path):
    site, files, doc = _render("{enabled: true}", tmp_path)
    svc = doc["services"]["prometheus"]
    assert svc["secrets"] == [PROMETHEUS.secret]
    assert doc["secrets"][PROMETHEUS.secret] == {"file": f"../secrets/{PROMETHEUS.secret}"}
    data = json.loads(files["hub/hub.json"])
    [entry] = [s for s in data["services"] if s["name"] == "prometheus"]
    assert entry["scopes"] == ["read:metrics"] and entry["token_file"] == f"/run/secrets/{PROMETHEUS.secret}"
    assert PROMETHEUS.secret in doc["services"]["hub"]["secrets"]
    # The token's value is in no rendered file.
    secrets = ensure_secrets(tmp_path / "secrets", secret_names(site))
    token = secrets[PROMETHEUS.secret].read_bytes().strip()
    assert len(token) >= 32 and not any(token in data for data in files.values())


def test_unpublished_prometheus_is_internal_only(tmp_path):
    _, _, doc = _render("{enabled: true}", tmp_path)
    svc = doc["services"]["prometheus"]
    assert "ports" not in svc and set(svc["networks"]) == {"internal"}
    assert "metrics" not in doc["networks"]
    assert svc["depends_on"] == {"hub": {"condition": "service_healthy"}}
    assert doc["volumes"]["prometheus-data"] == {"name": "hubdeploy-promsite-prometheus-data"}


def test_published_port_is_loopback_only_and_off_the_users_network(tmp_path):
    # The hub's public address is 0.0.0.0 here; Prometheus still binds loopback only.
    _, _, doc = _render("{enabled: true, port: 9191}", tmp_path)
    svc = doc["services"]["prometheus"]
    assert svc["ports"] == ["127.0.0.1:9191:9090"]
    assert set(svc["networks"]) == {"internal", "metrics"} and "users" not in svc["networks"]
    assert doc["networks"]["metrics"] == {"name": "hubdeploy-promsite-metrics"}
    assert "internal" not in doc["networks"]["metrics"]


def test_config_change_changes_the_config_hash(tmp_path):
    _, _, a = _render("{enabled: true, scrape_interval: 15}", tmp_path)
    _, _, b = _render("{enabled: true, scrape_interval: 20}", tmp_path)
    key = "hubdeploy.config-hash"
    assert a["services"]["prometheus"]["labels"][key] != b["services"]["prometheus"]["labels"][key]
    assert a["services"]["proxy"]["labels"][key] == b["services"]["proxy"]["labels"][key]


def test_image_plan_builds_debian_prometheus(tmp_path):
    site = load_site_text(SITE.format(prom="{enabled: true}"), "site.yaml")
    plans = plan_images(site, tmp_path)
    plan = plans["prometheus"]
    assert plan.parent == "debian" and plan.ref.startswith("hubdeploy/promsite-prometheus:")
    dockerfile = plan.files["Dockerfile"].decode()
    assert f"FROM {plans['debian'].ref}" in dockerfile and " prometheus " in dockerfile
    assert plans["hub"].labels["hubdeploy.jupyterhub-version"] == site.hub.jupyterhub_version


@pytest.mark.parametrize("prom, key", [("{enabled: true, host: 0.0.0.0}", "host"),
                                       ("{enabled: true, port: 0}", "port"),
                                       ("{enabled: true, retention: forever}", "retention")])
def test_schema_is_closed(prom, key):
    with pytest.raises(SiteError) as info:
        load_site_text(SITE.format(prom=prom), "site.yaml")
    assert f"services.prometheus.{key}" in info.value.message and "site.yaml:4:" in info.value.message


def test_where_names_file_line_and_column(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("name: x\nhub:\n  admin_users: []\n  jupyterhub_version: '5.5.4'\nprofiles: []\n")
    assert where(f, ("hub", "jupyterhub_version")) == f"{f}:4:3"
    assert where(f, ("hub", "nope")) == str(f)
