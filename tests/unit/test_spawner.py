"""HubdeploySpawner without a hub or a daemon: profiles, form, state, poll answers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest

pytest.importorskip("jupyterhub")

from jupyterhub.objects import Hub
from jupyterhub.spawner import SpawnException
from tornado import web

from hubdeploy.backends.base import (
    BackendConfig,
    Backend,
    Running,
    Stopped,
    Unknown,
)
from hubdeploy.hub import spawner as spawner_mod
from hubdeploy.hub.spawner import HubdeploySpawner
from hubsections import SHARED, profile

PROFILES = [
    profile(name="small", display_name="Small <b>", description="1 core & 2G",
            image_ref="hubdeploy/test-base:000000000001", cpu=1.0, mem_limit=2 * 1024**3,
            environment={"PROFILE": "small"}),
    profile(name="big", display_name="Big", image_ref="hubdeploy/test-base:000000000002", cpu=4.0, default=True,
            spawner_config={"environment": {"EXTRA": "1"}, "start_timeout": 77}),
]


@dataclass(frozen=True, kw_only=True)
class FakeConfig(BackendConfig):
    site: str


class FakeBackend(Backend):
    """Records calls; answers poll with whatever the test puts in ``answer``."""

    Config = FakeConfig

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self.specs = []
        self.stopped = []
        self.answer = Running()

    async def start(self, spec, state):
        self.specs.append(spec)
        state["job"] = len(self.specs)
        state["phase"] = "started"
        return f"host-{len(self.specs)}", spec.port

    async def stop(self, state):
        self.stopped.append(dict(state))

    async def poll(self, state):
        return self.answer

    async def progress(self, state):
        yield {"progress": 50, "message": f"job {state.get('job')}"}


@pytest.fixture
def make_spawner(monkeypatch):
    monkeypatch.setattr(spawner_mod, "get_backend", lambda name: FakeBackend)
    monkeypatch.setattr(spawner_mod, "_BACKENDS", {})

    def make(profiles=PROFILES, name="", **kw):
        # The fake backend's host does not listen: don't wait the default 30 s for it.
        kw.setdefault("http_timeout", 0)
        kw.setdefault("concurrent_spawn_limit", 8)
        kw.setdefault("identity", SHARED)
        user = SimpleNamespace(name="has@", url="/user/has@/", escaped_name="has%40")
        return HubdeploySpawner(
            user=user,
            hub=Hub(),
            orm_spawner=SimpleNamespace(name=name, server=None),
            profiles=profiles,
            backend="fake",
            backend_configs={"fake": FakeConfig(site="t")},
            **kw,
        )

    return make


def run(coro):
    return asyncio.run(coro)


def test_form_lists_profiles_escaped_with_default_checked(make_spawner):
    form = run(make_spawner().get_options_form())
    assert form.count('type="radio" name="profile"') == 2
    assert "Small &lt;b&gt;" in form and "Small <b>" not in form
    assert "1 core &amp; 2G" in form and "(1 CPU, 2 GiB)" in form
    assert 'value="big" checked' in form and 'value="small" checked' not in form


def test_form_remembers_previous_choice(make_spawner):
    s = make_spawner(user_options={"profile": "small"})
    assert 'value="small" checked' in run(s.get_options_form())


def test_no_form_with_one_profile(make_spawner):
    assert run(make_spawner(profiles=PROFILES[:1]).get_options_form()) == ""


def test_options_from_form(make_spawner):
    s = make_spawner()
    assert s.run_options_from_form({"profile": ["small"]}) == {"profile": "small"}
    assert s.run_options_from_form({}) == {"profile": "big"}
    assert s.options_from_query({"profile": ["small"]}) == {"profile": "small"}
    with pytest.raises(web.HTTPError) as exc:
        s.run_options_from_form({"profile": ["nope"]})
    assert exc.value.status_code == 400 and "small, big" in exc.value.log_message


def test_api_user_options_refused_before_start_without_traceback(make_spawner, caplog):
    """JupyterHub runs apply_user_options, then the pre-spawn hook, then start(). The hook
    refuses; apply_user_options must not raise: JupyterHub logs a traceback for that."""
    s = make_spawner(user_options={"profile": "gpu"})
    with caplog.at_level(logging.DEBUG):
        run(s._run_apply_user_options(s.user_options))
    assert not [r for r in caplog.records if r.exc_info]
    with pytest.raises(SpawnException) as exc:
        s.run_pre_spawn_hook()
    assert exc.value.status_code == 400 and "small, big" in exc.value.message
    assert s.get_backend().specs == []


@pytest.mark.parametrize(
    "options, words",
    [
        ({"profile": "x" * 100000}, ["'profile'", "100000 characters", "limit is 256"]),
        ({"profile": ["small"]}, ["'profile'", "must be a string", "list"]),
        ({"profile": "small", "cpu": {"n": 1}}, ["'cpu'", "whole number"]),
        ({"profile": "small", "time": True}, ["'time'", "bool"]),
        ({"profile": "small", "memory": "2G\n"}, ["'memory'", "control characters"]),
        ({"profile": "small", "note": "y" * 5000}, ["as JSON", "limit is 4096"]),
        ({f"k{i}": "" for i in range(17)}, ["17 fields", "limit is 16"]),
        (["small"], ["must be an object", "list"]),
    ],
)
def test_malformed_or_oversized_options_are_a_400_naming_the_field(make_spawner, options, words):
    s = make_spawner(user_options={"profile": "small"})
    s.user_options = options if isinstance(options, dict) else {}
    with pytest.raises(SpawnException) as exc:
        s.resolve_profile(options)
    assert exc.value.status_code == 400
    for word in words:
        assert word in exc.value.message
    # The refusal never echoes the oversized value.
    assert len(exc.value.message) < 200


def test_oversized_form_value_is_a_400_naming_the_field(make_spawner):
    s = make_spawner()
    with pytest.raises(SpawnException, match="'profile' is 300 characters long; the limit is 256"):
        s.run_options_from_form({"profile": ["p" * 300]})


def test_start_applies_profile_and_builds_spec(make_spawner):
    s = make_spawner(name="second", user_options={"profile": "small"}, environment={"SITE": "x"})
    s.api_token = "tok"
    host, port = run(s.start())
    backend = s.get_backend()
    spec = backend.specs[-1]
    assert (host, port) == ("host-1", 8888)
    assert spec.user == "has@" and spec.server_name == "second" and spec.port == 8888
    assert spec.cmd == ["jupyterhub-singleuser"]
    assert spec.env["PROFILE"] == "small" and spec.env["SITE"] == "x"
    assert spec.env["JUPYTERHUB_API_TOKEN"] == "tok"
    assert spec.env["JUPYTERHUB_SERVICE_URL"].startswith("http://0.0.0.0:8888/")
    assert spec.profile.cpu == 1.0 and spec.profile.mem_limit == 2 * 1024**3
    assert "tok" not in repr(spec)

    # Switching profiles must not keep the previous profile's settings.
    s.user_options = {"profile": "big"}
    run(s.start())
    spec = backend.specs[-1]
    assert "PROFILE" not in spec.env and spec.env["EXTRA"] == "1" and spec.env["SITE"] == "x"
    assert spec.profile.cpu == 4.0 and s.start_timeout == 77
    assert s.mem_limit is None


def test_the_backend_sees_the_spawners_effective_cpu_and_memory(make_spawner):
    """What a profile's spawner_config or the site's pass-through config set on the
    Spawner is what the backend runs with, not hub.json's profile as written."""
    tuned = profile(name="tuned", cpu=1.0, spawner_config={"cpu_limit": 3.0, "mem_limit": "1G"})
    plain = profile(name="plain", default=True)
    s = make_spawner(profiles=[tuned, plain], user_options={"profile": "tuned"})
    run(s.start())
    seen = s.get_backend().specs[-1].profile
    assert (seen.cpu, seen.mem_limit) == (3.0, 2**30) and tuned.cpu == 1.0
    # A profile that sets neither gets the site's Spawner values (hub.config pass-through).
    s = make_spawner(profiles=[tuned, plain], cpu_limit=0.5, mem_limit="512M")
    run(s.start())
    seen = s.get_backend().specs[-1].profile
    assert (seen.name, seen.cpu, seen.mem_limit) == ("plain", 0.5, 512 * 2**20)


def test_profile_is_in_force_before_jupyterhub_reads_start_timeout(make_spawner):
    """JupyterHub reads start_timeout after the pre-spawn hook and before start() runs: it
    then holds the outer bound, and the profile's value is the start's own budget."""
    s = make_spawner(user_options={"profile": "big"}, start_timeout=60)
    s.run_pre_spawn_hook()
    assert s._start_budget == 77
    assert s.start_timeout == s.queue_timeout + s.start_timeout_max + spawner_mod.OUTER_MARGIN
    run(s.start())  # applies nothing twice: the next profile still restores the site's value
    assert s.get_backend().specs[-1].env["EXTRA"] == "1"
    assert s.start_timeout == 77  # put back once start() is over
    s.user_options = {"profile": "small"}
    s.run_pre_spawn_hook()
    assert s._start_budget == 60
    with pytest.raises(web.HTTPError) as exc:
        s.user_options = {"profile": "gone"}
        s.run_pre_spawn_hook()
    assert exc.value.status_code == 400


def test_unknown_profile_at_start_is_400(make_spawner):
    s = make_spawner(user_options={"profile": "gone"})
    with pytest.raises(web.HTTPError) as exc:
        run(s.start())
    assert exc.value.status_code == 400


def test_state_round_trip_and_poll(make_spawner):
    s = make_spawner()
    assert run(s.poll()) == 0  # never started: not running
    run(s.start())
    state = s.get_state()
    assert state["hubdeploy"] == {"backend": "fake", "state": {"job": 1, "phase": "started", "profile": "big"}}

    # A restarted hub: a fresh spawner loads the state and still finds the server.
    s2 = make_spawner()
    s2.load_state(state)
    backend = s2.get_backend()
    assert run(s2.poll()) is None
    backend.answer = Stopped(3)
    assert run(s2.poll()) == 3
    backend.answer = Unknown("daemon down")
    assert run(s2.poll()) is None  # kept on the books
    run(s2.stop())
    assert backend.stopped == [{"job": 1, "phase": "started", "profile": "big"}]
    s2.clear_state()
    assert "hubdeploy" not in s2.get_state()
    assert run(s2.poll()) == 0


def test_progress_yields_backend_events(make_spawner):
    s = make_spawner()
    run(s.start())

    async def collect():
        return [e async for e in s.progress()]

    assert run(collect()) == [{"progress": 50, "message": "job 1"}]


def test_unknown_spawner_config_trait_is_an_error(make_spawner):
    bad = [replace(PROFILES[0], spawner_config={"no_such_trait": 1})]
    with pytest.raises(web.HTTPError, match="no_such_trait"):
        run(make_spawner(profiles=bad).start())


def test_start_returns_once_the_server_listens(make_spawner):
    """The spawner waits for the port (not JupyterHub's backoff), and no longer than it must."""
    import socket
    import threading
    import time

    spawner = make_spawner(http_timeout=10)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    listener = socket.socket()

    def listen_later():
        time.sleep(0.5)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    threading.Thread(target=listen_later).start()
    t0 = time.monotonic()
    run(spawner._wait_listening("127.0.0.1", port))
    elapsed = time.monotonic() - t0
    listener.close()
    assert 0.4 < elapsed < 5, elapsed

    # Nothing ever listens: bounded by http_timeout, and no exception.
    spawner.http_timeout = 1
    t0 = time.monotonic()
    run(spawner._wait_listening("127.0.0.1", port))
    assert time.monotonic() - t0 < 3


def test_listen_poll_interval_grows_with_the_wait_within_bounds():
    from hubdeploy.hub.listening import LISTEN_POLL_MAX, LISTEN_POLL_MIN, listen_poll_interval

    assert listen_poll_interval(0) == LISTEN_POLL_MIN == listen_poll_interval(1)
    assert listen_poll_interval(4) == pytest.approx(0.2)  # a twentieth of the wait so far
    assert listen_poll_interval(60) == LISTEN_POLL_MAX
    waits = [listen_poll_interval(t / 10) for t in range(0, 300)]
    assert waits == sorted(waits)


def test_wait_listening_resolves_a_name(make_spawner):
    """A server's DNS name (as backends return) is looked up, then its address connected to."""
    import socket

    family, _, _, _, address = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family)
    listener.bind((address[0], 0))
    listener.listen()
    try:
        assert run(make_spawner(http_timeout=5)._wait_listening("localhost", listener.getsockname()[1])) is True
    finally:
        listener.close()
