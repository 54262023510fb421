"""Least privilege in the rendered stack and in login-node containers (compose/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.backends.base import ServerSpec
from hubdeploy.backends.docker import DockerBackend, DockerConfig
from hubdeploy.errors import SiteError
from hubdeploy.render.hardening import PROFILES, REASONS
from hubdeploy.site.loader import load_site, load_site_text
from hubsections import profile

ROOT = Path(__file__).resolve().parents[2]
REFS = {
    "base": "hubdeploy/h-base:000000000001",
    "astro": "hubdeploy/h-astro:000000000002",
    "hub": "hubdeploy/h-hub:000000000003",
    "proxy": "hubdeploy/h-proxy:000000000004",
    "db": "hubdeploy/h-db:000000000005",
    "slurm": "hubdeploy/h-slurm:000000000006",
    "slurmdbd": "hubdeploy/h-slurmdbd:000000000009",
}


def compose(site) -> dict:
    return YAML(typ="safe").load(render.render(site, ROOT / "config" / "example", REFS)["compose.yaml"])


@pytest.fixture(scope="module")
def example():
    return load_site(ROOT / "config" / "example" / "site.yaml")


def test_every_service_drops_all_capabilities_and_is_bounded(example):
    svcs = compose(example)["services"]
    assert set(svcs) == {"proxy", "engine-proxy", "hub", "idle-culler", "slurmdbd", "slurmctld", "slurm-c1",
                         "slurm-c2"}
    for name, svc in svcs.items():
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert set(svc.get("cap_add", [])) <= set(REASONS), name
        assert svc["pids_limit"] >= 32 and svc["mem_limit"] == svc["memswap_limit"] > 0, name
        assert svc["cpu_period"] == 100000 and svc["cpu_quota"] > 0, name
    for name in ("proxy", "hub", "idle-culler"):
        assert svcs[name]["read_only"] is True and svcs[name]["tmpfs"] == ["/tmp:rw,nosuid,nodev,noexec"]
    assert "read_only" not in svcs["slurm-c1"]
    # The hub never switches users; only services that drop from root may.
    assert "SETUID" not in svcs["hub"]["cap_add"] and "KILL" in svcs["slurm-c1"]["cap_add"]


def test_every_added_capability_has_a_reason_in_the_readme():
    readme = (ROOT / "compose" / "README.md").read_text()
    for cap in {c for h in PROFILES.values() for c in h.cap_add}:
        assert cap in REASONS and cap in readme, cap


def test_node_containers_are_bounded_by_what_slurm_schedules(example):
    c1 = compose(example)["services"]["slurm-c1"]
    # slurm.cluster: cpus 1, memory 2G; plus 512M for the daemons.
    assert c1["mem_limit"] == (2048 + 512) * 2**20 and c1["cpu_quota"] == 100000


def test_limits_are_the_sites_and_checked(example):
    text = (ROOT / "config" / "example" / "site.yaml").read_text()
    site = load_site_text(text + "limits:\n  hub: {memory: 3G, cpus: 4, pids: 4000}\n", "site.yaml")
    hub = compose(site)["services"]["hub"]
    assert (hub["mem_limit"], hub["cpu_quota"], hub["pids_limit"]) == (3 * 2**30, 400000, 4000)
    with pytest.raises(SiteError) as err:
        load_site_text(text + "limits:\n  hub: {memory: 3G, cpus: 4, pid: 4000}\n", "site.yaml")
    assert "limits.hub" in str(err.value) and "pid" in str(err.value)


def test_profile_pids_limit_has_a_default_and_reaches_hub_json(example):
    files = render.render(example, ROOT / "config" / "example", REFS)
    import json

    profiles = json.loads(files["hub/hub.json"])["spawner"]["profiles"]
    assert {p["pids_limit"] for p in profiles} == {512}
    text = (ROOT / "config" / "example" / "site.yaml").read_text().replace("pids_limit: 512", "pids_limit: 8")
    with pytest.raises(SiteError) as err:
        load_site_text(text, "site.yaml")
    assert "pids_limit" in str(err.value)


def test_a_site_image_without_digest_is_warned_about(example):
    text = (ROOT / "config" / "example" / "site.yaml").read_text().replace(
        "  idle_culler:", "  extra:\n    - {name: mon, command: [mon], image: 'example.org/mon:1'}\n  idle_culler:")
    assert any("mon:1 is not pinned by digest" in w for w in load_site_text(text, "site.yaml").warnings())
    pinned = text.replace("mon:1", "mon:1@sha256:" + "a" * 64)
    assert not any("digest" in w for w in load_site_text(pinned, "site.yaml").warnings())


def test_login_containers_drop_capabilities_and_take_the_profiles_pids_limit():
    backend = DockerBackend(DockerConfig(network="n", prefix="hubdeploy-x", site="x", allowed_images=("img",)))
    spec = ServerSpec(user="u", server_name="", cmd=["jupyterhub-singleuser"], env={}, port=8888,
                      profile=profile(name="p", image_ref="img", pids_limit=200))
    assert backend._confinement(spec) == {
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "pids_limit": 200}
