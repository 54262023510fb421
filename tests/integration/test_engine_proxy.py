"""The engine proxy on its own, in front of the real engine (no hub).

The real server (``python -m hubdeploy.engineproxy``, site ``hdteproxy``) on loopback;
the docker SDK and :mod:`hubdeploy.hub.dexec` talk to it as the hub does, through
``tcp://``. What must be refused is refused and leaves nothing behind on the engine;
what the backends do works, streams included.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.errors
import pytest
from docker.utils.socket import frames_iter
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
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hubdeploy.engineproxy", "--site", SITE,
                             "--listen", f"127.0.0.1:{port}", "--log-allowed"], stdout=log, stderr=log)
    made = []
    try:
        for _ in range(100):  # 10 s at most
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_ping", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
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
        yield {
            "engine": engine, "proxy": docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=60),
            "port": port, "tag": tag, "network": network.name, "foreign": foreign, "holder": holder,
            "log": log_path,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        for c in engine.containers.list(all=True, filters={"label": "hubdeploy.site=" + SITE}):
            c.remove(force=True)
        for obj in reversed(made):
            try:
                obj.remove(force=True) if hasattr(obj, "status") else obj.remove()
            except docker.errors.NotFound:
                pass


def _refused(call, rule: str) -> str:
    with pytest.raises(docker.errors.APIError) as err:
        call()
    assert err.value.status_code == 403, err.value
    assert f"({rule})" in str(err.value.explanation), err.value.explanation
    return str(err.value.explanation)


def _nothing_named(engine, name: str) -> None:
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(name)


def test_creating_a_privileged_container_is_refused(env):
    name = f"{PREFIX}priv-{env['tag']}"
    _refused(lambda: env["proxy"].containers.create(BASE_IMAGE, ["id"], name=name, labels=LABELS,
                                                    network=env["network"], privileged=True), "privileged")
    _nothing_named(env["engine"], name)


def test_creating_a_container_that_bind_mounts_the_root_is_refused(env):
    name = f"{PREFIX}root-{env['tag']}"
    _refused(lambda: env["proxy"].containers.create(BASE_IMAGE, ["id"], name=name, labels=LABELS,
                                                    network=env["network"], volumes={"/": {"bind": "/host"}}),
             "bind")
    # Nor through a local volume whose options make it a bind of /.
    _refused(lambda: env["proxy"].volumes.create(f"{PREFIX}v-{env['tag']}", driver_opts={
        "type": "none", "o": "bind", "device": "/"}, labels=LABELS), "volume")
    _nothing_named(env["engine"], name)


def test_a_volume_of_a_site_whose_name_extends_this_ones_is_refused(env):
    """Site ``<site>-x`` has names that start with this site's prefix; its labels tell."""
    engine = env["engine"]
    theirs = engine.volumes.create(f"{PREFIX}x-homes-{env['tag']}",
                                   labels={"com.docker.compose.project": f"hubdeploy-{SITE}-x"})
    try:
        name = f"{PREFIX}steal-{env['tag']}"
        _refused(lambda: env["proxy"].containers.create(
            BASE_IMAGE, ["id"], name=name, labels=LABELS, network=env["network"],
            mounts=[docker.types.Mount("/h", theirs.name, type="volume")]), "volume")
        _nothing_named(engine, name)
    finally:
        theirs.remove(force=True)


def test_another_sites_container_cannot_be_inspected_stopped_or_execed(env):
    foreign, proxy = env["foreign"], env["proxy"]
    _refused(lambda: proxy.containers.get(foreign.name), "foreign-container")
    _refused(lambda: proxy.api.stop(foreign.id, timeout=1), "foreign-container")
    _refused(lambda: proxy.api.exec_create(foreign.id, ["id"]), "foreign-container")
    _refused(lambda: proxy.api.remove_container(foreign.id, force=True), "foreign-container")
    # Listing it does not show it either, whatever filter is asked for (the low-level
    # list: the high-level one inspects each container, and the holder below is refused).
    listed = {c["Id"] for c in proxy.api.containers(all=True)}
    assert env["holder"].id in listed and foreign.id not in listed
    assert foreign.id not in {c["Id"] for c in proxy.api.containers(all=True, filters={"label": "hubdeploy.site"})}
    foreign.reload()
    assert foreign.status == "running"


def test_the_sites_container_that_holds_the_socket_cannot_be_execed(env):
    _refused(lambda: env["proxy"].api.exec_create(env["holder"].id, ["id"]), "engine-holder")
    _refused(lambda: env["proxy"].containers.get(env["holder"].id).get_archive("/s.sock"), "engine-holder")


def test_the_sites_notebook_lifecycle_works_with_a_streamed_exec(env):
    proxy = env["proxy"]
    name = f"{PREFIX}nb-{env['tag']}"
    home = proxy.volumes.create(f"{PREFIX}home-{env['tag']}", labels=LABELS)
    try:
        c = proxy.containers.create(BASE_IMAGE, ["sleep", "600"], name=name, labels=LABELS, network=env["network"],
                                    mounts=[docker.types.Mount("/home/x", home.name, type="volume")],
                                    cap_drop=["ALL"], security_opt=["no-new-privileges:true"], init=True)
        c.start()
        assert proxy.containers.get(name).status == "running"
        assert c.exec_run(["sh", "-c", "echo out; echo err >&2; exit 3"], demux=True) == (3, (b"out\n", b"err\n"))
        # The hijacked stream both ways: stdin in, then EOF, output back frame by frame.
        api = proxy.api
        exec_id = api.exec_create(c.id, ["sh", "-c", "cat; echo done >&2"], stdin=True)["Id"]
        sock = api.exec_start(exec_id, socket=True)
        sock._sock.sendall(b"line one\nline two\n")
        sock._sock.shutdown(socket.SHUT_WR)
        frames = list(frames_iter(sock, False))
        sock.close()
        assert b"".join(d for s, d in frames if s == 1) == b"line one\nline two\n"
        assert b"".join(d for s, d in frames if s == 2) == b"done\n"
        for _ in range(100):  # the exit code is set a moment after the stream ends
            info = api.exec_inspect(exec_id)
            if not info["Running"]:
                break
            time.sleep(0.05)
        assert info["ExitCode"] == 0
        assert c.id in [x["Id"] for x in proxy.api.containers()]
        c.stop(timeout=2)
        c.remove()
        _nothing_named(env["engine"], name)
    finally:
        for leftover in env["engine"].containers.list(all=True, filters={"name": name}):
            leftover.remove(force=True)
        env["engine"].volumes.get(home.name).remove(force=True)


def test_dexec_runs_a_command_in_the_controller_through_the_proxy(env):
    """What the Slurm backend does for sbatch: find the controller by its compose labels,
    exec as a user, stdin in, stdout/stderr/exit status back."""
    engine = env["engine"]
    project = f"hubdeploy-{SITE}"
    ctl = engine.containers.run(BASE_IMAGE, ["sleep", "600"], name=f"{PREFIX}ctl-{env['tag']}", detach=True,
                                labels={**LABELS, "com.docker.compose.project": project,
                                        "com.docker.compose.service": "slurmctld"})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hubdeploy.hub.dexec", "--project", project, "--service", "slurmctld",
             "--user", "nobody", "--workdir", "/tmp", "--env", "HDTE_VALUE", "--",
             "sh", "-c", 'cat; echo "$HDTE_VALUE $(id -un) $(pwd)" >&2; exit 7'],
            input=b"#!/bin/sh\nscript\n", capture_output=True, timeout=120,
            env={**os.environ, "DOCKER_HOST": f"tcp://127.0.0.1:{env['port']}", "HDTE_VALUE": "v1"},
        )
        assert proc.stdout == b"#!/bin/sh\nscript\n", proc.stderr
        assert proc.stderr == b"v1 nobody /tmp\n"
        assert proc.returncode == 7
    finally:
        ctl.remove(force=True)
    # Another site's controller is not found through this site's proxy: 125, "unreachable".
    proc = subprocess.run(
        [sys.executable, "-m", "hubdeploy.hub.dexec", "--project", "hubdeploy-hdteother", "--service", "x",
         "--user", "nobody", "--", "true"], capture_output=True, timeout=120,
        env={**os.environ, "DOCKER_HOST": f"tcp://127.0.0.1:{env['port']}"})
    assert proc.returncode == 125, proc.stderr


def test_an_exec_whose_client_closed_stdin_survives_the_garbage_collector(env):
    """A hijacked exec after the client's EOF on stdin, while the command has not yet
    written: the proxy's connection must outlive any garbage collection. The proxy runs
    in this process with a collection every 20 ms; a handler reachable only through its
    own cycle would be destroyed, and the exec would end with 126 and no output."""
    engine = env["engine"]
    project = f"hubdeploy-{SITE}"
    ctl = engine.containers.run(BASE_IMAGE, ["sleep", "600"], name=f"{PREFIX}gc-{env['tag']}", detach=True,
                                labels={**LABELS, "com.docker.compose.project": project,
                                        "com.docker.compose.service": "slurmctld"})
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
        tasks = [asyncio.ensure_future(serve(SitePolicy(SITE), "/var/run/docker.sock", "127.0.0.1", port, started)),
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
            return subprocess.run(
                [sys.executable, "-m", "hubdeploy.hub.dexec", "--project", project, "--service", "slurmctld",
                 "--user", "nobody", "--", "sh", "-c", f"sleep 1; echo answered {i}"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                env={**os.environ, "DOCKER_HOST": f"tcp://127.0.0.1:{port}"})

        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(dexec, range(4)))
        for i, proc in enumerate(done):
            assert (proc.returncode, proc.stdout) == (0, f"answered {i}\n".encode()), proc
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
        ctl.remove(force=True)


def test_each_refusal_is_one_log_line_without_the_environment(env):
    secret = secrets.token_hex(16)
    _refused(lambda: env["proxy"].containers.create(BASE_IMAGE, ["id"], name=f"{PREFIX}log-{env['tag']}",
                                                    labels=LABELS, network=env["network"], privileged=True,
                                                    environment={"TOKEN": secret}), "privileged")
    text = env["log"].read_text()
    assert secret not in text
    lines = [ln for ln in text.splitlines() if "refused POST" in ln and "rule=privileged" in ln]
    assert lines, text
