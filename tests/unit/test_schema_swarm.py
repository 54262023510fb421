"""orchestrator: swarm in the site file, and what it renders."""

import pytest

from hubdeploy.contract import strict
from hubdeploy.errors import SiteError
from hubdeploy.site.loader import load_site_text
from hubdeploy.render import compose as compose_render
from hubdeploy.render import hubdata

# Swarm publishes on every address: a swarm site says so (public.host 0.0.0.0).
BASE = "name: sw\nprofiles:\n  - {name: login, image: base%s}\npublic: {host: 0.0.0.0}\n"


def test_placement_needs_swarm():
    with pytest.raises(SiteError) as err:
        load_site_text(BASE % ", placement: {constraints: [node.role==worker]}", "site.yaml")
    assert "placement needs orchestrator: swarm" in str(err.value)
    assert "site.yaml:3" in str(err.value)
    with pytest.raises(SiteError, match="swarm settings need orchestrator: swarm"):
        load_site_text("swarm: {encrypted: true}\n" + BASE % "", "site.yaml")


def test_constraint_is_one_expression():
    for bad in ("'node.role == manager; rm -rf /'", "'--privileged'", "'node.role'"):
        with pytest.raises(SiteError, match="constraints"):
            load_site_text("orchestrator: swarm\n" + BASE % f", placement: {{constraints: [{bad}]}}", "site.yaml")


def test_swarm_renders_overlay_users_network_and_swarm_backend():
    site = load_site_text("orchestrator: swarm\nswarm: {encrypted: true}\n"
                          + BASE % ", placement: {constraints: [node.labels.role==login]}, reserve: {memory: 1G}",
                          "site.yaml")
    nets = compose_render.networks(site)
    assert nets["edge"] == {"name": "hubdeploy-sw-edge"}
    users = nets["users"]
    assert users == {"name": "hubdeploy-sw-users", "driver": "overlay", "attachable": True,
                     "driver_opts": {"encrypted": ""}}
    spawner = strict.plain(hubdata.spawner(site, {"base": "img:1"}))
    assert spawner["backend"] == "swarm"
    prof = spawner["profiles"][0]
    assert prof["placement"] == {"constraints": ["node.labels.role==login"], "spread": []}
    assert prof["reserve"] == {"cpu": None, "mem": 2**30}


def test_compose_stays_default():
    site = load_site_text(BASE % "", "site.yaml")
    assert compose_render.networks(site) == {"internal": {"name": "hubdeploy-sw-internal", "internal": True},
                                             "users": {"name": "hubdeploy-sw-users"}}
    assert strict.plain(hubdata.spawner(site, {"base": "img:1"}))["backend"] == "docker"


class _Engine:
    def __init__(self, swarm):
        self._swarm = swarm

    def info(self):
        return {"Swarm": self._swarm}


def test_up_needs_a_swarm_manager():
    from hubdeploy.errors import OperationError
    from hubdeploy.ops import swarm

    for state in ({"LocalNodeState": "inactive"}, {"LocalNodeState": "active", "ControlAvailable": False}):
        with pytest.raises(OperationError, match="not a swarm manager"):
            swarm.require_manager(_Engine(state))
    swarm.require_manager(_Engine({"LocalNodeState": "active", "ControlAvailable": True}))


# -- swarm.registry: images by digest ----------------------------------------------------

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("good", ["127.0.0.1:5000", "registry.example.org", "reg-1.site.gov:443"])
def test_registry_is_a_host_and_port(good):
    site = load_site_text(f"orchestrator: swarm\nswarm: {{registry: '{good}'}}\n" + BASE % "", "site.yaml")
    assert site.swarm.registry == good


@pytest.mark.parametrize("bad", ["http://reg:5000", "reg:5000/path", "reg 5000", "reg:port", ":5000"])
def test_a_bad_registry_names_file_line_and_key(bad):
    from hubdeploy.images.publish import REGISTRY_RE

    assert not REGISTRY_RE.fullmatch(bad)  # images push --registry refuses it alike
    with pytest.raises(SiteError) as err:
        load_site_text(f"orchestrator: swarm\nswarm:\n  registry: '{bad}'\n" + BASE % "", "site.yaml")
    assert err.value.exit_code == 2
    text = str(err.value)
    assert "site.yaml:3" in text and "swarm.registry" in text and "HOST or HOST:PORT" in text, text


def test_registry_needs_swarm():
    with pytest.raises(SiteError, match="swarm settings need orchestrator: swarm"):
        load_site_text("swarm: {registry: 'reg:5000'}\n" + BASE % "", "site.yaml")


def test_digest_references():
    from hubdeploy.errors import OperationError
    from hubdeploy.images.plan import ImagePlan
    from hubdeploy.ops import swarm

    plan = ImagePlan("base", "hubdeploy/sw-base:0123abcd", "debian", {}, {})
    repo = swarm.registry_repo(plan, "127.0.0.1:5000")
    assert repo == "127.0.0.1:5000/hubdeploy/sw-base"
    assert swarm.digest_ref(repo, DIGEST) == f"127.0.0.1:5000/hubdeploy/sw-base@{DIGEST}"
    for bad in ("", "sha256:abc", "md5:" + "0" * 32, DIGEST + "\n"):
        with pytest.raises(OperationError):
            swarm.digest_ref(repo, bad)
    # The engine's RepoDigests: only this repository's, only sha256.
    digests = [f"other:5000/hubdeploy/sw-base@{'sha256:' + 'cd' * 32}", f"{repo}@{DIGEST}", f"{repo}@md5:00"]
    assert swarm.known_digest(digests, repo) == DIGEST
    assert swarm.known_digest(digests[:1], repo) is None
    assert swarm.known_digest([], repo) is None


def test_login_images_are_what_swarm_runs():
    from hubdeploy.ops import swarm

    site = load_site_text(
        "name: sw\norchestrator: swarm\npublic: {host: 0.0.0.0}\nimages: {collaborations: {astro: {}}}\n"
        "slurm: {submit: {prefix: [ssh, login1, '{name}']}}\nprofiles:\n"
        "  - {name: a, image: astro}\n  - {name: b, image: base}\n  - {name: c, image: astro}\n"
        "  - {name: d, image: base, node: compute}\n", "site.yaml")
    assert swarm.login_images(site) == ["astro", "base"]


def test_pinned_images_reach_login_profiles_only():
    site = load_site_text(
        "name: sw\norchestrator: swarm\npublic: {host: 0.0.0.0}\nswarm: {registry: 'reg:5000'}\n"
        "slurm: {submit: {prefix: [ssh, login1, '{name}']}}\nprofiles:\n"
        "  - {name: login, image: base}\n  - {name: batch, image: base, node: compute}\n", "site.yaml")
    pinned = {"base": f"reg:5000/hubdeploy/sw-base@{DIGEST}"}
    profiles = {p["name"]: p for p in strict.plain(hubdata.spawner(site, {"base": "img:1"}, pinned))["profiles"]}
    assert profiles["login"]["image_ref"] == pinned["base"]
    assert profiles["batch"]["image_ref"] == "img:1"  # the Slurm cluster is not the swarm
    assert [p["image_ref"] for p in strict.plain(hubdata.spawner(site, {"base": "img:1"}))["profiles"]] == ["img:1", "img:1"]


def test_rendered_hub_json_carries_the_digest_and_stays_deterministic():
    import json
    from pathlib import Path

    from hubdeploy import render

    site = load_site_text("orchestrator: swarm\nswarm: {registry: 'reg:5000'}\n" + BASE % "", "site.yaml")
    refs = {"base": "hubdeploy/sw-base:1", "hub": "hubdeploy/sw-hub:1", "proxy": "hubdeploy/sw-proxy:1",
            "debian": "hubdeploy/sw-debian:1"}
    pinned = {"base": f"reg:5000/hubdeploy/sw-base@{DIGEST}"}
    files = render.render(site, Path("."), refs, pinned=pinned)
    assert files == render.render(site, Path("."), dict(refs), pinned=dict(pinned))
    (prof,) = json.loads(files["hub/hub.json"])["spawner"]["profiles"]
    assert prof["image_ref"] == pinned["base"]
    # A new digest recreates the hub (its config hash covers hub.json); the rest stays.
    other = render.render(site, Path("."), refs, pinned={"base": f"reg:5000/hubdeploy/sw-base@sha256:{'0' * 64}"})
    assert other["compose.yaml"] != files["compose.yaml"]
    assert other["proxy/entrypoint.sh"] == files["proxy/entrypoint.sh"]
