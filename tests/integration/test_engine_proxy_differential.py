"""The engine proxy, tested differentially: whatever reaches the engine obeys the policy.

Every endpoint the hub uses gets VARIANTS (200) generated requests: container create,
exec create, an exec's start and inspect, the account files' upload, the other
per-container operations, volume create, the container listing, and under swarm service
and config create.

Two parsers stand here, the proxy's and the engine's (Go's HTTP server and JSON decoder).
So no assertion looks at the proxy's answer: every request of a corpus (each request the
hub makes, and every bypass the red team found) and hypothesis's variants of it (field
names in other cases and Unicode folds, repeated keys at every level, dangerous fields
added, values swapped, HTTP framing bent: bare LF, repeated or conflicting
Content-Length, chunked bodies, a request smuggled behind another) go through the real
proxy to the real engine as raw bytes, and then the engine itself is asked what it now
holds: every container, exec and volume, and the notebook's files. Each must be one the
policy allows (:func:`check_engine`). A variant the proxy refuses changes nothing.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import tarfile
import time
from urllib.parse import quote

import docker
import docker.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxyfixture import controller, remove_all, running_proxy, send
from test_docker_backend import BASE_IMAGE, _ensure_base_image

from hubdeploy.contract import slurmcmd
from hubdeploy.contract.identity import NOTEBOOK_UID, reserved_id

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_DIFF_SITE", "hdtdiff")
PREFIX = f"hubdeploy-{SITE}-"
PROJECT = f"hubdeploy-{SITE}"
LABELS = {"hubdeploy.site": SITE}
USER = "20001:20001"
# Every body a variant sends carries this in its environment, which tells the containers
# it made from those of other processes on the same engine.
MARK = f"HDTDIFF_MARK={secrets.token_hex(8)}"
VARIANTS = int(os.environ.get("HUBDEPLOY_TEST_DIFF_VARIANTS", "200"))
SETTINGS = settings(max_examples=VARIANTS, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The proxy, and the objects its policy is about: the site's network, a notebook, the
    controller, a compute node, the engine proxy's own container, another site's notebook."""
    engine = docker.from_env(timeout=120)
    _ensure_base_image(engine)
    tag = secrets.token_hex(3)
    binds = tmp_path_factory.mktemp("diffbinds")
    (binds / "sub").mkdir()  # the base request's bind source: the engine refuses a missing one
    port = _free_port()
    made = []
    with running_proxy(SITE, port, tmp_path_factory.mktemp("difflog") / "proxy.log", "--image", BASE_IMAGE,
                       "--bind-path", str(binds)):
        try:
            net = engine.networks.create(f"{PREFIX}users", labels={"com.docker.compose.project": PROJECT})
            made.append(net)
            compose = {**LABELS, "com.docker.compose.project": PROJECT}
            objs = {
                "notebook": _notebook(engine),
                "controller": controller(engine, BASE_IMAGE, f"{PREFIX}slurmctld", SITE),
                "node": engine.containers.run(BASE_IMAGE, ["sleep", "600"], name=f"{PREFIX}c1", detach=True,
                                              labels={**compose, "com.docker.compose.service": "slurm-c1"}),
                "holder": engine.containers.run(
                    BASE_IMAGE, ["sleep", "600"], name=f"{PREFIX}engine-proxy", detach=True,
                    labels={**compose, "com.docker.compose.service": "engine-proxy"},
                    volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock"}}),
                "foreign": engine.containers.run(BASE_IMAGE, ["sleep", "600"], name=f"hubdeploy-hdtother-nb-{tag}",
                                                 detach=True, labels={"hubdeploy.site": "hdtother",
                                                                      "hubdeploy.user": "x"}),
            }
            made += list(objs.values())
            yield {"engine": engine, "port": port, "binds": str(binds), "net": net.name, **objs,
                   "baseline": _state(engine), "made": {"containers": 0, "execs": 0, "volumes": 0},
                   "cgroupns_default": engine.api.inspect_container(objs["notebook"].id)["HostConfig"].get(
                       "CgroupnsMode")}
        finally:
            for c in engine.containers.list(all=True, filters={"name": PREFIX}):
                c.remove(force=True)
            remove_all(made)
            for v in engine.volumes.list(filters={"name": PREFIX}):
                v.remove(force=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- what the engine holds, and whether the policy allows it -------------------------------


def _state(engine) -> dict:
    return {
        "containers": {c["Id"]: c["State"] for c in engine.api.containers(all=True)},
        "volumes": {v.name for v in engine.volumes.list()},
    }


def _inspect(call, ref):
    try:
        return call(ref)
    except docker.errors.NotFound:  # removed meanwhile (by another process on this engine)
        return None


def check_engine(w, *, containers=True, volumes=True, execs=True, files: bool | str = True) -> None:
    """Every object the engine holds now that it did not hold before is one the policy
    allows; the objects the hub must not touch are as they were. Removes the new ones.
    A variant can only reach the endpoint it was made for (a smuggled request is one of
    the same kind), so each test asks only about what that endpoint makes, and the whole
    engine once at its end."""
    engine = w["engine"]
    now = _state(engine)
    new = [_inspect(engine.api.inspect_container, cid) for cid in set(now["containers"]) - set(w["baseline"]["containers"])]
    # Only what a variant made: other processes may use this engine meanwhile.
    new = [c for c in new if c and MARK in (c["Config"].get("Env") or ())]
    try:
        for attrs in new if containers else ():
            _allowed_container(attrs, w)
            w["made"]["containers"] += 1
        for name in now["volumes"] - w["baseline"]["volumes"] if volumes else ():
            info = _inspect(engine.api.inspect_volume, name)
            if info is not None:
                _allowed_volume(info)
                w["made"]["volumes"] += 1
        for key in ("controller", "node", "holder", "foreign"):
            assert now["containers"].get(w[key].id) == "running", f"the {key} is not running"
        for key in ("controller", "notebook", "node", "holder", "foreign") if execs else ():
            attrs = _inspect(engine.api.inspect_container, w[key].id) or {}
            for exec_id in set(attrs.get("ExecIDs") or ()) - w.setdefault("execs_seen", set()):
                _allowed_exec(engine.api.exec_inspect(exec_id), key)
                w["execs_seen"].add(exec_id)
                w["made"]["execs"] += 1
        if files and w["notebook"].id in now["containers"]:
            _account_files_are_plain(engine, w["notebook"].id)
            if files == "all":
                # Every write a variant made stays in the container's layer: one diff at
                # the end (0.7 s each here) sees them all.
                changed = {c["Path"] for c in engine.api.diff(w["notebook"].id) or ()}
                # docker-init's mount point appears once the container (init: true) ran.
                started = {"/usr", "/usr/sbin", "/usr/sbin/docker-init"}
                assert changed <= {"/etc", "/etc/passwd", "/etc/group", *started}, changed
    finally:
        for attrs in new:
            engine.api.remove_container(attrs["Id"], force=True)
        for name in now["volumes"] - w["baseline"]["volumes"] if volumes else ():
            if name.startswith(PREFIX) or MARK in json.dumps(_inspect(engine.api.inspect_volume, name) or {}):
                engine.api.remove_volume(name, force=True)


def _account_files_are_plain(engine, cid: str) -> None:
    for path in ("/etc/passwd", "/etc/group"):
        stream, _ = engine.api.get_archive(cid, path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            (member,) = tar.getmembers()
            assert member.isreg() and not member.mode & 0o7000, (path, member.type, oct(member.mode))


def _reset_notebook(w) -> None:
    """The notebook as the fixture made it: stopped, or made again after an allowed remove."""
    engine = w["engine"]
    try:
        if engine.api.inspect_container(w["notebook"].id)["State"]["Running"]:
            engine.api.stop(w["notebook"].id, timeout=1)
        return
    except docker.errors.NotFound:
        pass
    w["notebook"] = _notebook(engine)
    w["baseline"] = _state(engine)


def _notebook(engine):
    # init: a stop ends it at once (sleep as PID 1 ignores SIGTERM).
    return engine.containers.create(BASE_IMAGE, ["sleep", "600"], name=f"{PREFIX}nb-ann", init=True,
                                    labels={**LABELS, "hubdeploy.user": "ann"}, user=USER)


def _allowed_container(attrs: dict, w) -> None:
    cfg, host = attrs["Config"], attrs["HostConfig"]
    labels = cfg.get("Labels") or {}
    where = attrs["Name"]
    assert attrs["Name"].startswith("/" + PREFIX), where
    assert labels.get("hubdeploy.site") == SITE and not any(k.startswith("com.docker.") for k in labels), where
    assert cfg["Image"] == BASE_IMAGE, where
    user = cfg.get("User") or ""
    assert user and not reserved_id(int(user.split(":")[0])), (where, user)
    assert not host.get("Privileged") and not host.get("CapAdd"), where
    assert [c.upper() for c in host.get("CapDrop") or ()] == ["ALL"], where
    assert set(host.get("SecurityOpt") or ()) <= {"no-new-privileges", "no-new-privileges:true"}, where
    assert host.get("SecurityOpt"), where
    assert not host.get("Binds") and not host.get("Devices") and not host.get("VolumesFrom"), where
    for key in ("PidMode", "IpcMode", "UTSMode", "UsernsMode"):
        assert host.get(key) in ("", None, "private", "shareable"), (where, key, host.get(key))
    # "host" is the engine's own default on cgroup v1 (20.10); the hub cannot set the mode.
    assert host.get("CgroupnsMode") == w["cgroupns_default"], where
    assert host.get("NetworkMode") in (w["net"], "none"), where
    assert not host.get("PortBindings") and not host.get("PublishAllPorts"), where
    assert not host.get("Sysctls") and not host.get("CgroupParent") and host.get("MaskedPaths"), where
    for m in attrs.get("Mounts") or ():
        if m["Type"] == "bind":
            assert (m["Source"] + "/").startswith(w["binds"] + "/"), (where, m)
        elif m["Type"] == "volume":
            assert m["Name"].startswith(PREFIX), (where, m)
    assert not cfg.get("Entrypoint"), where  # the image has none: the hub never sets one


def _allowed_exec(info: dict, where: str) -> None:
    assert where == "controller", f"an exec in the {where}"
    proc = info["ProcessConfig"]
    assert not proc.get("privileged"), info
    argv = [proc["entrypoint"], *proc.get("arguments", [])]
    user = proc.get("user") or ""
    if user in ("", "root", "0", "0:0"):
        assert slurmcmd.is_root_command(argv), argv
    else:
        # A user's account, or the notebook account (whose jobs a shared-account site runs).
        uid = NOTEBOOK_UID if user == "jovyan" else int(user.split(":")[0])
        assert uid == NOTEBOOK_UID or not reserved_id(uid), user
        assert argv[0] in slurmcmd.USER_COMMANDS, argv


def _allowed_volume(attrs: dict) -> None:
    assert attrs["Name"].startswith(PREFIX) and attrs["Driver"] == "local" and not attrs.get("Options"), attrs
    assert (attrs.get("Labels") or {}).get("hubdeploy.site") == SITE, attrs


# -- sending raw requests ------------------------------------------------------------------


def http(method: str, target: str, body: bytes = b"", framing: str = "plain", before: bytes = b"") -> bytes:
    """One request, framed as ``framing`` says (the variants the proxy must not misread)."""
    eol = b"\n" if framing == "bare-lf" else b"\r\n"
    head = [f"{method} {target} HTTP/1.1".encode(), b"Host: docker", b"Content-Type: application/json"]
    if framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        half = len(body) // 2
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p) + b"0\r\n\r\n"
    else:
        payload = body
        head.append(b"Content-Length: %d" % len(body))
        if framing == "double-length":
            head.append(b"Content-Length: %d" % (len(body) + 1))
        if framing == "length-and-chunked":
            head.append(b"Transfer-Encoding: chunked")
        if framing == "control-char":
            head.append(b"X-Note: a\x01b")
        if framing == "folded":
            head.append(b" folded")
    head.append(b"Connection: close")
    return before + eol.join(head) + eol + eol + payload


# Weighted towards requests the proxy can read, so that most variants test the policy's
# decision on a body, not only the framing check.
FRAMINGS = ["plain"] * 8 + ["chunked"] * 2 + ["bare-lf", "double-length", "length-and-chunked", "control-char",
                                             "folded", "smuggled"]


def framed(method: str, target: str, body: bytes, framing: str) -> bytes:
    if framing == "smuggled":
        # A harmless request first, then the real one with bare line feeds.
        return http("GET", "/_ping").replace(b"Connection: close", b"X-A: b") + http(method, target, body, "bare-lf")
    return http(method, target, body, framing)


def variants(world, requests, made: str, **checks) -> None:
    """Send VARIANTS of ``requests`` (a strategy of raw requests), each followed by the
    engine's check of what that endpoint makes (``checks``), then check the whole engine.
    Not vacuous: a share of the variants must be requests the policy allows, which the
    engine then carried out (each checked like the rest)."""
    @SETTINGS
    @given(st.data())
    def run(data):
        if send(world["port"], data.draw(requests(world))).startswith(b"HTTP/1.1 2") and made == "archives":
            world["made"]["archives"] = world["made"].get("archives", 0) + 1  # no new object to count
        check_engine(world, **checks)

    run()
    check_engine(world, files="all")
    assert world["made"].get(made, 0) >= VARIANTS // 20, world["made"]


# -- turning a body into variants ------------------------------------------------------------


def folds(key: str) -> st.SearchStrategy[str]:
    """The key as Go's decoder would still read it: other cases, and Unicode folds."""
    return st.sampled_from([key, key.lower(), key.upper(), key.swapcase(), key.replace("s", "\u017f"),
                            key.replace("k", "\u212a"), key[:1].lower() + key[1:]])


def dumps_with(obj, dup: tuple | None = None, first: bool = False) -> bytes:
    """JSON of ``obj``; with ``dup`` = (path, key, value), that key also appears a second
    time, with its own value, in the object at ``path``, after the others or (``first``)
    before them (Go merges a repeated object into the first, Python keeps the last)."""
    if dup is None:
        return json.dumps(obj).encode()
    path, key, value = dup
    obj = json.loads(json.dumps(obj))
    where = obj
    for p in path[:-1]:
        where = where[p]
    marker = "__hdt_dup_marker__"
    inner = where[path[-1]] if path else obj
    items = [(marker, None), *inner.items()] if first else [*inner.items(), (marker, None)]
    if path:
        where[path[-1]] = dict(items)
    else:
        obj = dict(items)
    return json.dumps(obj).replace(f'"{marker}": null', f'{json.dumps(key)}: {json.dumps(value)}').encode()


def mutate(base: dict, injections: list[tuple], draw) -> bytes:
    """``base`` with one injection applied in a drawn way: set, added under a folded
    name, or repeated as a second key of the same object."""
    body = json.loads(json.dumps(base))
    path, key, value = draw(st.sampled_from(injections))
    # "none": the corpus request itself, which the policy allows (the engine then makes
    # something, and that is checked too).
    how = draw(st.sampled_from(["none", "set", "fold", "dup", "dup-parent", "dup-parent-first", "fold"]))
    if how == "none":
        return dumps_with(body)
    where = body
    for p in path:
        where = where.setdefault(p, {})
    if how == "set":
        where[key] = value
        return dumps_with(body)
    if how == "fold":
        where[draw(folds(key))] = value
        return dumps_with(body)
    if how == "dup" or not path:
        return dumps_with(body, (path, draw(folds(key)), value), first=draw(st.booleans()))
    # The whole parent object again, holding the injection, after the real one or, as the
    # red team sent it, before: {"HostConfig": {key: value}, ..., "HostConfig": {...}}
    return dumps_with(body, (path[:-1], path[-1], {**where, key: value}), first=how == "dup-parent-first")


CREATE_BASE = {
    "Hostname": None, "Domainname": None, "ExposedPorts": None, "User": USER, "Tty": False, "OpenStdin": False,
    "StdinOnce": False, "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
    "Env": [MARK], "Cmd": ["sleep", "60"], "Image": BASE_IMAGE, "Volumes": None,
    "NetworkDisabled": False, "Entrypoint": None, "WorkingDir": "/tmp", "MacAddress": None,
    "Labels": {**LABELS, "hubdeploy.user": "ann"}, "StopSignal": None, "Healthcheck": None, "StopTimeout": None,
    "Runtime": None,
    "HostConfig": {"NetworkMode": "NET", "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges:true"],
                   "PidsLimit": 64, "Init": True, "Memory": 2**28,
                   "Mounts": [{"Target": "/data", "Source": "BINDS/sub", "Type": "bind", "ReadOnly": True}]},
    "NetworkingConfig": {"EndpointsConfig": {"NET": {"Aliases": ["nb-ann-1"]}}},
}
H = ("HostConfig",)
CREATE_INJECTIONS = [
    (H, "Privileged", True), (H, "CapAdd", ["SYS_ADMIN"]), (H, "Binds", ["/:/host:ro"]),
    (H, "PidMode", "host"), (H, "IpcMode", "host"), (H, "UTSMode", "host"), (H, "UsernsMode", "host"),
    (H, "NetworkMode", "host"), (H, "NetworkMode", "bridge"), (H, "Devices", [{"PathOnHost": "/dev/null",
                                                                               "PathInContainer": "/dev/x"}]),
    (H, "SecurityOpt", ["seccomp=unconfined"]), (H, "SecurityOpt", ["apparmor=unconfined"]), (H, "CapDrop", []),
    (H, "Mounts", [{"Type": "bind", "Source": "/", "Target": "/host"}]),
    (H, "Mounts", [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}]),
    (H, "Mounts", [{"Type": "bind", "Source": "BINDS/../..", "Target": "/up"}]),
    (H, "Mounts", [{"Type": "volume", "Source": "hubdeploy-hdtother-homes", "Target": "/h"}]),
    (H, "PortBindings", {"8888/tcp": [{"HostPort": "18888"}]}), (H, "PublishAllPorts", True),
    (H, "Sysctls", {"net.ipv4.ip_unprivileged_port_start": "0"}), (H, "CgroupParent", "/"),
    (H, "MaskedPaths", []), (H, "VolumesFrom", ["ENGINE"]), (H, "GroupAdd", ["0"]),
    ((), "User", "0:0"), ((), "User", "root"), ((), "User", ""), ((), "Image", "ENGINE_IMAGE"),
    ((), "Entrypoint", ["sh", "-c", "id"]), ((), "Labels", {**LABELS, "com.docker.compose.service": "slurmctld",
                                                            "com.docker.compose.project": PROJECT}),
    ((), "Labels", {"hubdeploy.site": "hdtother"}), ((), "Privileged", True),
]


def _resolve(value, w):
    text = json.dumps(value).replace("BINDS", w["binds"]).replace("NET", w["net"])
    text = text.replace("ENGINE_IMAGE", w["holder"].image.tags[0] if w["holder"].image.tags else BASE_IMAGE)
    return json.loads(text.replace('"ENGINE"', json.dumps(w["holder"].id)))


@st.composite
def create_requests(draw, w):
    base = _resolve(CREATE_BASE, w)
    body = mutate(base, [(p, k, _resolve(v, w)) for p, k, v in CREATE_INJECTIONS], draw)
    name = draw(st.sampled_from([f"{PREFIX}nb-x"] * 6 + ["hubdeploy-hdtother-nb-x", "plain"]))
    target = draw(st.sampled_from([f"/v1.41/containers/create?name={name}"] * 4 + [
        f"/containers/create?name={name}", f"/v1.41/containers/create?name={name}&name=x"]))
    return framed("POST", target, body, draw(st.sampled_from(FRAMINGS)))


def test_the_corpus_and_its_variants_never_get_past_the_policy_create(world):
    """POST /containers/create: what the docker backend sends, and every way to widen it."""
    variants(world, create_requests, "containers", volumes=False, execs=False, files=False)


EXEC_BASE = {"AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Tty": False,
             "Cmd": ["sbatch", "--parsable", "/dev/stdin"], "User": USER, "Env": [MARK], "WorkingDir": "/tmp"}
EXEC_INJECTIONS = [
    ((), "Privileged", True), ((), "User", "0:0"), ((), "User", "root"), ((), "User", ""), ((), "User", "0"),
    ((), "User", "64030:64030"), ((), "Cmd", ["cat", "/etc/munge/munge.key"]), ((), "Cmd", ["sh"]),
    ((), "Cmd", ["/bin/sh", "-c", "id"]), ((), "Env", ["LD_PRELOAD=/tmp/x.so"]),
    ((), "Cmd", slurmcmd.list_jobs_argv()), ((), "Cmd", slurmcmd.node_states_argv()),
]


@st.composite
def exec_requests(draw, w):
    body = mutate(EXEC_BASE, EXEC_INJECTIONS, draw)
    if draw(st.booleans()):  # root's listings as the hub sends them, then bent
        body = mutate({**EXEC_BASE, "User": "0:0", "Env": None, "Cmd": slurmcmd.list_jobs_argv()},
                      EXEC_INJECTIONS, draw)
    who = draw(st.sampled_from(["controller", "controller", "controller", "notebook", "node", "holder", "foreign"]))
    ref = draw(st.sampled_from([w[who].id, w[who].name, w[who].id[:12]]))
    return framed("POST", f"/v1.41/containers/{ref}/exec", body, draw(st.sampled_from(FRAMINGS)))


def test_the_corpus_and_its_variants_never_get_past_the_policy_exec(world):
    """POST /containers/{id}/exec: dexec's Slurm commands, and root, munge and other containers."""
    variants(world, exec_requests, "execs", containers=False, volumes=False, files=False)


def _tar(members: list[tuple[str, bytes, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data.decode()
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o4755 if kind == "setuid" else 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVE_MEMBERS = [("etc/passwd", b"x:x:20001:20001::/home/x:/bin/sh\n", "file"), ("etc/group", b"x:x:20001:\n", "file"),
                   ("etc/shadow", b"root::0:0::::\n", "file"), ("usr/bin/evil", b"#!/bin/sh\n", "setuid"),
                   ("etc/passwd", b"/etc/shadow", "symlink"), ("etc/group", b"etc/shadow", "hardlink"),
                   ("../etc/passwd", b"x", "file"), ("etc/passwd/../../tmp/x", b"x", "file"),
                   ("./etc/passwd", b"y", "file")]


@st.composite
def archive_requests(draw, w):
    # The backend's upload, then (mostly) bent: other members, links, paths out of /etc.
    members = ARCHIVE_MEMBERS[:2]
    if draw(st.integers(0, 3)):
        members = draw(st.permutations(members + draw(st.lists(st.sampled_from(ARCHIVE_MEMBERS[2:]), max_size=3))))
    body = _tar(members)
    if draw(st.integers(0, 3)) == 0:
        body += draw(st.sampled_from([b"\0" * 512, _tar([ARCHIVE_MEMBERS[2]]), b"garbage"]))
    path = draw(st.sampled_from(["%2F"] * 4 + ["%2Fetc", "%2Fusr", "%2F&path=%2Fetc", ""]))
    who = draw(st.sampled_from(["notebook"] * 4 + ["controller", "node", "foreign"]))
    return framed("PUT", f"/v1.41/containers/{w[who].id}/archive?path={path}", body, draw(st.sampled_from(FRAMINGS)))


def test_the_corpus_and_its_variants_never_get_past_the_policy_archive(world):
    """PUT /containers/{id}/archive: the account files into a notebook, and nothing else anywhere."""
    variants(world, archive_requests, "archives", containers=False, volumes=False, execs=False)


VOLUME_BASE = {"Name": f"{PREFIX}home-ann", "Driver": None, "DriverOpts": None, "Labels": LABELS}
VOLUME_INJECTIONS = [((), "DriverOpts", {"type": "none", "o": "bind", "device": "/"}), ((), "Driver", "nfs"),
                     ((), "Name", "hubdeploy-hdtother-home-ann"), ((), "Labels", {}),
                     ((), "Labels", {"hubdeploy.site": "hdtother"}), ((), "Name", "plain")]


@st.composite
def volume_requests(draw, w):
    body = mutate(VOLUME_BASE, VOLUME_INJECTIONS, draw)
    return framed("POST", "/v1.41/volumes/create", body, draw(st.sampled_from(FRAMINGS)))


def test_the_corpus_and_its_variants_never_get_past_the_policy_volume(world):
    """POST /volumes/create: a home volume, never a bind in disguise or another site's."""
    variants(world, volume_requests, "volumes", containers=False, execs=False, files=False)


OPS = [("POST", "start"), ("POST", "stop?t=1"), ("DELETE", "?force=True"), ("GET", "json"),
       ("GET", "archive?path=%2Fetc%2Fpasswd"), ("GET", "archive?path=%2Fetc%2Fshadow"),
       ("POST", "kill"), ("POST", "pause"), ("POST", "update"), ("POST", "attach?stream=1&stdin=1")]


@st.composite
def op_requests(draw, w):
    method, op = draw(st.sampled_from(OPS))
    who = draw(st.sampled_from(["notebook", "controller", "node", "holder", "foreign"]))
    ref = draw(st.sampled_from([w[who].id, w[who].name, w[who].id[:10], w[who].name.upper()]))
    slash = "" if op.startswith("?") else "/"
    body = draw(st.sampled_from([b"", b"{}", b'{"Privileged": true}']))
    return who, method, framed(method, f"/v1.41/containers/{ref}{slash}{op}", body, draw(st.sampled_from(FRAMINGS)))


def test_the_corpus_and_its_variants_never_get_past_the_policy_container_ops(world):
    """start, stop, remove, inspect, archive reads and the rest, on every kind of container."""
    @SETTINGS
    @given(st.data())
    def run(data):
        who, method, raw = data.draw(op_requests(world))
        answer = send(world["port"], raw)
        if who != "notebook":
            assert b"shadow" not in answer or b"root:" not in answer
        check_engine(world, volumes=False, execs=False)
        _reset_notebook(world)

    run()
    check_engine(world, files="all")


_LABEL = st.sampled_from(["hubdeploy.site=hdtother", "hubdeploy.site", f"hubdeploy.site={SITE}", "hubdeploy.user",
                          "com.docker.compose.project=hubdeploy-hdtother", "x=y"])
_FILTERS = st.one_of(
    st.fixed_dictionaries({"label": st.lists(_LABEL, max_size=3)}),
    st.fixed_dictionaries({"label": st.dictionaries(_LABEL, st.booleans(), max_size=3)}),
    st.fixed_dictionaries({"name": st.lists(st.sampled_from(["hdtother", PREFIX, "hubdeploy"]), max_size=2)}),
    st.fixed_dictionaries({"id": st.lists(st.text("0123456789abcdef", min_size=1, max_size=12), max_size=2)}),
    st.just([]), st.just("x"),
)


@st.composite
def list_queries(draw):
    """A listing's query: its filters bent every way, the parameter given twice."""
    parts = [f"filters={quote(json.dumps(f))}" for f in draw(st.lists(_FILTERS, max_size=2))]
    parts += draw(st.lists(st.sampled_from(["all=1", "all=0", "size=1", "limit=5"]), max_size=2))
    return "&".join(draw(st.permutations(parts)))


def test_listing_shows_only_the_sites_containers(world):
    """GET /containers/json with the filters bent every way: the answer is the site's only."""
    seen = []

    @SETTINGS
    @given(list_queries(), st.sampled_from(FRAMINGS))
    def run(query, framing):
        answer = send(world["port"], framed("GET", f"/v1.41/containers/json?{query}", b"", framing))
        for listed in _json_answers(answer):
            seen.append(len(listed))
            assert all((c.get("Labels") or {}).get("hubdeploy.site") == SITE for c in listed), listed
            assert world["foreign"].id not in {c["Id"] for c in listed}

    run()
    assert sum(1 for n in seen if n) >= VARIANTS // 20, seen  # the site's own were listed


def _json_answers(raw: bytes):
    """The JSON bodies of the 200 answers in ``raw``."""
    while raw.startswith(b"HTTP/1.1 "):
        head, _, rest = raw.partition(b"\r\n\r\n")
        if b"Transfer-Encoding: chunked" in head:
            body, rest = _dechunk(rest)
        else:
            length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
            body, rest = rest[:length], rest[length:]
        if head.startswith(b"HTTP/1.1 200") and b"application/json" in head:
            yield json.loads(body)
        raw = rest


@st.composite
def exec_start_requests(draw, w):
    """Starting an exec: the hub's own (in the controller), or one made on the engine in a
    container the hub must not reach; the body and the upgrade bent."""
    if draw(st.integers(0, 3)) == 0:  # the hub's own request, as dexec sends it
        return http("POST", f"/v1.41/exec/{w['execs']['controller']}/start", b'{"Detach": false, "Tty": false}'
                    ).replace(b"Connection: close", b"Connection: Upgrade\r\nUpgrade: tcp")
    target = draw(st.sampled_from(["controller"] * 3 + ["notebook_running", "node", "holder", "foreign"]))
    exec_id = w["execs"][target]
    body = draw(st.sampled_from([b'{"Detach": false, "Tty": false}', b'{"Detach": true}', b'{"Tty": true}',
                                 b'{"detach": false}', b'{"Detach": false, "Detach": true}', b""]))
    op = draw(st.sampled_from(["start", "start", "json", "resize?h=1&w=1"]))
    method = "GET" if op == "json" else "POST"
    raw = framed(method, f"/v1.41/exec/{exec_id}/{op}", body, draw(st.sampled_from(FRAMINGS)))
    if op == "start" and draw(st.booleans()):
        raw = raw.replace(b"Connection: close", b"Connection: Upgrade\r\nUpgrade: tcp")
    return raw


def test_the_corpus_and_its_variants_never_get_past_the_policy_exec_start(world):
    """POST /exec/{id}/start and GET /exec/{id}/json: only the controller's execs run; one
    made in any other container never starts, whatever the request looks like."""
    engine = world["engine"]
    running_nb = engine.containers.run(BASE_IMAGE, ["sleep", "600"], name=f"{PREFIX}nb-running", detach=True,
                                       labels={**LABELS, "hubdeploy.user": "ann"}, user=USER)
    try:
        world["execs"] = {key: engine.api.exec_create(c.id, ["touch", "/tmp/hdt-ran"], user=USER)["Id"]
                          for key, c in (("controller", world["controller"]), ("notebook_running", running_nb),
                                         ("node", world["node"]), ("holder", world["holder"]),
                                         ("foreign", world["foreign"]))}

        @SETTINGS
        @given(st.data())
        def run(data):
            send(world["port"], data.draw(exec_start_requests(world)), wait=5)
            for key, exec_id in world["execs"].items():
                if key != "controller":
                    info = engine.api.exec_inspect(exec_id)
                    assert not info["Running"] and info["ExitCode"] is None and not info["Pid"], (key, info)

        run()
        ran = engine.api.exec_inspect(world["execs"]["controller"])
        assert ran["ExitCode"] == 0, ran  # the hub's own exec did start, through the proxy
    finally:
        running_nb.remove(force=True)


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    """A chunked body, and what follows it."""
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        data = rest[size + 2:]
        if size == 0:
            break
        out += rest[:size]
    return out, data


# -- swarm (orchestrator swarm): services and configs --------------------------------------

SERVICE_BASE = {
    "Name": f"{PREFIX}nb-ann", "Labels": {**LABELS, "hubdeploy.user": "ann"},
    "TaskTemplate": {
        "ContainerSpec": {"Image": BASE_IMAGE, "Command": ["sleep", "60"], "Args": None, "Env": [MARK],
                          "Dir": "/tmp", "User": USER, "Groups": None, "StopGracePeriod": 10**9,
                          "Labels": {**LABELS, "hubdeploy.user": "ann"}, "Mounts": None, "Configs": None,
                          "Init": True, "CapabilityDrop": ["ALL"]},
        "Resources": {"Limits": {"NanoCPUs": 10**8, "MemoryBytes": 2**27, "Pids": 64}},
        "RestartPolicy": {"Condition": "none", "Delay": 0, "MaxAttempts": 0, "Window": 0},
        "Placement": {},
        "Networks": [{"Target": "NET", "Aliases": ["nb-ann-1"], "DriverOpts": None}],
    },
    "Mode": {"Replicated": {"Replicas": 1}}, "Networks": None, "EndpointSpec": {"Mode": "dnsrr"},
}
CS = ("TaskTemplate", "ContainerSpec")
SERVICE_INJECTIONS = [
    (CS, "Privileges", {"SELinuxContext": {"Disable": True}}), (CS, "CapabilityAdd", ["SYS_ADMIN"]),
    (CS, "CapabilityDrop", []), (CS, "User", "0:0"), (CS, "Image", "ENGINE_IMAGE"),
    (CS, "Mounts", [{"Type": "bind", "Source": "/", "Target": "/host"}]),
    (CS, "Mounts", [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}]),
    (CS, "Secrets", [{"SecretName": "x", "SecretID": "x", "File": {"Name": "x"}}]),
    (CS, "Sysctls", {"net.ipv4.ip_forward": "1"}), (CS, "Labels", {"hubdeploy.site": "hdtother"}),
    (CS, "Isolation", "hyperv"), (("TaskTemplate",), "PluginSpec", {"Name": "x"}),
    (("TaskTemplate",), "Networks", [{"Target": "bridge"}]), ((), "Labels", {}),
    ((), "EndpointSpec", {"Mode": "vip", "Ports": [{"TargetPort": 8888, "PublishedPort": 18888}]}),
    ((), "Mode", {"Global": {}}), ((), "Name", "hubdeploy-hdtother-nb-ann"),
]


@pytest.fixture(scope="module")
def swarm_world(world, swarm_manager):
    engine = world["engine"]
    net = engine.networks.create(f"{PREFIX}swarm-users", driver="overlay", attachable=True,
                                 labels={"com.docker.compose.project": PROJECT})
    try:
        yield {**world, "net": net.name}
    finally:
        for svc in engine.services.list(filters={"name": PREFIX}):
            svc.remove()
        for _ in range(30):  # the network goes once its tasks' containers have
            try:
                net.remove()
                break
            except docker.errors.APIError:
                time.sleep(1)


@st.composite
def service_requests(draw, w):
    body = _resolve(SERVICE_BASE, w)
    raw = mutate(body, [(p, k, _resolve(v, w)) for p, k, v in SERVICE_INJECTIONS], draw)
    return framed("POST", "/v1.41/services/create", raw, draw(st.sampled_from(FRAMINGS)))


def _allowed_service(spec: dict, w) -> None:
    cs = spec["TaskTemplate"]["ContainerSpec"]
    where = spec["Name"]
    assert spec["Name"].startswith(PREFIX), where
    for labels in (spec.get("Labels") or {}, cs.get("Labels") or {}):
        assert labels.get("hubdeploy.site") == SITE and "hubdeploy.user" in labels, where
    assert cs["Image"].split("@")[0] == BASE_IMAGE, (where, cs["Image"])
    assert cs.get("User") and not reserved_id(int(cs["User"].split(":")[0])), where
    assert cs.get("CapabilityDrop") == ["ALL"] and not cs.get("CapabilityAdd") and not cs.get("Privileges"), where
    assert not cs.get("Secrets") and not cs.get("Sysctls") and not spec["TaskTemplate"].get("PluginSpec"), where
    assert not cs.get("Mounts"), where
    assert [n["Target"] for n in spec["TaskTemplate"]["Networks"]] == [w["net_id"]], where
    assert not (spec.get("EndpointSpec") or {}).get("Ports") and spec["Mode"] == {"Replicated": {"Replicas": 1}}


def test_the_corpus_and_its_variants_never_get_past_the_policy_service(swarm_world):
    """POST /services/create (orchestrator swarm): a user's one-replica service of a site
    image, never more. Each service the engine then holds is checked and removed."""
    w = swarm_world
    engine = w["engine"]
    w["net_id"] = engine.networks.get(w["net"]).id
    made = []

    @SETTINGS
    @given(st.data())
    def run(data):
        before = {s.id for s in engine.services.list()}
        send(w["port"], data.draw(service_requests(w)))
        for svc in engine.services.list():
            if svc.id in before or MARK not in (svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or ()):
                continue
            try:
                _allowed_service(svc.attrs["Spec"], w)
            finally:
                svc.remove()
            made.append(svc.id)

    run()
    assert len(made) >= VARIANTS // 20, made


CONFIG_BASE = {"Name": f"{PREFIX}passwd-0123456789abcdef", "Labels": {**LABELS, "hubdeploy.user": "ann"},
               "Data": "eDp4OjIwMDAxOjIwMDAxOjovaG9tZS94Oi9iaW4vc2gK"}
CONFIG_INJECTIONS = [((), "Name", "hubdeploy-hdtother-passwd-1"), ((), "Labels", {}), ((), "Templating", {
    "Name": "golang"}), ((), "Data", "not base64!"), ((), "Labels", {"hubdeploy.site": "hdtother"})]


@st.composite
def config_requests(draw, w):
    return framed("POST", "/v1.41/configs/create", mutate(CONFIG_BASE, CONFIG_INJECTIONS, draw),
                  draw(st.sampled_from(FRAMINGS)))


def test_the_corpus_and_its_variants_never_get_past_the_policy_config(swarm_world):
    """POST /configs/create (a user's passwd and group as swarm configs): the site's, named
    as its own, and no templating (a template reads other configs and secrets)."""
    engine = swarm_world["engine"]
    made = []

    @SETTINGS
    @given(st.data())
    def run(data):
        before = {c.id for c in engine.configs.list()}
        send(swarm_world["port"], data.draw(config_requests(swarm_world)))
        for config in engine.configs.list():
            if config.id in before:
                continue
            spec = config.attrs["Spec"]
            try:
                assert spec["Name"].startswith(PREFIX) and (spec.get("Labels") or {}).get("hubdeploy.site") == SITE
                assert not spec.get("Templating"), spec
            finally:
                config.remove()
            made.append(config.id)

    run()
    assert len(made) >= VARIANTS // 20, made
