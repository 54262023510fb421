"""Suite-wide rules.

- In CI (``CI`` set) a skipped test fails the run: an integration test that quietly skips
  is a test that does not run.
- Every Docker object a test creates carries the prefix ``hubdeploy-test`` or belongs to a
  test site named ``hdt...``; the session finaliser removes whatever is left.
"""

from __future__ import annotations

import os

import pytest

TEST_SITE_PREFIX = "hdt"


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not os.environ.get("CI") or reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; in CI every test must run", red=True)
        session.exitstatus = 1


def _sweep_docker() -> None:
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception:
        return
    for c in client.containers.list(all=True):
        if c.name.startswith(("hubdeploy-test", f"hubdeploy-{TEST_SITE_PREFIX}")):
            try:
                c.remove(force=True)
            except Exception:  # already gone
                pass
    for n in client.networks.list():
        if n.name.startswith(("hubdeploy-test", f"hubdeploy-{TEST_SITE_PREFIX}")):
            try:
                n.remove()
            except Exception:
                pass
    for v in client.volumes.list():
        if v.name.startswith(("hubdeploy-test", f"hubdeploy-{TEST_SITE_PREFIX}")):
            try:
                v.remove(force=True)
            except Exception:
                pass


@pytest.fixture(scope="session", autouse=True)
def _docker_sweep():
    yield
    # Only in CI, where this is the one test session on the engine: on a developer's
    # machine a sweep would remove the objects of another session still running.
    if os.environ.get("CI"):
        _sweep_docker()
