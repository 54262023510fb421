"""The engine proxy on its own, in front of the real engine (no hub).

The real server (``python -m hubdeploy.engineproxy``, site ``hdteproxy``) on loopback;
the docker SDK and :mod:`hubdeploy.hub.dexec` talk to it as the hub does, through
``tcp://``. What must be refused is refused and leaves nothing behind on the engine;
what the backends do works, streams included.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.errors
import pytest
from proxyfixture import controller, remove_all, running_proxy, send
from test_docker_backend import BASE_IMAGE, _ensure_base_image

from hubdeploy.engineproxy.policy import SitePolicy
from hubdeploy.engineproxy.server import serve

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_ENGINE_PROXY_SITE", "hdteproxy")
PREFIX = f"hubdeploy-{SITE}-"
LABELS = {"hubdeploy.site": SITE}


def _free_port() -> int:
    for port in range(8620, 8630):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.fail("no free port in 8620-8629")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    engine = docker.from_env(timeout=120)
    _ensure_base_image(engine)
    tag = secrets.token_hex(4)
    port = _free_port()
    log_path = tmp_path_factory.mktemp("engineproxy") / "proxy.log"
    made = []
    with running_proxy(SITE, port, log_path, "--image", BASE_IMAGE, "--log-allowed"):
        try:
            network = engine.networks.create(f"{PREFIX}users-{tag}", labels=LABELS)
            made.append(network)
            # Another site's container, made directly on the engine.
            foreign = engine.containers.run(BASE_IMAGE, ["sleep", "600"], name=f"hdte-foreign-{tag}", detach=True,
                                            labels={"hubdeploy.site": "hdteother"})
            made.append(foreign)
            # One of this site's containers that holds the socket, as the engine proxy does.
            holder = engine.containers.run(BASE_IMAGE, ["sleep", "600"], name=f"hdte-holder-{tag}", detach=True,
                                           labels=LABELS, volumes={"/var/run/docker.sock": {"bind": "/s.sock"}})
            made.append(holder)
            made.append(controller(engine, BASE_IMAGE, f"{PREFIX}ctl-{tag}", SITE))
            yield {
                "engine": engine, "proxy": docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=60),
                "port": port, "tag": tag, "network": network.name, "foreign": foreign, "holder": holder,
                "log": log_path,
            }
        finally:
            for c in engine.containers.list(all=True, filters={"label": "hubdeploy.site=" + SITE}):
                c.remove(force=True)
            remove_all(made)


USER = "20001:20001"
NOTEBOOK = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "pids_limit": 64, "user": USER}


def _refused(call, rule: str) -> str:
    with pytest.raises(docker.errors.APIError) as err:
        call()
    assert err.value.status_code == 403, err.value
    assert f"({rule})" in str(err.value.explanation), err.value.explanation
    return str(err.value.explanation)


def _nothing_named(engine, name: str) -> None:
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(name)


def _dexec(port: int, *argv: str, user: str = USER, env: dict | None = None, stdin: bytes = b"",
           service: str = "slurmctld") -> subprocess.CompletedProcess:
    names = [w for k in (env or {}) for w in ("--env", k)]
    return subprocess.run(
        [sys.executable, "-m", "hubdeploy.hub.dexec", "--project", f"hubdeploy-{SITE}", "--service", service,
         "--user", user, "--workdir", "/tmp", *names, "--", *argv],
        input=stdin, capture_output=True, timeout=120,
        env={**os.environ, **(env or {}), "DOCKER_HOST": f"tcp://127.0.0.1:{port}"})


def test_creating_a_privileged_container_is_refused(env):
    name = f"{PREFIX}priv-{env['tag']}"
    _refused(lambda: env["proxy"].containers.create(BASE_IMAGE, ["id"], name=name, labels=LABELS,
                                                    network_mode=env["network"], privileged=True, **NOTEBOOK), "field")
    _nothing_named(env["engine"], name)


def test_creating_a_container_that_bind_mounts_the_root_is_refused(env):
    name = f"{PREFIX}root-{env['tag']}"
    _refused(lambda: env["proxy"].containers.create(
        BASE_IMAGE, ["id"], name=name, labels={**LABELS, "hubdeploy.user": "x"}, network_mode=env["network"],
        mounts=[docker.types.Mount("/host", "/", type="bind")], **NOTEBOOK), "bind")
    # Nor through a local volume whose options make it a bind of /.
    _refused(lambda: env["proxy"].volumes.create(f"{PREFIX}v-{env['tag']}", driver_opts={
        "type": "none", "o": "bind", "device": "/"}, labels=LABELS), "field-value")
    _nothing_named(env["engine"], name)


def test_a_volume_of_a_site_whose_name_extends_this_ones_is_refused(env):
    """Site ``<site>-x`` has names that start with this site's prefix; its labels tell."""
    engine = env["engine"]
    theirs = engine.volumes.create(f"{PREFIX}x-homes-{env['tag']}",
                                   labels={"com.docker.compose.project": f"hubdeploy-{SITE}-x"})
    try:
        name = f"{PREFIX}steal-{env['tag']}"
        _refused(lambda: env["proxy"].containers.create(
            BASE_IMAGE, ["id"], name=name, labels={**LABELS, "hubdeploy.user": "x"}, network_mode=env["network"],
            mounts=[docker.types.Mount("/h", theirs.name, type="volume")], **NOTEBOOK), "volume")
        _nothing_named(engine, name)
    finally:
        theirs.remove(force=True)


def test_another_sites_container_cannot_be_inspected_stopped_or_execed(env):
    foreign, proxy = env["foreign"], env["proxy"]
    _refused(lambda: proxy.containers.get(foreign.name), "foreign-container")
    _refused(lambda: proxy.api.stop(foreign.id, timeout=1), "foreign-container")
    _refused(lambda: proxy.api.exec_create(foreign.id, ["id"], user=USER), "foreign-container")
    _refused(lambda: proxy.api.remove_container(foreign.id, force=True), "foreign-container")
    # Listing it does not show it either, whatever filter is asked for.
    listed = {c["Id"] for c in proxy.api.containers(all=True)}
    assert env["holder"].id in listed and foreign.id not in listed
    assert foreign.id not in {c["Id"] for c in proxy.api.containers(all=True, filters={"label": "hubdeploy.site"})}
    foreign.reload()
    assert foreign.status == "running"


def test_the_container_that_holds_the_socket_is_out_of_reach(env):
    _refused(lambda: env["proxy"].api.exec_create(env["holder"].id, ["id"], user=USER), "foreign-container")
    _refused(lambda: env["proxy"].api.get_archive(env["holder"].id, "/etc/passwd"), "foreign-container")


def test_the_sites_notebook_lifecycle_works(env):
    proxy = env["proxy"]
    name = f"{PREFIX}nb-{env['tag']}"
    home = proxy.volumes.create(f"{PREFIX}home-{env['tag']}", labels=LABELS)
    try:
        c = proxy.containers.create(BASE_IMAGE, ["sleep", "600"], name=name,
                                    labels={**LABELS, "hubdeploy.user": "x"}, network_mode=env["network"],
                                    mounts=[docker.types.Mount("/home/x", home.name, type="volume")],
                                    init=True, **NOTEBOOK)
        from hubdeploy.contract.identity import etc_archive

        assert b"root:x:0:0" in b"".join(c.get_archive("/etc/passwd")[0])
        assert c.put_archive("/", etc_archive("x:x:20001:20001::/home/x:/bin/sh\n", "x:x:20001:\n"))
        c.start()
        assert proxy.containers.get(name).status == "running"
        # The engine ran what was checked: the user's uid, no capability, no new privileges.
        attrs = env["engine"].containers.get(name).attrs
        assert attrs["Config"]["User"] == USER and attrs["HostConfig"]["CapDrop"] == ["ALL"]
        assert env["engine"].containers.get(name).exec_run(["cat", "/etc/passwd"]).output.startswith(b"x:x:20001")
        _refused(lambda: c.exec_run(["id"]), "container-kind")  # the hub never execs in a notebook
        assert c.id in [x["Id"] for x in proxy.api.containers()]
        c.stop(timeout=2)
        c.remove()
        _nothing_named(env["engine"], name)
    finally:
        for leftover in env["engine"].containers.list(all=True, filters={"name": name}):
            leftover.remove(force=True)
        env["engine"].volumes.get(home.name).remove(force=True)


def test_dexec_runs_a_users_slurm_command_in_the_controller_through_the_proxy(env):
    """What the Slurm backend does for sbatch: find the controller by its compose labels,
    exec as the user, stdin in, stdout/stderr/exit status back."""
    proc = _dexec(env["port"], "sbatch", stdin=b"#!/bin/sh\nscript\n", env={
        "HDTE_VALUE": "v1", "HDTE_SCRIPT": 'cat; echo "$HDTE_VALUE $(id -u):$(id -g) $(pwd)" >&2; exit 7'})
    assert proc.stdout == b"#!/bin/sh\nscript\n", proc.stderr
    assert proc.stderr == b"v1 20001:20001 /tmp\n"
    assert proc.returncode == 7
    # Another site's controller is not found through this site's proxy: 125, "unreachable".
    proc = subprocess.run(
        [sys.executable, "-m", "hubdeploy.hub.dexec", "--project", "hubdeploy-hdteother", "--service", "x",
         "--user", USER, "--", "squeue"], capture_output=True, timeout=120,
        env={**os.environ, "DOCKER_HOST": f"tcp://127.0.0.1:{env['port']}"})
    assert proc.returncode == 125, proc.stderr


def test_in_the_controller_root_runs_only_the_listings(env):
    """Root in the controller reads the munge key: only the read-only listings run as
    root, with nothing of the caller's; anything else, or any other container, is refused."""
    from hubdeploy.contract import slurmcmd

    ok = _dexec(env["port"], *slurmcmd.list_jobs_argv(), user="0:0")
    assert ok.returncode == 0 and ok.stdout.decode() == f"squeue as 0: {' '.join(slurmcmd.list_jobs_argv()[1:])}\n"
    for argv, user in ((["cat", "/etc/shadow"], "0:0"), (["squeue", "-h"], "0:0"), (["cat", "/etc/shadow"], USER),
                       (["squeue"], "1:1"), (["squeue"], "64030:64030")):
        proc = _dexec(env["port"], *argv, user=user)
        assert proc.returncode == 125 and b"refused" in proc.stderr, (argv, user, proc)
    proc = _dexec(env["port"], *slurmcmd.list_jobs_argv(), user="0:0", env={"LD_PRELOAD": "/x.so"})
    assert proc.returncode == 125 and b"exec-root" in proc.stderr, proc


def test_a_request_smuggled_after_a_checked_one_never_reaches_the_engine(env):
    """The red team's request: a ping, then on the same connection with bare line feeds a
    privileged create. The proxy answers 400 and the engine never sees the create."""
    name = f"{PREFIX}smuggled-{env['tag']}"
    body = json.dumps({"Image": BASE_IMAGE, "Labels": LABELS, "HostConfig": {"Privileged": True}}).encode()
    smuggled = (b"GET /_ping HTTP/1.1\nHost: x\n\nPOST /containers/create?name=" + name.encode()
                + b" HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: "
                + str(len(body)).encode() + b"\n\n" + body + b"\r\n\r\n")
    answer = send(env["port"], smuggled)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert answer.count(b"HTTP/1.1") == 1
    _nothing_named(env["engine"], name)


def test_each_request_on_a_kept_alive_connection_is_checked_on_its_own(env):
    name = f"{PREFIX}second-{env['tag']}"
    body = json.dumps({"Image": BASE_IMAGE, "Labels": LABELS, "HostConfig": {"Privileged": True}}).encode()
    two = (b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
           + f"POST /containers/create?name={name} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    answer = send(env["port"], two)
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\nOK" in answer, answer[:300]
    second = answer[answer.index(b"HTTP/1.1", 10):]
    assert second.startswith(b"HTTP/1.1 403") and b"(field)" in second, second[:300]
    _nothing_named(env["engine"], name)


def test_an_exec_whose_client_closed_stdin_survives_the_garbage_collector(env):
    """A hijacked exec after the client's EOF on stdin, while the command has not yet
    written: the proxy's connection must outlive any garbage collection. The proxy runs
    in this process with a collection every 20 ms; a handler reachable only through its
    own cycle would be destroyed, and the exec would end with 126 and no output."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def collecting():
        while True:
            gc.collect()
            await asyncio.sleep(0.02)

    stop = asyncio.Event()

    async def main():
        started = asyncio.Event()
        policy = SitePolicy(SITE, images=frozenset({BASE_IMAGE}))
        tasks = [asyncio.ensure_future(serve(policy, "/var/run/docker.sock", "127.0.0.1", port, started)),
                 asyncio.ensure_future(collecting())]
        await started.wait()
        ready.set()
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the in-process proxy did not start"

        def dexec(i: int) -> subprocess.CompletedProcess:
            return _dexec(port, "squeue", env={"HDTE_SCRIPT": f"sleep 1; echo answered {i}"})

        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(dexec, range(4)))
        for i, proc in enumerate(done):
            assert (proc.returncode, proc.stdout) == (0, f"answered {i}\n".encode()), proc
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_each_refusal_is_one_log_line_without_the_environment(env):
    secret = secrets.token_hex(16)
    _refused(lambda: env["proxy"].containers.create(BASE_IMAGE, ["id"], name=f"{PREFIX}log-{env['tag']}",
                                                    labels=LABELS, network_mode=env["network"], privileged=True,
                                                    environment={"TOKEN": secret}, **NOTEBOOK), "field")
    text = env["log"].read_text()
    assert secret not in text
    lines = [ln for ln in text.splitlines() if "refused POST" in ln and "rule=field" in ln]
    assert lines, text
