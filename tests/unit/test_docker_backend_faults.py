"""DockerBackend's answers under injected engine faults (no daemon needed)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import docker.errors
import pytest
import requests

from hubdeploy.backends.base import BackendError, Running, ServerSpec, Stopped, Unknown
from hubdeploy.backends.docker import DockerBackend, DockerConfig
from hubsections import profile

CONFIG = DockerConfig(network="hubdeploy-test-net", prefix="hubdeploy-test-f", site="f", allowed_images=("img:1",))
STATE = {"container_name": "hubdeploy-test-f-nb-u", "container_id": "abc", "phase": "started"}


class FakeContainers:
    def __init__(self, outcome):
        self.outcome = outcome

    def get(self, key):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class FakeAPI:
    """The low-level API: stop and remove by id answer with the outcome's error, if any."""

    def __init__(self, outcome):
        self.outcome = outcome

    def stop(self, container_id, timeout=None):
        if isinstance(self.outcome, BaseException):
            raise self.outcome

    remove_container = stop


class FaultyBackend(DockerBackend):
    """The engine answers every container lookup (and stop) with ``outcome`` (a container
    or an error)."""

    def __init__(self, outcome, client_error=None):
        super().__init__(CONFIG)
        self.outcome = outcome
        self.client_error = client_error
        self.clients_made = 0

    def _make_client(self):
        self.clients_made += 1
        if self.client_error is not None:
            raise self.client_error
        return SimpleNamespace(containers=FakeContainers(self.outcome), api=FakeAPI(self.outcome))


def _response(code):
    r = requests.Response()
    r.status_code = code
    r.reason = "Server Error"
    r.url = "http+docker://localhost/v1.41/containers/abc/json"
    return r


def container(status, exit_code=0):
    state = {"Status": status, "ExitCode": exit_code}
    return SimpleNamespace(status=status, labels={"hubdeploy.site": "f"}, attrs={"State": state})


def poll(backend, state=STATE):
    return asyncio.run(backend.poll(dict(state)))


@pytest.mark.parametrize(
    "outcome",
    [
        requests.exceptions.ConnectionError("connection refused"),
        requests.exceptions.ReadTimeout("read timed out"),
        docker.errors.APIError("500 Server Error", response=_response(500), explanation="daemon busy"),
        ConnectionResetError("reset"),
        KeyError("a bug in our code"),
    ],
)
def test_faults_are_unknown(outcome):
    result = poll(FaultyBackend(outcome))
    assert isinstance(result, Unknown), result
    assert result.reason


def test_client_creation_failure_is_unknown_and_retried():
    backend = FaultyBackend(container("running"), client_error=docker.errors.DockerException("no engine"))
    assert isinstance(poll(backend), Unknown)
    backend.client_error = None  # the engine is back
    assert poll(backend) == Running()
    assert backend.clients_made == 2


@pytest.mark.parametrize(
    "outcome, phase, expected",
    [
        (docker.errors.NotFound("gone"), "started", Stopped(0)),
        (container("running"), "started", Running()),
        (container("paused"), "started", Running()),
        (container("restarting"), "started", Running()),
        (container("exited", 2), "started", Stopped(2)),
        (container("dead", 137), "started", Stopped(137)),
        (container("created"), "started", Stopped(0)),
        (container("created"), "start", Running()),
    ],
)
def test_container_states(outcome, phase, expected):
    assert poll(FaultyBackend(outcome), {**STATE, "phase": phase}) == expected


def test_empty_state_is_stopped_without_asking():
    backend = FaultyBackend(requests.exceptions.ConnectionError("down"))
    assert poll(backend, {}) == Stopped(0)
    assert backend.clients_made == 0


def test_stop_on_unreachable_engine_raises():
    backend = FaultyBackend(requests.exceptions.ConnectionError("down"))
    with pytest.raises(BackendError, match="cannot stop"):
        asyncio.run(backend.stop(dict(STATE)))


def test_image_outside_allowlist_never_reaches_engine():
    backend = FaultyBackend(container("running"))
    spec = ServerSpec(user="u", server_name="", profile=profile(name="p", image_ref="evil:latest"))
    with pytest.raises(BackendError, match="not one of"):
        asyncio.run(backend.start(spec, {}))
    assert backend.clients_made == 0


def test_progress_follows_phases():
    backend = FaultyBackend(container("running"))
    state = {"phase": "image"}

    async def scenario():
        events = []

        async def advance():
            for phase in ("volume", "create", "start", "started"):
                await asyncio.sleep(0.25)
                state["phase"] = phase

        task = asyncio.create_task(advance())
        async for event in backend.progress(state):
            events.append(event["progress"])
        await task
        return events

    assert asyncio.run(scenario()) == [10, 30, 50, 70, 90]
