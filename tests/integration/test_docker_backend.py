"""DockerBackend against the real Docker engine.

Needs an engine and a local Debian image with python3; without a registry the image is
bootstrapped once with debootstrap and kept as ``hubdeploy-test/debian-python3:bookworm``
(a cache, like the rootfs cache of ``hubdeploy up``). Everything else a test creates is
named ``hubdeploy-test-<random>...`` and removed by the module's finalizer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import docker
import pytest

from hubdeploy.backends.base import (
    BackendError,
    Running,
    ServerSpec,
    Stopped,
    Unknown,
    parse_config,
)
from hubdeploy.backends.docker import DockerBackend, DockerConfig
from hubdeploy.contract import names
from hubdeploy.contract.identity import Identity
from hubsections import profile

pytestmark = pytest.mark.integration

BASE_IMAGE = "hubdeploy-test/debian-python3:bookworm"
MIRROR = os.environ.get("HUBDEPLOY_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
USERS = [("has@", ""), ("秀樹", ""), ("a--b", ""), ("has@", "second"), ("秀樹" * 6, "long")]
SERVE = ["python3", "-m", "http.server", "8888", "--bind", "0.0.0.0"]


def run(coro):
    return asyncio.run(coro)


def _ensure_base_image(client):
    try:
        client.images.get(BASE_IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    if not shutil.which("debootstrap"):
        pytest.fail(f"{BASE_IMAGE} is missing and debootstrap is not installed (make host-test)")
    with tempfile.TemporaryDirectory(prefix="hubdeploy-test-rootfs-") as tmp:
        root = os.path.join(tmp, "root")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", root, MIRROR],
            check=True,
            capture_output=True,
            timeout=900,
        )
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True, capture_output=True)
        assert tar.wait() == 0


def build_notebook_image(client, image: str) -> str:
    """A notebook-like image: uid 1000 jovyan with an empty /home/jovyan, as the
    project's images have."""
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        "RUN useradd --uid 1000 --no-create-home --home-dir /home/jovyan jovyan"
        " && mkdir -p /home/jovyan && chown 1000:1000 /home/jovyan\n"
        "USER 1000\nWORKDIR /home/jovyan\n"
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=image, rm=True)
    return image


@pytest.fixture(scope="module")
def env(client):
    """A users network and a notebook-like image (uid 1000, empty /home/jovyan) of our own."""
    _ensure_base_image(client)
    tag = uuid.uuid4().hex[:8]
    prefix = f"hubdeploy-test-{tag}"
    image = build_notebook_image(client, f"hubdeploy-test/notebook:{tag}")
    network = client.networks.create(f"{prefix}-users", driver="bridge")
    data = client.volumes.create(f"{prefix}-data")
    yield {"prefix": prefix, "image": image, "network": network.name, "site": f"test-{tag}", "data": data.name}
    # Diagnostics, shown by pytest when a test of this module failed; then every object
    # goes, each removal on its own so that one failure does not leave the rest behind.
    for c in client.containers.list(all=True, filters={"name": prefix}):
        _quietly(lambda c=c: print(f"--- {c.name} ({c.status})\n{c.logs(tail=50).decode(errors='replace')}"))
        _quietly(lambda c=c: c.remove(force=True))
    for v in client.volumes.list(filters={"name": prefix}):
        _quietly(lambda v=v: v.remove(force=True))
    _quietly(network.remove)
    _quietly(lambda: client.images.remove(image, force=True))


def _quietly(action):
    try:
        action()
    except docker.errors.APIError as exc:
        print(f"cleanup: {exc}")


def make_backend(env, **extra):
    config = {
        "network": env["network"],
        "prefix": env["prefix"],
        "site": env["site"],
        "allowed_images": [env["image"]],
        **extra,
    }
    return DockerBackend(parse_config(DockerConfig, config, "docker"))


def make_spec(env, user, server="", cmd=SERVE, **fields):
    prof = profile(**{
        "name": "small",
        "image_ref": env["image"],
        "cpu": 0.5,
        "mem_limit": 256 * 1024**2,
        "home": True,
        "volumes": [{"source": env["data"], "target": "/data", "read_only": True}],
        **fields,
    })
    token = f"token-{uuid.uuid4().hex}"
    return ServerSpec(user=user, server_name=server, profile=prof, env={"JUPYTERHUB_API_TOKEN": token}, cmd=cmd)


def fetch_from_network(client, env, hosts):
    """HTTP status of http://HOST:8888/ for each host, asked from a container on the network."""
    probe = (
        "import sys,time,urllib.request\n"
        "for h in sys.argv[1:]:\n"
        "    for i in range(50):\n"
        "        try:\n"
        "            print(h, urllib.request.urlopen(f'http://{h}:8888/', timeout=2).status); break\n"
        "        except Exception as e:\n"
        "            err = e; time.sleep(0.2)\n"
        "    else:\n"
        "        print(h, 'ERR', err)\n"
    )
    out = client.containers.run(
        env["image"],
        ["python3", "-c", probe, *hosts],
        name=f"{env['prefix']}-probe-{uuid.uuid4().hex[:6]}",
        network=env["network"],
        remove=True,
    )
    return dict(line.split(" ", 1) for line in out.decode().splitlines())


def assert_removed(client, container_id):
    try:
        c = client.containers.get(container_id)
    except docker.errors.NotFound:
        return
    # Another remover (a concurrent sweep) may have got there first.
    assert c.status == "removing", c.status


def test_lifecycle_with_awkward_names(client, env):
    backend = make_backend(env)
    started = []
    try:
        for user, server in USERS:
            spec = make_spec(env, user, server)
            state: dict = {}
            host, port = run(backend.start(spec, state))
            name = names.container_name(env["prefix"], user, server)
            assert state["container_name"] == name and port == 8888
            assert host.startswith(name[:40]) and host != name and len(host) <= 63
            assert run(backend.poll(state)) == Running()
            started.append((user, server, host, state))

        # The proxy's view: every server answers by the host the backend returned,
        # including the long name that only resolves through its alias.
        answers = fetch_from_network(client, env, [h for _, _, h, _ in started])
        assert answers == {h: "200" for _, _, h, _ in started}

        user, server, host, state = started[0]
        c = client.containers.get(state["container_id"])
        assert c.labels == {
            "hubdeploy.site": env["site"],
            "hubdeploy.user": user,
            "hubdeploy.server": server,
            "hubdeploy.profile": "small",
        }
        assert c.attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert c.attrs["HostConfig"]["Memory"] == 256 * 1024**2
        # No capability, no privilege gain, the profile's default pids limit (the schema's).
        assert c.attrs["HostConfig"]["CapDrop"] == ["ALL"] and not c.attrs["HostConfig"]["CapAdd"]
        assert c.attrs["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
        assert c.attrs["HostConfig"]["PidsLimit"] == 512
        assert list(c.attrs["NetworkSettings"]["Networks"]) == [env["network"]]
        mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
        assert mounts["/home/jovyan"]["Name"] == names.home_volume(env["prefix"], user)
        assert mounts["/data"]["RW"] is False
        # A fresh home volume took the image's ownership: the notebook user can write.
        write_home = "import os; open('/home/jovyan/f','w'); print(os.stat('/home/jovyan').st_uid)"
        code, out = c.exec_run(["python3", "-c", write_home])
        assert (code, out.strip()) == (0, b"1000")
        code, _ = c.exec_run(["python3", "-c", "open('/data/f','w')"])
        assert code != 0  # read-only profile volume

        # Both servers of "has@" share one home.
        other = client.containers.get(started[3][3]["container_id"])
        check = other.exec_run(["python3", "-c", "import os; print(os.path.exists('/home/jovyan/f'))"])
        assert check.output.strip() == b"True"

        for user, _server, _host, state in started:
            run(backend.stop(state))
            assert isinstance(run(backend.poll(state)), Stopped)
            assert_removed(client, state["container_id"])
            client.volumes.get(names.home_volume(env["prefix"], user))  # the home stays
        run(backend.stop(started[0][3]))  # stopping twice is fine
    finally:
        for *_, state in started:
            run(backend.stop(state))
        run(backend.close())


def test_exit_status_is_reported(client, env):
    backend = make_backend(env)
    state: dict = {}
    spec = make_spec(env, "exit3", cmd=["python3", "-c", "raise SystemExit(3)"], home=False, volumes=[])
    run(backend.start(spec, state))
    try:
        for _ in range(100):
            result = run(backend.poll(state))
            if result != Running():
                break
            time.sleep(0.1)
        assert result == Stopped(3)
    finally:
        run(backend.stop(state))


def test_replaces_untracked_container_never_adopts(client, env):
    backend = make_backend(env)
    spec = make_spec(env, "adopt", home=False, volumes=[])
    first: dict = {}
    run(backend.start(spec, first))
    try:
        # A running server the hub no longer tracks: its token belongs to a lost session,
        # so a new start replaces it rather than handing the hub a server it cannot use.
        again = make_spec(env, "adopt", home=False, volumes=[])
        third: dict = {}
        run(backend.start(again, third))
        assert third["container_id"] != first["container_id"]
        env_now = client.containers.get(third["container_id"]).attrs["Config"]["Env"]
        assert f"JUPYTERHUB_API_TOKEN={again.env['JUPYTERHUB_API_TOKEN']}" in env_now

        # A container squatting on the name without our labels is removed.
        run(backend.stop(third))
        name = names.container_name(env["prefix"], "adopt")
        squatter = client.containers.run(env["image"], ["sleep", "60"], name=name, detach=True)
        fourth: dict = {}
        run(backend.start(spec, fourth))
        assert fourth["container_id"] != squatter.id
        assert client.containers.get(name).labels["hubdeploy.site"] == env["site"]
        run(backend.stop(fourth))
    finally:
        for state in (first, locals().get("fourth") or {}):
            run(backend.stop(state))


def test_only_allowlisted_local_images_start(client, env):
    backend = make_backend(env)
    with pytest.raises(BackendError, match="not one of this site's profile images"):
        run(backend.start(make_spec(env, "img", image_ref=BASE_IMAGE), {}))
    missing = "hubdeploy-test/absent:0"
    backend = make_backend(env, allowed_images=[missing])
    with pytest.raises(BackendError, match="not on this Docker engine"):
        run(backend.start(make_spec(env, "img", image_ref=missing), {}))
    assert not client.containers.list(all=True, filters={"name": names.container_name(env["prefix"], "img")})


def test_unreachable_engine_is_unknown_never_stopped(client, env, tmp_path):
    backend = make_backend(env)
    state: dict = {}
    run(backend.start(make_spec(env, "outage", home=False, volumes=[]), state))
    try:
        # A socket path where nothing listens, and one that accepts and never answers.
        dead = make_backend(env, docker_url=f"unix://{tmp_path}/absent.sock")
        hung_path = str(tmp_path / "hung.sock")
        hung_sock = socket.socket(socket.AF_UNIX)
        hung_sock.bind(hung_path)
        hung_sock.listen(8)
        hung = make_backend(env, docker_url=f"unix://{hung_path}", timeout=1)

        result = run(dead.poll(state))
        assert isinstance(result, Unknown), result
        with pytest.raises(BackendError, match="cannot"):
            run(dead.stop(state))
        with pytest.raises(BackendError, match="cannot reach"):
            run(dead.start(make_spec(env, "outage2", home=False, volumes=[]), {}))

        async def poll_while_ticking():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            t = asyncio.create_task(ticker())
            result = await hung.poll(state)
            t.cancel()
            return result, ticks

        result, ticks = run(poll_while_ticking())
        assert isinstance(result, Unknown), result
        assert ticks >= 10  # the event loop kept running while the engine hung
        hung_sock.close()

        assert run(backend.poll(state)) == Running()  # it was running all along
    finally:
        run(backend.stop(state))


def test_a_start_costs_three_engine_calls(client, env):
    """create, put_archive (the account) and start: no look-up of the image, the name or
    the container before or after, and the image's /etc files read only once. Counted
    at the SDK's HTTP session, so every request to the engine counts."""
    backend = make_backend(env)
    states = []
    try:
        counts = []
        for user in ("calls-a", "calls-b"):
            ident = Identity(user=user, name=user, uid=23456 + len(counts), gid=23456 + len(counts),
                             home=f"/home/{user}")
            spec = dataclasses.replace(make_spec(env, user, home=False, volumes=[]), identity=ident)
            state: dict = {}
            states.append(state)
            before = backend.engine_calls
            run(backend.start(spec, state))
            counts.append(backend.engine_calls - before)
            # The account is in the container: the server runs as it, by name.
            code, out = client.containers.get(state["container_id"]).exec_run(["id", "-un"])
            assert (code, out.strip()) == (0, user.encode())
        # The first start also read the image's /etc/passwd and /etc/group; every later
        # one only the three.
        assert counts[1] == 3, counts
        assert counts[0] > 3, counts
        before = backend.engine_calls
        run(backend.stop(states[1]))
        assert backend.engine_calls - before == 2  # stop and remove, by id
        assert_removed(client, states[1]["container_id"])
    finally:
        for state in states:
            run(backend.stop(state))
        run(backend.close())
