"""The engine proxy's swarm rules (orchestrator swarm): the swarm backend's own calls
pass, a service or config that is not the site's, or that reaches beyond it, is refused."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from test_engineproxy_policy import OBJECTS, ask, refused

from hubdeploy.engineproxy.policy import Allow

OBJECTS.update({
    ("service", "hubdeploy-alpha-nb-ann"): {"ID": "s-mine", "Spec": {"Labels": {"hubdeploy.site": "alpha"}}},
    ("service", "s-mine"): {"ID": "s-mine", "Spec": {"Labels": {"hubdeploy.site": "alpha"}}},
    ("service", "s-theirs"): {"ID": "s-theirs", "Spec": {"Labels": {"hubdeploy.site": "beta"}}},
    ("config", "c-mine"): {"ID": "c-mine", "Spec": {"Labels": {"hubdeploy.site": "alpha"}}},
    ("config", "c-theirs"): {"ID": "c-theirs", "Spec": {"Labels": {"hubdeploy.site": "beta"}}},
})
SITE = {"hubdeploy.site": "alpha"}


def service(cs=None, task=None, **spec):
    body = {
        "Name": "hubdeploy-alpha-nb-ann",
        "Labels": SITE,
        "TaskTemplate": {
            "ContainerSpec": {"Image": "img", "Labels": SITE, "CapabilityDrop": ["ALL"],
                              "Mounts": [{"Type": "volume", "Source": "hubdeploy-alpha-homes", "Target": "/home"}],
                              "Configs": [{"ConfigID": "c-mine", "ConfigName": "hubdeploy-alpha-passwd-1"}],
                              **(cs or {})},
            "Networks": [{"Target": "hubdeploy-alpha-users", "Aliases": ["x"]}],
            **(task or {}),
        },
        "EndpointSpec": {"Mode": "dnsrr"},
        **spec,
    }
    return ask("POST", "/v1.41/services/create", body)


def test_the_swarm_backends_calls_are_allowed():
    assert isinstance(service(), Allow)
    assert isinstance(ask("POST", "/configs/create", {"Name": "hubdeploy-alpha-passwd-1", "Labels": SITE,
                                                      "Data": "eA=="}), Allow)
    got = ask("GET", "/v1.41/services/hubdeploy-alpha-nb-ann")
    assert isinstance(got, Allow) and got.target == "/v1.41/services/s-mine"
    assert isinstance(ask("DELETE", "/services/s-mine"), Allow)
    assert isinstance(ask("DELETE", "/configs/c-mine"), Allow)
    tasks = ask("GET", "/tasks", query="filters=" + json.dumps({"service": ["hubdeploy-alpha-nb-ann"]}))
    assert isinstance(tasks, Allow)
    assert json.loads(parse_qs(tasks.target.split("?", 1)[1])["filters"][0])["service"] == ["s-mine"]
    listing = ask("GET", "/services", query="filters=" + json.dumps({"label": ["hubdeploy.user"]}))
    assert json.loads(parse_qs(listing.target.split("?", 1)[1])["filters"][0])["label"] == [
        "hubdeploy.user", "hubdeploy.site=alpha"]


@pytest.mark.parametrize("kwargs, rule", [
    ({"Name": "hubdeploy-beta-nb-ann"}, "name"),
    ({"Labels": {}}, "labels"),
    ({"cs": {"Labels": {}}}, "labels"),
    ({"cs": {"Privileges": {"SELinuxContext": {"Disable": True}}}}, "privileges"),
    ({"cs": {"CapabilityAdd": ["SYS_ADMIN"]}}, "cap-add"),
    ({"cs": {"Secrets": [{"SecretID": "x"}]}}, "secrets"),
    ({"cs": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}}, "bind"),
    ({"cs": {"Mounts": [{"Type": "volume", "Source": "hubdeploy-alpha-x-homes", "Target": "/h"}]}}, "volume"),
    ({"cs": {"Configs": [{"ConfigID": "c-theirs"}]}}, "foreign-config"),
    ({"task": {"Networks": [{"Target": "bridge"}]}}, "network"),
    ({"task": {"PluginSpec": {"Name": "x"}}}, "runtime"),
    ({"EndpointSpec": {"Ports": [{"TargetPort": 8888, "PublishedPort": 80}]}}, "portbindings"),
])
def test_service_create_refusals(kwargs, rule):
    refused(service(**kwargs), rule)


def test_other_sites_services_configs_and_tasks_are_untouchable():
    refused(ask("DELETE", "/services/s-theirs"), "foreign-service")
    refused(ask("GET", "/configs/c-theirs"), "foreign-config")
    refused(ask("GET", "/tasks", query="filters=" + json.dumps({"service": ["s-theirs"]})), "foreign-service")
    refused(ask("GET", "/tasks"), "not-allowed")  # every task of the swarm
    refused(ask("POST", "/configs/create", {"Name": "hubdeploy-alpha-x", "Labels": {}}), "labels")
    refused(ask("POST", "/services/s-mine/update", {}), "not-allowed")
    refused(ask("GET", "/secrets"), "not-allowed")
    refused(ask("POST", "/swarm/leave"), "not-allowed")


def test_a_notebook_image_by_digest_from_the_sites_registry_is_allowed():
    """swarm.registry: the service runs REGISTRY/NAME@sha256:..., and the backend first
    reads that image's /etc/passwd through a never-started probe container."""
    from test_engineproxy_policy import create

    image = "127.0.0.1:5000/hubdeploy/alpha-base@sha256:" + "e3" * 32
    d = service(cs={"Image": image})
    assert isinstance(d, Allow) and d.rule == "service-create"
    probe = create({"NetworkMode": "none"}, name="hubdeploy-alpha-etc-probe-1234", Image=image)
    assert isinstance(probe, Allow) and probe.rule == "create"
    # The SDK quotes '@' in an inspect path; the registry's port stays a path segment.
    got = ask("GET", "/v1.41/images/127.0.0.1:5000/hubdeploy/alpha-base%40sha256:" + "e3" * 32 + "/json")
    assert isinstance(got, Allow) and got.rule == "image-inspect"
    # Still no pull: the manager holds the image (up pulls it back after the push).
    refused(ask("POST", "/images/create", query="fromImage=127.0.0.1:5000/hubdeploy/alpha-base&tag=sha256:"
                + "e3" * 32), "not-allowed")
