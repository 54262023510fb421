"""Starts beyond the site's limit wait in order, on a real stack, and none times out.

Site ``hdtqueue2``: ``hub.concurrent_spawn_limit: 1``, ``start_timeout: 20`` and
``http_timeout: 5``. Its profile's server sleeps 8 s before it execs
jupyterhub-singleuser: a slow but live start (the container and its process run), longer
than http_timeout. Four users ask for their servers at once through the REST API, so
the last one waits for three whole starts (about 3 x 11 s) before its own begins:
well past start_timeout from its request. Before the spawn queue JupyterHub's
``wait_for(start(), start_timeout)`` killed it. All four must become ready, the last
one's progress stream must say "waiting: N starts ahead" with N going down, and its
server must answer a kernel through the proxy. The servers are stopped and the users
deleted afterwards; the module's finaliser takes the stack down.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest
from stackfixture import diagnostics, free_port, run_5x4, run_cli, tear_down_site

from hubdeploy.smoke.hubclient import HubClient, escape_path

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_QUEUE_SITE", "hdtqueue2")
SITE_YAML = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  admin_users: [admin]
  authenticator: {{class: dummy}}
  concurrent_spawn_limit: 1
  config: {{Spawner: {{start_timeout: 20, http_timeout: 5}}}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
profiles:
  - name: login
    image: base
    default: true
    spawner_config: {{cmd: [sh, -c, 'sleep {delay}; exec jupyterhub-singleuser "$@"', sh]}}
"""
DELAY = 8  # seconds each server sleeps before it starts: a live process, not yet listening
START_TIMEOUT = 20
USERS = ["qa", "qb", "qc", "qd"]
SERVER = "q"  # a named server: the paths the hub's own UI uses
WAITING = re.compile(r"^waiting: (\d+) starts ahead")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("spawnqueue")
    site_file = site_dir / "site.yaml"
    port = int(os.environ.get("HUBDEPLOY_TEST_QUEUE_PORT") or 0) or free_port()
    site_file.write_text(SITE_YAML.format(name=SITE, port=port, delay=DELAY))
    run_cli(site_file, "down", "--volumes", "--take-over", timeout=300)  # an interrupted earlier run's leftovers
    try:
        proc = run_cli(site_file, "up")
        if proc.returncode != 0:
            raise AssertionError(f"up failed\n{proc.stdout}\n{proc.stderr}\n{diagnostics(f'hubdeploy-{SITE}')}")
        admin = HubClient(f"http://127.0.0.1:{port}/")
        admin.login("admin", "")
        token, _ = admin.create_token("admin", scopes=None, expires_in=3600)
        yield HubClient(f"http://127.0.0.1:{port}/", token=token)
    finally:
        tear_down_site(site_file, SITE)


def follow_progress(api: HubClient, user: str, limit: float, out: list[dict]) -> None:
    """Append every event of ``user``'s spawn progress stream to ``out`` until ready or
    failed (bounded by ``limit`` s; the hub sends a keepalive every 8 s)."""
    deadline = time.monotonic() + limit
    with api.api("GET", f"users/{escape_path(user)}/servers/{SERVER}/progress", stream=True, ok=(200,),
                 timeout=(30, 20)) as resp:
        for line in resp.iter_lines(decode_unicode=True):
            if time.monotonic() > deadline:
                return
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                out.append(event)
                if event.get("ready") or event.get("failed"):
                    return


def wait_pending(api: HubClient, user: str, limit: float = 60) -> None:
    """Poll until the hub has taken ``user``'s start (bounded)."""
    deadline = time.monotonic() + limit
    while not (api.server_model(user, SERVER) or {}).get("pending"):
        assert time.monotonic() < deadline, f"{user}'s start never became pending"
        time.sleep(0.05)


def test_four_starts_through_one_slot_all_become_ready_in_order(hub):
    for u in USERS:
        hub.create_user(u)
    try:
        errors: list[str] = []

        def post(u: str) -> None:
            # Returns when the start is done or after the hub's slow_spawn_timeout (202).
            try:
                hub.api("POST", f"users/{escape_path(u)}/servers/{SERVER}", json={"profile": "login"}, ok=(201, 202))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(f"{u}: {exc}")

        requested: dict[str, float] = {}
        events: dict[str, list[dict]] = {u: [] for u in USERS}
        ready_after: dict[str, float] = {}

        def follow(u: str) -> None:
            # Each user's own stream: the moment its ready event arrives is its time.
            try:
                follow_progress(hub, u, 300, events[u])
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(f"{u} progress: {exc}")
            if events[u] and events[u][-1].get("ready"):
                ready_after[u] = time.monotonic() - requested[u]

        threads = []
        for u in USERS:  # one after the other, so the line's order is USERS' order
            requested[u] = time.monotonic()
            threads.append(threading.Thread(target=post, args=(u,)))
            threads[-1].start()
            wait_pending(hub, u)
            threads.append(threading.Thread(target=follow, args=(u,)))
            threads[-1].start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        print(f"seconds from request to ready: {ready_after}")
        assert sorted(ready_after) == sorted(USERS), (ready_after, events)
        # First come, first served, end to end.
        assert sorted(USERS, key=ready_after.get) == USERS, ready_after

        last = USERS[-1]
        events = events[last]
        messages = [e.get("message", "") for e in events]
        assert not any(e.get("failed") for e in events), messages
        assert events[-1].get("ready"), messages
        ahead = [int(m.group(1)) for m in map(WAITING.match, messages) if m]
        # The 4th of 4 through one slot: 3 ahead at first, then fewer, down to 1.
        assert ahead and ahead[0] == 3 and ahead[-1] == 1, messages
        assert ahead == sorted(ahead, reverse=True) and len(set(ahead)) == len(ahead), messages

        # The test really waited: the last start took longer than start_timeout from its
        # request, every one longer than http_timeout to listen, and none was cut short.
        assert ready_after[last] > START_TIMEOUT, ready_after
        assert min(ready_after.values()) > DELAY, ready_after
        for u in USERS:
            assert hub.server_model(u, SERVER)["ready"], u
        token, _ = hub.create_token(last, scopes=None, expires_in=600)
        assert run_5x4(hub.server_url(last, SERVER), token) == "20"
    finally:
        for u in USERS:
            try:
                hub.stop_server(u, SERVER, time.monotonic() + 120)
            finally:
                hub.delete_user(u)
