"""orchestrator: swarm in the site file, and what it renders."""

import pytest

from hubdeploy.loader import load_site_text
from hubdeploy.errors import SiteError
from hubdeploy.render import compose as compose_render
from hubdeploy.render import hubdata

BASE = "name: sw\nprofiles:\n  - {name: login, image: base%s}\n"


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
    spawner = hubdata.spawner(site, {"base": "img:1"})
    assert spawner["backend"] == "swarm"
    prof = spawner["profiles"][0]
    assert prof["placement"] == {"constraints": ["node.labels.role==login"], "spread": []}
    assert prof["reserve"] == {"cpu": None, "mem": 2**30}


def test_compose_stays_default():
    site = load_site_text(BASE % "", "site.yaml")
    assert compose_render.networks(site) == {"internal": {"name": "hubdeploy-sw-internal", "internal": True},
                                             "users": {"name": "hubdeploy-sw-users"}}
    assert hubdata.spawner(site, {"base": "img:1"})["backend"] == "docker"


class _Engine:
    def __init__(self, swarm):
        self._swarm = swarm

    def info(self):
        return {"Swarm": self._swarm}


def test_up_needs_a_swarm_manager():
    from hubdeploy import swarm
    from hubdeploy.errors import OperationError

    for state in ({"LocalNodeState": "inactive"}, {"LocalNodeState": "active", "ControlAvailable": False}):
        with pytest.raises(OperationError, match="not a swarm manager"):
            swarm.require_manager(_Engine(state))
    swarm.require_manager(_Engine({"LocalNodeState": "active", "ControlAvailable": True}))
