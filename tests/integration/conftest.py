"""Fixtures for tests against the real Docker engine, hub and proxy."""

from __future__ import annotations

import os

import pytest

from stackfixture import SITE_NAME, Stack, free_port, remove_session_images, run_cli, tear_down_site


@pytest.fixture(scope="session")
def client():
    """The real Docker engine; no engine is an error, never a skip."""
    import docker

    c = docker.from_env(timeout=600)
    c.ping()
    return c


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The session's running hubdeploy stack (site ``hdtstack``); call ``ensure_up()``."""
    s = Stack(dir=tmp_path_factory.mktemp("stack"),
              port=int(os.environ.get("HUBDEPLOY_TEST_STACK_PORT") or 0) or free_port())
    s.write_site()
    # Start clean: an interrupted earlier session may have left this project's stack and
    # its database (with servers it believed running) on the engine.
    run_cli(s.site_file, "down", "--volumes", "--take-over", timeout=300)
    yield s
    tear_down_site(s.site_file, SITE_NAME)


@pytest.fixture
def up_stack(stack):
    stack.ensure_up()
    return stack


# Whether this session made the engine a swarm manager (then it leaves at the very end).
_SWARM_MADE = []


@pytest.fixture(scope="session")
def swarm_manager(client):
    """The engine as a single-node swarm manager, for the swarm tests.

    Made once per session and left in ``pytest_sessionfinish``, after every stack is
    down: leaving a swarm was seen to break name resolution on the networks of stacks
    still running on the engine.
    """
    from hubdeploy.ops import swarm
    from hubdeploy.errors import OperationError

    if client.info()["Swarm"]["LocalNodeState"] != "active":
        with pytest.raises(OperationError, match="not a swarm manager"):
            swarm.require_manager(client)
        client.swarm.init(advertise_addr="127.0.0.1")
        _SWARM_MADE.append(True)
    swarm.require_manager(client)
    return client


def pytest_sessionfinish(session, exitstatus):
    # Every fixture is torn down by now (the last test's teardown ends the session scope).
    remove_session_images()
    if _SWARM_MADE:
        import docker

        client = docker.from_env()
        try:
            client.swarm.leave(force=True)
            # The bridge swarm mode made for its containers' way out stays behind.
            for net in client.networks.list(names=["docker_gwbridge"]):
                net.remove()
        except docker.errors.APIError as exc:
            print(f"cleanup: leaving the swarm: {exc}")
