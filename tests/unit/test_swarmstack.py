"""stack.yaml: the compose services said in swarm's terms (hubdeploy.render.swarmstack)."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from hubdeploy.errors import SiteError
from hubdeploy.site.loader import load_site_text
from hubdeploy.render import render_files, swarmstack
from hubdeploy.render import Inputs

SITE = """\
name: sw
public: {host: 0.0.0.0, port: 8443}
orchestrator: swarm
swarm: {encrypted: true}
database: {type: postgresql}
profiles:
  - {name: login, image: base}
"""
INPUTS = Inputs(hub_config=b"# hub config\n", proxy_entrypoint=b"#!/bin/sh\n")


def refs(site) -> dict[str, str]:
    return {n: f"hubdeploy/{site.name}-{n}:000000000000" for n in [*site.images.names(), "debian", "hub", "proxy", "db"]}


def rendered(text: str = SITE, node: str = "n0de1d", inputs: Inputs = INPUTS):
    site = load_site_text(text, "site.yaml")
    files = render_files(site, refs(site), inputs, swarm_node=node)
    yaml = YAML(typ="safe")
    return site, files, yaml.load(files["compose.yaml"]), yaml.load(files["stack.yaml"])


def test_every_compose_service_is_a_swarm_service_on_the_manager():
    _, _, compose, stack = rendered()
    assert stack["version"] == swarmstack.STACK_FILE_VERSION
    assert set(stack["services"]) == set(compose["services"])
    for name, svc in stack["services"].items():
        deploy = svc["deploy"]
        assert deploy["placement"]["constraints"] == ["node.id == n0de1d"], name
        assert deploy["restart_policy"]["condition"] == "any"
        assert deploy["update_config"] == {"order": "stop-first", "failure_action": "rollback"}
        assert deploy["endpoint_mode"] == "dnsrr"
        assert deploy["labels"]["hubdeploy.site"] == "sw"
        # What swarm has no word for is not passed on (docker stack deploy would ignore
        # it silently, or refuse the file).
        assert not set(svc) & {"pull_policy", "depends_on", "cpu_shares", "security_opt", "mem_limit", "restart"}
        assert svc.get("healthcheck") == compose["services"][name].get("healthcheck")
        assert svc["cap_drop"] == ["ALL"]
        original = compose["services"][name]
        assert deploy["resources"]["limits"] == {
            "memory": str(original["mem_limit"]), "pids": original["pids_limit"],
            "cpus": f"{original['cpu_quota'] / original['cpu_period']:g}"}


def test_rendered_files_become_configs_named_by_their_content():
    _, files, _, stack = rendered()
    proxy = stack["services"]["proxy"]
    (config,) = proxy["configs"]
    assert config["target"] == "/etc/hubdeploy/proxy-entrypoint.sh" and config["mode"] == 0o444
    assert stack["configs"][config["source"]] == {"file": "./proxy/entrypoint.sh", "name": config["source"]}
    assert not [v for v in proxy.get("volumes", []) if isinstance(v, str) and v.startswith("./")]
    # Another entrypoint: another config (swarm's configs cannot change), the rest alike.
    other = INPUTS.__class__(hub_config=INPUTS.hub_config, proxy_entrypoint=b"#!/bin/sh\necho\n")
    _, _, _, again = rendered(inputs=other)
    assert again["services"]["proxy"]["configs"][0]["source"] != config["source"]
    assert again["services"]["hub"]["configs"] == stack["services"]["hub"]["configs"]


def test_secrets_are_swarm_secrets_for_root_only():
    _, _, compose, stack = rendered()
    assert set(stack["secrets"]) == set(compose["secrets"])
    for key, entry in stack["secrets"].items():
        assert entry == {"file": compose["secrets"][key]["file"], "name": f"hubdeploy-sw-{key}"}
    for svc in stack["services"].values():
        for ref in svc.get("secrets", []):
            assert ref == {"source": ref["source"], "target": ref["source"], "uid": "0", "gid": "0", "mode": 0o400}


def test_networks_are_overlay_and_the_port_is_a_host_port():
    _, _, _, stack = rendered()
    nets = stack["networks"]
    assert "edge" not in nets
    assert all(n["driver"] == "overlay" and n["driver_opts"] == {"encrypted": ""} for n in nets.values())
    assert nets["internal"]["internal"] is True
    assert stack["services"]["proxy"]["ports"] == [{"target": 8000, "published": 8443, "protocol": "tcp",
                                                    "mode": "host"}]
    assert not any("edge" in (svc.get("networks") or {}) for svc in stack["services"].values())


def test_no_manager_known_yet_means_any_manager():
    _, _, _, stack = rendered(node="")
    assert stack["services"]["hub"]["deploy"]["placement"]["constraints"] == ["node.role == manager"]


def test_render_is_deterministic_and_compose_sites_have_no_stack_file():
    assert rendered()[1] == rendered()[1]
    site = load_site_text("name: co\nprofiles:\n  - {name: login, image: base}\n", "site.yaml")
    assert "stack.yaml" not in render_files(site, refs(site), INPUTS)


@pytest.mark.parametrize("extra, key, words", [
    ("", "public.host", "publishes the proxy's port on every address"),
    ("slurm: {cluster: {nodes: 1}}\n", "slurm.cluster", "runs with orchestrator: compose"),
])
def test_what_a_swarm_cannot_do_is_refused(extra, key, words):
    text = SITE.replace("host: 0.0.0.0", "host: 127.0.0.1") if key == "public.host" else SITE + extra
    with pytest.raises(SiteError) as info:
        load_site_text(text, "site.yaml")
    assert key in str(info.value) and words in str(info.value)



class _Service:
    def __init__(self, status=None):
        self.attrs = {"UpdatedAt": "2026-11-29T12:50:00Z", **({"UpdateStatus": status} if status else {})}


def test_an_update_counts_only_when_it_began_since_the_deploy():
    """The engine's times trim the fraction's trailing zeros; an update that began before
    the deploy (an earlier one's) is not this deploy's, nor is any without ``since``."""
    from hubdeploy.ops.stackdeploy import _engine_time, _update_state

    assert _engine_time("2026-11-29T12:42:20.5Z") > _engine_time("2026-11-29T12:42:20.418927873Z")
    assert _engine_time("2026-11-29T12:42:20Z") < _engine_time("2026-11-29T12:42:20.000000001Z")
    since = "2026-11-29T12:42:20.418927873Z"
    assert _update_state(_Service(), since) is None
    assert _update_state(_Service({"State": "updating", "StartedAt": "2026-11-29T12:42:20.5Z"}), since) == "updating"
    assert _update_state(_Service({"State": "updating", "StartedAt": "2026-11-29T12:42:20.5Z"}), None) is None
    assert _update_state(_Service({"State": "rollback_completed", "StartedAt": "2026-11-29T12:42:21Z"}),
                         since) == "rollback_completed"
    assert _update_state(_Service({"State": "completed", "StartedAt": "2026-11-29T12:40:00.1Z"}), since) is None


def test_up_deploys_only_a_changed_stack_file(tmp_path):
    """The hash of the stack file last deployed healthy: the same file with every service
    running healthy sends nothing; another file, a missing or unhealthy service, or no
    record deploys."""
    from hubdeploy.ops import stackdeploy

    def rows(**states):
        return [{"service": name, "state": st, "health": health} for name, (st, health) in states.items()]

    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text("services: {}\n")
    both = rows(hub=("running", "healthy"), proxy=("running", None))
    expected = {"hub", "proxy"}
    assert not stackdeploy.deployed_unchanged(tmp_path, stack_file, both, expected)
    stackdeploy.record_deployed(tmp_path, stack_file)
    assert stackdeploy.deployed_unchanged(tmp_path, stack_file, both, expected)
    assert not stackdeploy.deployed_unchanged(tmp_path, stack_file, rows(hub=("running", "healthy")), expected)
    scaled_down = rows(hub=("shutdown", None), proxy=("running", None))
    assert not stackdeploy.deployed_unchanged(tmp_path, stack_file, scaled_down, expected)
    unhealthy = rows(hub=("running", "unhealthy"), proxy=("running", None))
    assert not stackdeploy.deployed_unchanged(tmp_path, stack_file, unhealthy, expected)
    stack_file.write_text("services: {hub: {}}\n")
    assert not stackdeploy.deployed_unchanged(tmp_path, stack_file, both, expected)
    stackdeploy.forget_deployed(tmp_path)
    assert not (tmp_path / stackdeploy.DEPLOYED_FILE).exists()
