"""swarm.registry on a real single-node swarm with a real registry: ``up`` pushes the
login profiles' images the registry lacks (and says so), the hub starts servers by
digest, and those servers run the very image built here.

The engine is a swarm manager for the session (conftest ``swarm_manager``); the registry
is Debian's docker-registry on loopback, which Docker trusts as an insecure registry.
"""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest
from registryfixture import build_registry_image, running_registry
from stackfixture import diagnostics, run_5x4, run_cli, tear_down_site, user_session

from hubdeploy.ops import stack

pytestmark = pytest.mark.integration

SITE = "hdswreg"
PORT = 8700
REGISTRY = "127.0.0.1:8701"
SITE_YAML = f"""\
name: {SITE}
public: {{host: 0.0.0.0, port: {PORT}}}
orchestrator: swarm
swarm: {{registry: '{REGISTRY}'}}
hub:
  authenticator: {{class: dummy}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
profiles:
  - {{name: login, image: base, default: true, memory: 1G}}
"""


@pytest.fixture(scope="module")
def site_file(tmp_path_factory, client, swarm_manager):
    path = tmp_path_factory.mktemp("swregsite") / "site.yaml"
    path.write_text(SITE_YAML)
    run_cli(path, "down", "--volumes", "--take-over", timeout=300)  # an interrupted run's leftovers
    try:
        yield path
    finally:
        tear_down_site(path, SITE)  # also the registry image and the digests pulled back


def up(site_file):
    proc = run_cli(site_file, "up")
    if proc.returncode != 0:
        raise AssertionError(f"up failed\n{proc.stdout}\n{proc.stderr}\n{diagnostics(f'hubdeploy-{SITE}')}")
    return proc


def snapshot(state) -> dict[str, bytes]:
    """The state directory's files but the build contexts: rendered files, secrets, owner."""
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*"))
            if p.is_file() and p.relative_to(state).parts[0] != "build"}


def test_up_pushes_what_is_missing_and_servers_run_it_by_digest(site_file, client):
    t0 = time.monotonic()
    state = site_file.parent / ".hubdeploy"
    rendered = state / "rendered"
    # No registry listening yet: up names it, exits 1, and has started and written nothing
    # (the fixture's down rendered the files once; the build contexts are not the stack's).
    before = snapshot(state)
    failed = run_cli(site_file, "up")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"to {REGISTRY} failed" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    assert client.containers.list(all=True, filters={"label": f"com.docker.compose.project=hubdeploy-{SITE}"}) == []
    assert client.services.list(filters={"label": f"com.docker.stack.namespace=hubdeploy-{SITE}"}) == []
    assert snapshot(state) == before

    plans = stack.prepare(site_file).plans
    image = build_registry_image(client, plans["debian"].ref, f"hubdeploy/{SITE}-registry:test")
    with running_registry(client, image, f"hubdeploy-{SITE}-registry", int(REGISTRY.rsplit(":", 1)[1])):
        first = up(site_file)
        pushed = re.search(rf"pushed base to {re.escape(REGISTRY)} \((sha256:[0-9a-f]{{64}})\)", first.stderr)
        assert pushed, first.stderr
        ref = f"{REGISTRY}/{plans['base'].ref.rsplit(':', 1)[0]}@{pushed.group(1)}"
        hub_json = json.loads((rendered / "hub" / "hub.json").read_text())
        assert [p["image_ref"] for p in hub_json["spawner"]["profiles"]] == [ref]

        again = up(site_file)
        assert f"nothing to push: {REGISTRY} has base" in again.stderr, again.stderr
        assert "pushed base" not in again.stderr
        # render (as status and down do in memory) keeps the digest up pinned, so a hub
        # restarted after it still starts servers by digest.
        rendered_again = run_cli(site_file, "render")
        assert rendered_again.returncode == 0, rendered_again.stderr
        hub_json = json.loads((rendered / "hub" / "hub.json").read_text())
        assert [p["image_ref"] for p in hub_json["spawner"]["profiles"]] == [ref]

        hub, token = user_session(SimpleNamespace(url=f"http://127.0.0.1:{PORT}/"), "rita")
        hub.api("POST", "users/rita/server", json={"profile": "login"}, ok=(201, 202))
        hub.wait_ready("rita", "", time.monotonic() + 180)
        (svc,) = client.services.list(filters={"label": [f"hubdeploy.site={SITE}", "hubdeploy.user=rita"]})
        assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == ref
        assert run_5x4(hub.server_url("rita"), token) == "20"
        # The task's container runs the bytes built here, not merely something by that name.
        (task,) = svc.tasks(filters={"desired-state": "running"})
        container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        assert container.image.id == client.images.get(plans["base"].ref).id
        hub.stop_server("rita", "", time.monotonic() + 120, remove=False)
    print(f"swarm registry test: {time.monotonic() - t0:.0f} s", flush=True)
