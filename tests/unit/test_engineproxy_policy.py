"""The engine proxy's policy: what the backends really send is allowed, and forwarded as
checked; each way past the site's boundary is refused by its rule.

The backends' requests are recorded from their own code (``enginerecorder``); the
engine's inspect answers come from a dict (``OBJECTS``). The server and the real engine
are tested in tests/integration/test_engine_proxy*.py.
"""

from __future__ import annotations

import io
import json
import tarfile
from urllib.parse import parse_qs

import pytest
from enginerecorder import recording_client

from hubdeploy.backends.base import ServerSpec, parse_config
from hubdeploy.backends.docker import DockerBackend, DockerConfig
from hubdeploy.contract import slurmcmd
from hubdeploy.contract.identity import Group, Identity, etc_archive
from hubdeploy.engineproxy.policy import Allow, Deny, Request, SitePolicy, decide
from hubsections import profile

IMAGE = "hubdeploy/alpha-base:0123456789ab"
SLURM_IMAGE = "hubdeploy/alpha-slurm:0123456789ab"
POLICY = SitePolicy("alpha", bind_paths=("/srv/homes", "/data/shared/"), volumes=("datasets",),
                    images=frozenset({IMAGE}))
NB = "a" * 64
PROBE = "e" * 64
THEIRS = "b" * 64
HOLDER = "c" * 64
CTLD = "d" * 64
NODE = "f" * 64
SITE = {"hubdeploy.site": "alpha"}
NB_LABELS = {**SITE, "hubdeploy.user": "ann"}
COMPOSE = {"com.docker.compose.project": "hubdeploy-alpha"}


def _container(cid, labels, mounts=()):
    return {"Id": cid, "Config": {"Labels": labels}, "Mounts": list(mounts)}


OBJECTS = {
    ("container", "hubdeploy-alpha-nb-ann"): _container(NB, NB_LABELS),
    ("container", NB): _container(NB, NB_LABELS),
    ("container", "c" * 64): _container(NB, NB_LABELS),  # what the recorder answers a create with
    ("container", PROBE): _container(PROBE, SITE),
    ("container", CTLD): _container(CTLD, {**SITE, **COMPOSE, "com.docker.compose.service": "slurmctld"}),
    ("container", NODE): _container(NODE, {**SITE, **COMPOSE, "com.docker.compose.service": "slurm-c1"}),
    ("container", "hub"): _container("h" * 64, {**SITE, **COMPOSE, "com.docker.compose.service": "hub"}),
    ("container", "other"): _container(THEIRS, {"hubdeploy.site": "beta", "hubdeploy.user": "x"}),
    ("container", "othersctld"): _container(THEIRS, {"hubdeploy.site": "beta", "com.docker.compose.project":
                                                     "hubdeploy-beta", "com.docker.compose.service": "slurmctld"}),
    ("container", "unlabelled"): _container(THEIRS, None),
    ("container", "engine"): _container(HOLDER, {**SITE, **COMPOSE, "com.docker.compose.service": "engine-proxy"},
                                        [{"Source": "/var/run/docker.sock"}]),
    ("container", "sockmount"): _container(HOLDER, NB_LABELS, [{"Source": "/run/docker.sock"}]),
    ("container", "swarmtask"): _container(THEIRS, {**NB_LABELS, "com.docker.swarm.service.id": "s"}),
    ("exec", "e-ctld"): {"ID": "e-ctld", "ContainerID": CTLD},
    ("exec", "e-nb"): {"ID": "e-nb", "ContainerID": NB},
    ("exec", "e-theirs"): {"ID": "e-theirs", "ContainerID": "other"},
    ("network", "hubdeploy-alpha-users"): {"Id": "n1", "Name": "hubdeploy-alpha-users", "Labels": COMPOSE},
    ("network", "bridge"): {"Id": "n2", "Name": "bridge"},
    # Site "alpha-x": its names start with alpha's prefix too.
    ("network", "hubdeploy-alpha-x-users"): {"Id": "n3", "Name": "hubdeploy-alpha-x-users",
                                             "Labels": {"com.docker.compose.project": "hubdeploy-alpha-x"}},
    ("volume", "hubdeploy-alpha-homes"): {"Name": "hubdeploy-alpha-homes", "Labels": COMPOSE},
    ("volume", "hubdeploy-alpha-home-ann"): {"Name": "hubdeploy-alpha-home-ann", "Labels": SITE},
    ("volume", "hubdeploy-alpha-x-homes"): {"Name": "hubdeploy-alpha-x-homes",
                                            "Labels": {"com.docker.compose.project": "hubdeploy-alpha-x"}},
    ("volume", "datasets"): {"Name": "datasets", "Labels": None},
}


def lookup(kind, ref):
    return OBJECTS.get((kind, ref))


def ask(method: str, path: str, body=None, query: str = "") -> Allow | Deny:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return decide(Request(method, path, query, raw), POLICY, lookup)


def refused(decision, rule: str) -> str:
    assert isinstance(decision, Deny), decision
    assert decision.rule == rule, decision
    return decision.reason


ANN = Identity(user="ann", name="ann", uid=20001, gid=20001, home="/home/ann", groups=(Group("astro", 30000),))
PROFILE = profile(name="login", image_ref=IMAGE, cpu=1.0, mem_limit=2**30, pids_limit=512,
                  volumes=[{"source": "/data/shared/sub", "target": "/d", "read_only": True},
                           {"source": "datasets", "target": "/ds", "read_only": True}])


class RecordedDocker(DockerBackend):
    def __init__(self, config):
        super().__init__(parse_config(DockerConfig, config, "docker"))
        self.recorded_client, self.recorder = recording_client()

    def _make_client(self):
        return self.recorded_client


def docker_start(identity=ANN, homes="hubdeploy-alpha-homes"):
    """The requests of one docker-backend start, from its own code."""
    config = {"network": "hubdeploy-alpha-users", "prefix": "hubdeploy-alpha", "site": "alpha",
              "allowed_images": [IMAGE], **({"homes": homes} if identity else {})}
    backend = RecordedDocker(config)
    spec = ServerSpec("ann", "", PROFILE, env={"JUPYTERHUB_API_TOKEN": "s3cret"}, identity=identity)
    name, host = backend._names(spec)
    backend._start_sync(spec, {}, name, host)
    backend._stop_sync({"container_id": NB})
    return backend.recorder.requests


# -- what the backends send is allowed, and forwarded as checked -------------------------------


@pytest.mark.parametrize("identity", [ANN, None], ids=["per-user", "shared"])
def test_every_request_of_a_docker_backend_start_and_stop_is_allowed(identity):
    reqs = docker_start(identity)
    rules = []
    for req in reqs:
        d = decide(req, POLICY, lookup)
        assert isinstance(d, Allow), (req.method, req.path, d)
        rules.append(d.rule)
    expected = ["create", "container-archive-get", "container-archive-get", "container-archive-put",
                "container-start", "container-stop", "container-remove"]
    assert rules == (expected if identity else ["volume-create", "create", "container-start",
                                                "container-stop", "container-remove"])


def test_a_create_is_forwarded_as_checked_and_serialised_again():
    req = next(r for r in docker_start() if r.path.endswith("/containers/create"))
    d = decide(req, POLICY, lookup)
    assert json.loads(d.body) == json.loads(req.body)  # the same value ...
    assert d.body != req.body  # ... in the proxy's own spelling, not the client's bytes
    assert d.target == "/v1.41/containers/create?name=hubdeploy-alpha-nb-ann"


def test_the_uploaded_account_files_are_rebuilt():
    put = next(r for r in docker_start() if r.method == "PUT")
    d = decide(put, POLICY, lookup)
    with tarfile.open(fileobj=io.BytesIO(d.body)) as tar:
        assert [(m.name, m.mode, m.uid, m.isreg()) for m in tar.getmembers()] == [
            ("etc/passwd", 0o644, 0, True), ("etc/group", 0o644, 0, True)]
        assert b"ann:x:20001:20001" in tar.extractfile("etc/passwd").read()


def test_dexec_in_the_controller_as_the_user_and_roots_listings():
    from hubdeploy.hub import dexec

    body = {}

    class Capture(dexec.Engine):
        def _json(self, method, url, payload=None, ok=(200, 201)):
            body.update(payload)
            return {"Id": "e-ctld"}

    Capture(("x", 1)).exec_create(CTLD, ["sbatch", "--parsable", "/dev/stdin"], "20001:20001", "/tmp",
                                  {"JUPYTERHUB_API_TOKEN": "t"})
    d = ask("POST", f"/v1.41/containers/{CTLD}/exec", body)
    assert d == Allow("container-exec", f"/v1.41/containers/{CTLD}/exec", body=d.body) and d.body
    assert ask("POST", "/exec/e-ctld/start", {"Detach": False, "Tty": False}).hijack
    assert ask("GET", "/exec/e-ctld/json").rule == "exec-json"
    for argv in (slurmcmd.list_jobs_argv(), slurmcmd.node_states_argv(), slurmcmd.job_query_argv("123"),
                 slurmcmd.add_user_argv("ann", ["physics", "astro"])):
        assert isinstance(ask("POST", f"/containers/{CTLD}/exec", {"Cmd": argv, "User": "0:0"}), Allow), argv


def test_listing_sees_only_the_sites_containers():
    q = "all=1&filters=" + json.dumps({"label": ["com.docker.compose.project=x"]})
    d = ask("GET", "/v1.41/containers/json", query=q)
    assert isinstance(d, Allow) and d.rule == "list-site-containers"
    params = parse_qs(d.target.split("?", 1)[1])
    assert params["all"] == ["1"]
    assert json.loads(params["filters"][0])["label"] == ["com.docker.compose.project=x", "hubdeploy.site=alpha"]
    bare = parse_qs(ask("GET", "/containers/json").target.split("?", 1)[1])
    assert json.loads(bare["filters"][0]) == {"label": ["hubdeploy.site=alpha"]}


# -- the red team's bypasses ------------------------------------------------------------------------


def _create_body(**host_extra):
    req = next(r for r in docker_start() if r.path.endswith("/containers/create"))
    spec = json.loads(req.body)
    spec["HostConfig"].update(host_extra)
    return spec


def create_raw(raw: bytes, name="hubdeploy-alpha-nb-ann"):
    return decide(Request("POST", "/v1.41/containers/create", f"name={name}", raw), POLICY, lookup)


@pytest.mark.parametrize("extra,rule", [
    # Fields the engine knows but the proxy never allows, in any case.
    ({"binds": ["/:/host:ro"]}, "field"),
    ({"capadd": ["SYS_ADMIN"], "pidmode": "host"}, "field"),
    ({"privileged": True}, "field"),
    ({"PRIVILEGED": True}, "field"),
    # Allowed fields spelt in another case: the engine would read them as the field.
    ({"mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "field-case"),
    ({"networkmode": "host"}, "field-case"),
    ({"Securityopt": ["seccomp=unconfined"]}, "field-case"),
    ({"Privileged": True}, "field"),
    ({"CapAdd": ["CHOWN"]}, "field"),
    ({"Binds": ["/srv/homes:/home"]}, "field"),
    ({"PidMode": "host"}, "field"),
    ({"Devices": [{"PathOnHost": "/dev/sda"}]}, "field"),
    ({"MaskedPaths": []}, "field"),
    ({"Runtime": "runc"}, "field"),
    # Go folds U+017F (long s) to s and U+212A (Kelvin) to k: still "Mounts" to the engine.
    ({"Mount\u017f": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "field-case"),
    ({"SecurityOpt": ["seccomp=unconfined"]}, "security-opt"),
    ({"SecurityOpt": []}, "security-opt"),
    ({"CapDrop": []}, "cap-drop"),
    ({"NetworkMode": "host"}, "network"),
    ({"NetworkMode": "hubdeploy-alpha-x-users"}, "network"),
    ({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}, "bind"),
    ({"Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}]}, "bind"),
    ({"Mounts": [{"Type": "bind", "Source": "/srv/homes/../../etc", "Target": "/x"}]}, "bind"),
    ({"Mounts": [{"Type": "bind", "Source": "/srv/homesick", "Target": "/x"}]}, "bind"),
    ({"Mounts": [{"Type": "volume", "Source": "hubdeploy-alpha-x-homes", "Target": "/h"}]}, "volume"),
    ({"Mounts": [{"Type": "volume", "Source": "hubdeploy-beta-homes", "Target": "/h"}]}, "volume"),
    ({"Mounts": [{"Type": "volume", "Source": "hubdeploy-alpha-v", "Target": "/h", "VolumeOptions": {
        "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}}}]}, "field"),
    ({"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/h"}]}, "field-value"),
    ({"Mounts": [{"Type": "bind", "Source": "/data/shared", "Target": "/d", "BindOptions": {
        "Propagation": "rshared"}}]}, "field"),
    ({"GroupAdd": ["0"]}, "user"),
])
def test_host_config_bypasses_are_refused(extra, rule):
    refused(ask("POST", "/v1.41/containers/create", _create_body(**extra), query="name=hubdeploy-alpha-nb-ann"),
            rule)


def test_a_repeated_key_is_refused_at_any_level():
    good = json.dumps(_create_body())
    # "HostConfig": {..., "Privileged": true, "Binds": [...]}, "HostConfig": {"NetworkMode": "none"}
    twice = good[:-1] + ', "HostConfig": {"NetworkMode": "none"}}'
    refused(create_raw(twice.encode()), "duplicate-key")
    inner = good.replace('"NetworkMode"', '"NetworkMode": "none", "NetworkMode"', 1)
    refused(create_raw(inner.encode()), "duplicate-key")


@pytest.mark.parametrize("raw", [b"[1]", b"{nope", b'{"Image": NaN}', b"\xff\xfe{}", b'"x"'])
def test_bodies_the_engine_could_read_otherwise_are_bad_requests(raw):
    d = create_raw(raw)
    assert isinstance(d, Deny) and d.rule in ("bad-request", "field-value") and d.status in (400, 403), d


def test_only_the_sites_notebook_images_and_never_root():
    refused(ask("POST", "/containers/create", {**_create_body(), "Image": SLURM_IMAGE},
                query="name=hubdeploy-alpha-nb-ann"), "image")
    refused(ask("POST", "/containers/create", {**_create_body(), "User": "0:0"},
                query="name=hubdeploy-alpha-nb-ann"), "user")
    refused(ask("POST", "/containers/create", {**_create_body(), "User": "999:999"},
                query="name=hubdeploy-alpha-nb-ann"), "user")
    refused(ask("POST", "/containers/create", {**_create_body(), "User": "root"},
                query="name=hubdeploy-alpha-nb-ann"), "field-value")
    refused(ask("POST", "/containers/create", {**_create_body(), "Entrypoint": ["sh"]},
                query="name=hubdeploy-alpha-nb-ann"), "field-value")


def test_a_create_cannot_pass_for_a_stack_service_or_another_site():
    body = _create_body()
    body["Labels"] = {**body["Labels"], "com.docker.compose.service": "slurmctld",
                      "com.docker.compose.project": "hubdeploy-alpha"}
    refused(ask("POST", "/containers/create", body, query="name=hubdeploy-alpha-nb-ann"), "labels")
    refused(ask("POST", "/containers/create", _create_body(), query="name=mine"), "name")
    refused(ask("POST", "/containers/create", {**_create_body(), "Labels": {"hubdeploy.site": "beta"}},
                query="name=hubdeploy-alpha-nb-ann"), "labels")
    refused(ask("POST", "/containers/create", _create_body(),
                query="name=hubdeploy-alpha-nb-ann&name=x"), "bad-request")


def test_a_probe_is_never_connected_and_never_started():
    body = _create_body()
    body["Labels"] = SITE
    refused(ask("POST", "/containers/create", body, query="name=hubdeploy-alpha-etc-probe-1"), "probe")
    body["HostConfig"] = {"NetworkMode": "none", "CapDrop": ["ALL"], "PidsLimit": 16,
                          "SecurityOpt": ["no-new-privileges:true"]}
    body["NetworkingConfig"] = None
    assert ask("POST", "/containers/create", body, query="name=hubdeploy-alpha-etc-probe-1").rule == "create"
    refused(ask("POST", f"/containers/{PROBE}/start"), "container-kind")
    assert ask("GET", f"/containers/{PROBE}/archive", query="path=%2Fetc%2Fpasswd").rule == "container-archive-get"


ADD_ANN = slurmcmd.add_user_argv("ann", ["physics"])


@pytest.mark.parametrize("user,argv,env,rule", [
    ("0:0", ["cat", "/etc/munge/munge.key"], None, "exec-root"),
    ("root", ["sh", "-c", "id"], None, "exec-root"),
    ("", ["squeue"], None, "field-value"),
    ("0:0", slurmcmd.list_jobs_argv(), ["LD_PRELOAD=/tmp/x.so"], "exec-root"),
    ("0:0", ["squeue", "-h", "-a", "-o", "%i"], None, "exec-root"),
    ("0:0", ["scancel", "12"], None, "exec-root"),
    # A user's association is root's one write, exactly; nothing like it, and never as a user.
    ("0:0", [*ADD_ANN, "adminlevel=admin"], None, "exec-root"),
    ("0:0", ["sacctmgr", "-i", "add", "user", "name=ann", "account=physics", "defaultaccount=physics",
             "adminlevel=admin"], None, "exec-root"),
    ("0:0", ["sacctmgr", "-i", "add", "user", "name=ann,root", "account=physics", "defaultaccount=physics"],
     None, "exec-root"),
    ("0:0", ["sacctmgr", "-i", "modify", "user", "name=ann", "set", "adminlevel=admin"], None, "exec-root"),
    ("0:0", ["sacctmgr", "-i", "delete", "user", "name=ann"], None, "exec-root"),
    ("0:0", ["sacctmgr", "-i", "modify", "qos", "normal", "set", "MaxWall=-1"], None, "exec-root"),
    ("0:0", ADD_ANN, ["SLURM_CONF=/tmp/x"], "exec-root"),
    ("20001:20001", ADD_ANN, None, "exec-command"),
    ("jovyan", ADD_ANN, None, "exec-command"),
    ("20001:20001", ["cat", "/etc/munge/munge.key"], None, "exec-command"),
    ("20001:20001", ["/usr/bin/sbatch"], None, "exec-command"),
    ("64030:64030", ["squeue"], None, "user"),  # Debian's slurm user
    ("102:102", ["squeue"], None, "user"),  # a system account (munge)
    ("20001:0", ["squeue"], None, "user"),
    ("slurm", ["squeue"], None, "exec-user"),
])
def test_execs_in_the_controller_are_a_users_slurm_commands_or_roots_listings(user, argv, env, rule):
    refused(ask("POST", f"/containers/{CTLD}/exec", {"Cmd": argv, "User": user, "Env": env}), rule)


def test_the_notebook_account_runs_its_own_slurm_commands():
    """It owns the jobs of a shared-account site (and any job submitted as it)."""
    for user in ("jovyan", "1000:100"):
        assert isinstance(ask("POST", f"/containers/{CTLD}/exec", {"Cmd": ["scancel", "7"], "User": user}), Allow)
    refused(ask("POST", f"/containers/{CTLD}/exec", {"Cmd": ["cat", "/etc/munge/munge.key"], "User": "1000:100"}),
            "exec-command")


def test_exec_bypasses():
    refused(ask("POST", f"/containers/{CTLD}/exec", {"Cmd": ["squeue"], "User": "20001:20001",
                                                     "privileged": True}), "field-case")
    refused(ask("POST", f"/containers/{CTLD}/exec", {"Cmd": ["squeue"], "User": "20001:20001",
                                                     "Privileged": True}), "field-value")
    for target in (NB, NODE, "hub", "othersctld", "engine"):
        d = ask("POST", f"/containers/{target}/exec", {"Cmd": ["squeue"], "User": "20001:20001"})
        assert isinstance(d, Deny) and d.rule in ("container-kind", "foreign-container"), (target, d)
    refused(ask("POST", "/exec/e-nb/start", {}), "foreign-container")
    refused(ask("POST", "/exec/e-theirs/start", {}), "foreign-container")
    assert ask("POST", "/exec/nope/start", {}).status == 404


@pytest.mark.parametrize("ref,rule", [
    ("other", "foreign-container"), ("unlabelled", "foreign-container"), ("engine", "foreign-container"),
    ("sockmount", "foreign-container"), ("swarmtask", "foreign-container"), ("hub", "foreign-container"),
    (CTLD, "container-kind"), (NODE, "foreign-container"),
])
@pytest.mark.parametrize("method,op", [("GET", "json"), ("POST", "stop"), ("PUT", "archive"), ("DELETE", "")])
def test_containers_not_the_hubs_notebooks_are_untouchable(ref, rule, method, op):
    path = f"/containers/{ref}" + (f"/{op}" if op else "")
    d = ask(method, path, query="path=%2F" if op == "archive" else "")
    assert isinstance(d, Deny) and d.rule in (rule, "container-kind", "foreign-container"), d


def test_archives_are_the_account_files_only():
    refused(ask("GET", f"/containers/{NB}/archive", query="path=%2Fetc%2Fshadow"), "archive-path")
    refused(ask("GET", f"/containers/{NB}/archive", query="path=%2Fetc%2Fpasswd&path=%2Fetc%2Fshadow"),
            "bad-request")
    refused(ask("PUT", f"/containers/{NB}/archive", etc_archive("a", "b"), query="path=%2Fetc"),
            "archive-path")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("etc/passwd", "etc/group", "usr/local/bin/jupyterhub-singleuser"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    refused(ask("PUT", f"/containers/{NB}/archive", buf.getvalue(), query="path=%2F"), "archive")
    refused(ask("PUT", f"/containers/{NB}/archive", b"not a tar" * 100, query="path=%2F"), "archive")


@pytest.mark.parametrize("method,path", [
    ("POST", "/containers/hubdeploy-alpha-nb-ann/update"),
    ("POST", "/containers/hubdeploy-alpha-nb-ann/rename"),
    ("GET", "/containers/hubdeploy-alpha-nb-ann/export"),
    ("POST", "/containers/hubdeploy-alpha-nb-ann/attach"),
    ("GET", "/containers/hubdeploy-alpha-nb-ann/logs"),
    ("POST", "/containers/hubdeploy-alpha-nb-ann/kill"),
    ("POST", "/commit"),
    ("POST", "/images/create"),
    ("GET", "/images/hubdeploy/alpha-base:abc/json"),
    ("POST", "/build"),
    ("DELETE", "/images/hubdeploy/alpha-base:abc"),
    ("GET", "/volumes/hubdeploy-alpha-home-ann"),
    ("DELETE", "/volumes/hubdeploy-alpha-home-ann"),
    ("POST", "/volumes/prune"),
    ("POST", "/containers/prune"),
    ("GET", "/info"),
    ("POST", "/swarm/init"),
    ("GET", "/plugins"),
    ("POST", "/networks/create"),
    ("GET", "/networks/hubdeploy-alpha-users"),
    ("POST", "/networks/hubdeploy-alpha-users/connect"),
    ("GET", "/events"),
    ("POST", "/session"),
])
def test_everything_else_is_not_on_the_allow_list(method, path):
    refused(ask(method, path), "not-allowed")


def test_volumes_of_others():
    refused(ask("POST", "/volumes/create", {"Name": "x", "Labels": SITE}), "volume")
    refused(ask("POST", "/volumes/create", {"Name": "hubdeploy-alpha-v", "Labels": SITE,
                                            "DriverOpts": {"type": "none", "o": "bind", "device": "/"}}), "field-value")
    refused(ask("POST", "/volumes/create", {"Name": "hubdeploy-alpha-v", "Labels": {}}), "labels")
    refused(ask("POST", "/volumes/create", {"Name": "hubdeploy-alpha-v", "labels": SITE}), "field-case")


@pytest.mark.parametrize("path", ["/images/../containers/create/json", "/containers/x/%2e%2e/json",
                                  "/containers/a/./json", "/containers/a%2F..%2F..%2Fcontainers/json",
                                  "/containers//json", "/v1.41//containers/json", "containers/json"])
def test_paths_the_engine_would_rewrite_are_refused(path):
    refused(ask("GET", path), "bad-request")


def test_refusal_reasons_never_echo_the_environment():
    d = ask("POST", "/containers/create", {**_create_body(Privileged=True)}, query="name=hubdeploy-alpha-nb-ann")
    assert "s3cret" not in refused(d, "field")


# -- dexec finds the proxy from DOCKER_HOST ------------------------------------------------


@pytest.mark.parametrize("host,tls,expected", [
    (None, None, "/var/run/docker.sock"),
    ("unix:///run/other.sock", None, "/run/other.sock"),
    ("tcp://engine-proxy:2375", None, ("engine-proxy", 2375)),
    ("tcp://127.0.0.1:8620/", None, ("127.0.0.1", 8620)),
    ("tcp://engine-proxy", None, ("engine-proxy", 2375)),
    ("tcp://engine-proxy:2376", "1", None),  # TLS: docker-py's path
    ("ssh://login", None, None),
])
def test_dexec_engine_address(monkeypatch, host, tls, expected):
    from hubdeploy.hub import dexec

    for name, value in (("DOCKER_HOST", host), ("DOCKER_TLS_VERIFY", tls)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert dexec.engine_address() == expected


# -- every Slurm command of the stack's cluster passes ------------------------------------------


class RecordedSlurm:
    """The Slurm backend as hub.json configures it for the stack's cluster, its commands
    recorded (dexec argv) and answered as a cluster with one job, 7, would answer."""

    def __new__(cls):
        from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
        from hubdeploy.site.loader import load_site_text
        from hubdeploy.render.hubdata import _cluster_backend_config

        site = load_site_text("name: alpha\nslurm: {cluster: {nodes: 1}}\nprofiles:\n"
                              "  - {name: c, image: base, node: compute, default: true}\n", "site.yaml")

        class Recording(SlurmBackend):
            cancelled = False

            async def run(self, argv, *, stdin=None, env=None, who=None, account=None):
                self.calls.append(self._argv(argv, sorted(env or ()), who, account))
                if argv[0] == "sacctmgr":
                    return 0, " Adding User(s)\n  ann\n", ""
                if argv[0] == "sbatch":
                    self.cancelled = False
                    return 0, "7\n", ""
                if argv[0] == "scancel":
                    self.cancelled = True
                    return 0, "", ""
                if argv[0] == "sinfo":
                    return 0, "c1|allocated\n", ""
                if "-a" in argv:
                    return 0, "7|RUNNING|c1|None|ann|20001|20001|hubdeploy-alpha-nb-ann\n", ""
                return 0, "" if self.cancelled else "7|RUNNING|None|N/A|c1|hubdeploy:port=40000\n", ""

        backend = Recording(parse_config(SlurmConfig, {**_cluster_backend_config(site), "poll_interval": 0.01}, "slurm"))
        backend.calls = []
        return backend


def _as_exec(dexec_argv: list[str]) -> dict:
    """The exec create body dexec sends for one prefixed command line."""
    user = dexec_argv[dexec_argv.index("--user") + 1]
    workdir = dexec_argv[dexec_argv.index("--workdir") + 1]
    env = [f"{dexec_argv[i + 1]}=x" for i, w in enumerate(dexec_argv) if w == "--env"]
    cmd = dexec_argv[dexec_argv.index("--") + 1:]
    return {"AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Tty": False, "Cmd": cmd,
            "User": user, "Env": env, "WorkingDir": workdir}


def test_every_slurm_command_of_the_stacks_cluster_passes_the_proxy():
    """Start (with the user's association), poll, stop, the orphan listing and an orphan's
    cancel, and the stop of a job recorded without its owner: each command as dexec asks
    for it, decided by the policy."""
    import asyncio

    b = RecordedSlurm()
    spec = ServerSpec("ann", "", profile(name="c", slurm={}), env={"JUPYTERHUB_API_TOKEN": "t"}, identity=ANN)
    state: dict = {}
    asyncio.run(b.start(spec, state))
    asyncio.run(b.poll(state))
    asyncio.run(b.stop(state))
    asyncio.run(b.list_servers())
    b.cancelled = False
    asyncio.run(b.remove("7"))
    b.cancelled = False
    asyncio.run(b.stop({"job_id": "7", "job_name": "hubdeploy-alpha-nb-ann"}))
    seen = set()
    for argv in b.calls:
        body = _as_exec(argv)
        d = ask("POST", f"/v1.41/containers/{CTLD}/exec", body)
        assert isinstance(d, Allow), (argv, d)
        seen.add((body["User"], body["Cmd"][0]))
        if body["User"] == "0:0":
            assert slurmcmd.is_root_command(body["Cmd"]) and body["Env"] == [], body
    # The job's own commands, all as ann; root only lists, and adds ann's association.
    assert seen == {("20001:20001", "sbatch"), ("20001:20001", "squeue"), ("20001:20001", "scancel"),
                    ("0:0", "squeue"), ("0:0", "sinfo"), ("0:0", "sacctmgr")}
    assert _as_exec(b.calls[0])["Cmd"] == slurmcmd.add_user_argv("ann", ["hubdeploy"])
