"""SwarmBackend against a real single-node swarm on this machine's engine.

The engine is a swarm manager for the session (conftest ``swarm_manager``). Every object is named
``hubdeploy-test-swarm-<random>...`` and removed by the module's finalizer.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from hubdeploy.backends.base import BackendError, Running, ServerSpec, Stopped, parse_config
from hubdeploy.backends.swarm import SwarmBackend
from hubdeploy.contract.identity import Group, Identity
from hubsections import profile
from test_docker_backend import _ensure_base_image, _quietly, build_notebook_image

pytestmark = pytest.mark.integration

SERVE = ["python3", "-m", "http.server", "8888", "--bind", "0.0.0.0"]
BASE_IMAGE = "hubdeploy-test/debian-python3:bookworm"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def swarm(client, swarm_manager):
    """An attachable overlay network and a notebook-like image on the swarm manager."""
    _ensure_base_image(client)
    tag = uuid.uuid4().hex[:8]
    prefix = f"hubdeploy-test-swarm-{tag}"
    image = build_notebook_image(client, f"hubdeploy-test/swarm-notebook:{tag}")
    network = client.networks.create(f"{prefix}-users", driver="overlay", attachable=True)
    yield {"prefix": prefix, "image": image, "network": network.name, "site": f"test-swarm-{tag}"}
    for svc in client.services.list(filters={"name": prefix}):
        _quietly(svc.remove)
    deadline = time.monotonic() + 60  # tasks' containers go after their services
    while client.containers.list(all=True, filters={"name": prefix}) and time.monotonic() < deadline:
        time.sleep(0.5)
    for cfg in client.configs.list(filters={"name": prefix}):
        _quietly(cfg.remove)
    for v in client.volumes.list(filters={"name": prefix}):
        _quietly(lambda v=v: v.remove(force=True))
    _quietly(network.remove)
    _quietly(lambda: client.images.remove(image, force=True))


def make_backend(env, cls=SwarmBackend, **extra):
    return cls(parse_config(cls.Config, {"network": env["network"], "prefix": env["prefix"], "site": env["site"],
                                         "allowed_images": [env["image"]], "schedule_grace": 2, **extra}, "swarm"))


def make_spec(env, user, server="", cmd=SERVE, identity=None, **fields):
    prof = profile(**{"name": "login", "image_ref": env["image"], "cpu": 0.5, "mem_limit": 256 * 1024**2,
                      "pids_limit": 1024, "home": False, **fields})
    return ServerSpec(user=user, server_name=server, profile=prof, cmd=cmd, identity=identity,
                      env={"JUPYTERHUB_API_TOKEN": f"token-{uuid.uuid4().hex}"})


def probe(client, env, script, *args):
    """Run python ``script`` in a plain container on the overlay network."""
    out = client.containers.run(BASE_IMAGE, ["python3", "-c", script, *args], network=env["network"], remove=True)
    return out.decode()


def task_container(client, state):
    for t in client.api.tasks(filters={"service": state["service_id"]}):
        cid = (t["Status"].get("ContainerStatus") or {}).get("ContainerID")
        if cid:
            return client.containers.get(cid)
    raise AssertionError("no task container")


def test_server_runs_as_a_service_as_its_user(client, swarm):
    backend = make_backend(swarm)
    ident = Identity(user="ada", name="ada", uid=42001, gid=42001, home="/tmp",
                     groups=(Group("optics", 42100),))
    state: dict = {}
    try:
        host, port = run(backend.start(make_spec(swarm, "ada", identity=ident), state))
        assert run(backend.poll(state)) == Running()
        svc = client.services.get(state["service_id"])
        spec = svc.attrs["Spec"]
        assert spec["Labels"]["hubdeploy.user"] == "ada"
        limits = spec["TaskTemplate"]["Resources"]["Limits"]
        assert limits["NanoCPUs"] == 5 * 10**8 and limits["MemoryBytes"] == 256 * 1024**2 and limits["Pids"] == 1024
        # Reached by its per-instance alias on the overlay network, as the proxy does.
        script = ("import sys,time,urllib.request\n"
                  "for i in range(60):\n"
                  "    try: print(urllib.request.urlopen(f'http://{sys.argv[1]}:8888/', timeout=2).status); break\n"
                  "    except Exception: time.sleep(0.5)\n")
        assert probe(client, swarm, script, host).strip() == "200"
        # Inside: the user's account by name, its groups, no capabilities.
        box = task_container(client, state)
        out = box.exec_run(["sh", "-c", "id -un; id -G; grep CapEff /proc/self/status"]).output.decode().split("\n")
        assert out[0] == "ada"
        assert set(out[1].split()) == {"42001", "42100"}
        assert out[2].split()[1] == "0000000000000000"

        # The hub lost track of it: list_servers still finds it, and the tracked state polls.
        found = run(backend.list_servers())
        assert [f.id for f in found] == [state["service_id"]]
        assert found[0].state == "running"

        assert len(state["configs"]) == 2 and all(client.configs.list(filters={"name": c}) for c in state["configs"])
        label = {"label": f"com.docker.swarm.service.id={state['service_id']}"}

        async def stop_then_release():
            # stop returns once the server has exited; the container and the account
            # configs go after it, in the background, while this loop still runs.
            await backend.stop(state)
            running = client.api.containers(filters={**label, "status": "running"})
            pending = set(backend.releasing)
            await asyncio.wait(pending, timeout=60)
            return running, pending

        running, pending = run(stop_then_release())
        assert running == [] and len(pending) == 1 and all(t.done() and not t.exception() for t in pending)
        assert client.api.containers(all=True, filters=label) == []
        assert not any(client.configs.list(filters={"name": c}) for c in state["configs"])
        assert isinstance(run(backend.poll(state)), Stopped)
        assert not client.services.list(filters={"id": state["service_id"]})
        run(backend.stop(state))  # twice is fine
    finally:
        run(backend.stop(state))


def test_remove_returns_when_the_container_and_configs_are_gone(client, swarm):
    """What ``down`` stops untracked servers with: it removes the users network next."""
    backend = make_backend(swarm)
    ident = Identity(user="bea", name="bea", uid=42002, gid=42002, home="/tmp", groups=())
    state: dict = {}
    try:
        run(backend.start(make_spec(swarm, "bea", identity=ident), state))
        assert state["configs"]
        run(backend.remove(state["service_id"]))
        assert client.api.containers(all=True, filters={"label": f"com.docker.swarm.service.id={state['service_id']}"}) == []
        assert not any(client.configs.list(filters={"name": c}) for c in state["configs"])
        assert backend.releasing == set()
    finally:
        run(backend.stop(state))


def test_a_release_never_removes_the_configs_a_start_is_about_to_mount(client, swarm):
    """A restart reuses the stopped server's configs while the stop's release is still
    removing them. Injected fault: the release's removal runs at the worst moment, after
    the start found or made the configs and before its service exists."""

    class ReleaseMidStart(SwarmBackend):
        def _account_configs(self, client, spec, state, starting):
            refs = super()._account_configs(client, spec, state, starting)
            self._remove_configs(state["configs"])
            return refs

    backend = make_backend(swarm, ReleaseMidStart)
    ident = Identity(user="cy", name="cy", uid=42003, gid=42003, home="/tmp", groups=())
    state: dict = {}
    try:
        run(backend.start(make_spec(swarm, "cy", identity=ident), state))
        assert run(backend.poll(state)) == Running()
        assert all(client.configs.list(filters={"name": c}) for c in state["configs"])
        assert not backend._configs_starting  # nothing counted once the start is done
    finally:
        if state.get("service_id"):
            run(backend.remove(state["service_id"]))
    assert not any(client.configs.list(filters={"name": c}) for c in state["configs"])


def test_unplaceable_profile_fails_with_swarms_reason(client, swarm):
    backend = make_backend(swarm)
    state: dict = {}
    events: list[dict] = []

    async def start_and_watch():
        spec = make_spec(swarm, "nowhere", placement={"constraints": ["node.labels.role==no-such-role"],
                                                     "spread": []})
        watcher = asyncio.create_task(collect(backend.progress(state)))
        try:
            await backend.start(spec, state)
        finally:
            await asyncio.wait_for(watcher, 10)

    async def collect(stream):
        async for e in stream:
            events.append(e)

    with pytest.raises(BackendError, match=r"no suitable node \(scheduling constraints not satisfied"):
        run(start_and_watch())
    assert any("no suitable node" in e["message"] for e in events), events
    assert not client.services.list(filters={"name": state["service_name"]})  # nothing left behind

    with pytest.raises(BackendError, match="insufficient resources"):
        run(backend.start(make_spec(swarm, "huge", reserve={"cpu": None, "mem": 10**15}), {}))


def test_exit_status_and_only_allowlisted_images(client, swarm):
    backend = make_backend(swarm)
    state: dict = {}
    try:
        run(backend.start(make_spec(swarm, "exit3", cmd=["sh", "-c", "sleep 1; exit 3"]), state))
        for _ in range(100):
            result = run(backend.poll(state))
            if result != Running():
                break
            time.sleep(0.1)
        assert isinstance(result, Stopped) and result.status == 3, result
    finally:
        run(backend.stop(state))
    with pytest.raises(BackendError, match="not one of this site's profile images"):
        run(backend.start(make_spec(swarm, "img", image_ref=BASE_IMAGE), {}))
