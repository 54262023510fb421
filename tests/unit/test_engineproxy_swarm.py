"""The engine proxy's swarm rules (orchestrator swarm): the swarm backend's own calls,
recorded from its code, pass; a service or config that is not the site's, or that
reaches beyond it, is refused."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from urllib.parse import parse_qs

import pytest
from enginerecorder import recording_client
from test_engineproxy_policy import ANN, IMAGE, OBJECTS, PROFILE, ask, lookup, refused

from hubdeploy.backends.base import ServerSpec
from hubdeploy.backends.swarm import SwarmBackend, SwarmConfig
from hubdeploy.engineproxy.policy import Allow, SitePolicy, decide

OBJECTS.update({
    ("service", "hubdeploy-alpha-nb-ann"): {"ID": "s-mine", "Spec": {"Labels": {"hubdeploy.site": "alpha"}}},
    ("service", "s-mine"): {"ID": "s-mine", "Spec": {"Labels": {"hubdeploy.site": "alpha"}}},
    ("service", "s-theirs"): {"ID": "s-theirs", "Spec": {"Labels": {"hubdeploy.site": "beta"}}},
    # The id the recorder answers a create with.
    ("config", "s" * 25): {"ID": "s" * 25, "Spec": {"Labels": {"hubdeploy.site": "alpha"}}},
    ("config", "cmine"): {"ID": "cmine", "Spec": {"Labels": {"hubdeploy.site": "alpha"}}},
    ("config", "ctheirs"): {"ID": "ctheirs", "Spec": {"Labels": {"hubdeploy.site": "beta"}}},
})
DIGEST = "127.0.0.1:5000/hubdeploy/alpha-base@sha256:" + "e3" * 32
SWARM_POLICY = SitePolicy("alpha", bind_paths=("/srv/homes",), images=frozenset({IMAGE, DIGEST}))


class RecordedSwarm(SwarmBackend):
    def __init__(self):
        super().__init__(SwarmConfig(network="hubdeploy-alpha-users", prefix="hubdeploy-alpha", site="alpha",
                                     allowed_images=(IMAGE, DIGEST), homes="/srv/homes"))
        self.recorded_client, self.recorder = recording_client()

    def _make_client(self):
        return self.recorded_client


def swarm_start(image=IMAGE):
    backend = RecordedSwarm()
    spec = ServerSpec("ann", "", replace(PROFILE, image_ref=image, volumes=()), identity=ANN)
    name, host = backend._names(spec)
    backend._create_sync(spec, name, host, {})
    return backend.recorder.requests


def _service_body():
    req = next(r for r in swarm_start() if r.path.endswith("/services/create"))
    return json.loads(req.body)


@pytest.mark.parametrize("image", [IMAGE, DIGEST], ids=["tag", "registry-digest"])
def test_every_request_of_a_swarm_backend_start_is_allowed(image):
    rules = []
    for req in swarm_start(image):
        d = decide(req, SWARM_POLICY, lookup)
        assert isinstance(d, Allow), (req.method, req.path, req.body[:300], d)
        rules.append(d.rule)
    # The probe that reads the image's account files, the user's configs, the service.
    assert rules == ["list-site-services", "create", "container-json", "container-archive-get",
                     "container-archive-get", "container-remove", "list-site-configs", "config-create",
                     "list-site-configs", "config-create", "service-create"]


def test_the_swarm_backends_other_calls_are_allowed():
    got = ask("GET", "/v1.41/services/hubdeploy-alpha-nb-ann")
    assert isinstance(got, Allow) and got.target == "/v1.41/services/s-mine"
    assert isinstance(ask("DELETE", "/services/s-mine"), Allow)
    assert isinstance(ask("DELETE", "/configs/cmine"), Allow)
    tasks = ask("GET", "/tasks", query="filters=" + json.dumps({"service": ["hubdeploy-alpha-nb-ann"]}))
    assert isinstance(tasks, Allow)
    assert json.loads(parse_qs(tasks.target.split("?", 1)[1])["filters"][0])["service"] == ["s-mine"]
    listing = ask("GET", "/services", query="filters=" + json.dumps({"label": ["hubdeploy.user"]}))
    assert json.loads(parse_qs(listing.target.split("?", 1)[1])["filters"][0])["label"] == [
        "hubdeploy.user", "hubdeploy.site=alpha"]


def _with(path: tuple, value):
    body = copy.deepcopy(_service_body())
    where = body
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return body


CS = ("TaskTemplate", "ContainerSpec")


@pytest.mark.parametrize("path,value,rule", [
    (("Name",), "hubdeploy-beta-nb-ann", "name"),
    (("Labels",), {}, "labels"),
    ((*CS, "Labels"), {"hubdeploy.site": "alpha"}, "labels"),
    ((*CS, "Privileges"), {"SELinuxContext": {"Disable": True}}, "field"),
    ((*CS, "CapabilityAdd"), ["SYS_ADMIN"], "field"),
    ((*CS, "capabilityadd"), ["SYS_ADMIN"], "field"),
    ((*CS, "mounts"), [{"Type": "bind", "Source": "/", "Target": "/host"}], "field-case"),
    ((*CS, "CapabilityDrop"), [], "cap-drop"),
    ((*CS, "Secrets"), [{"SecretID": "x"}], "field"),
    ((*CS, "Image"), "hubdeploy/alpha-slurm:1", "image"),
    ((*CS, "User"), "0:0", "user"),
    ((*CS, "Mounts"), [{"Type": "bind", "Source": "/", "Target": "/host"}], "bind"),
    ((*CS, "Mounts"), [{"Type": "volume", "Source": "hubdeploy-alpha-x-homes", "Target": "/h"}], "volume"),
    ((*CS, "Configs"), [{"ConfigID": "ctheirs", "File": {"Name": "/etc/passwd"}}], "foreign-config"),
    ((*CS, "Configs"), [{"ConfigID": "cmine", "File": {"Name": "/etc/shadow"}}], "field-value"),
    (("TaskTemplate", "Networks"), [{"Target": "bridge"}], "network"),
    (("TaskTemplate", "PluginSpec"), {"Name": "x"}, "field"),
    (("TaskTemplate", "Resources", "Limits"), {"NanoCPUs": 1}, "field-missing"),
    (("EndpointSpec",), {"Mode": "dnsrr", "Ports": [{"TargetPort": 8888, "PublishedPort": 80}]}, "field"),
    (("Mode",), {"Global": {}}, "field"),
    (("Mode",), {"replicated": {"Replicas": 1}}, "field-case"),
])
def test_service_create_refusals(path, value, rule):
    refused(decide_service(_with(path, value)), rule)


def decide_service(body):
    from hubdeploy.engineproxy.policy import Request

    return decide(Request("POST", "/v1.41/services/create", "", json.dumps(body).encode()), SWARM_POLICY, lookup)


def test_other_sites_services_configs_and_tasks_are_untouchable():
    refused(ask("DELETE", "/services/s-theirs"), "foreign-service")
    refused(ask("GET", "/configs/ctheirs"), "foreign-config")
    refused(ask("GET", "/tasks", query="filters=" + json.dumps({"service": ["s-theirs"]})), "foreign-service")
    refused(ask("GET", "/tasks"), "not-allowed")  # every task of the swarm
    refused(ask("POST", "/configs/create", {"Name": "hubdeploy-alpha-x", "Labels": {}, "Data": ""}), "labels")
    refused(ask("POST", "/services/s-mine/update", {}), "not-allowed")
    refused(ask("GET", "/secrets"), "not-allowed")
    refused(ask("POST", "/swarm/leave"), "not-allowed")
    refused(ask("POST", "/images/create", query="fromImage=127.0.0.1:5000/hubdeploy/alpha-base&tag=sha256:"
                + "e3" * 32), "not-allowed")
