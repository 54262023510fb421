"""A full queue and a refused account, seen through the hub of a real stack.

Site ``hdtqueue``: a one-node, one-core Slurm cluster in the stack that admits only the
accounts ``physics`` and ``retired`` (``slurm.cluster.accounts``: a rendered
job_submit.lua refuses every other account with Slurm's own "Invalid account" error).
One job fills the node, so a user's compute server must wait in the queue.

Everything a user sees comes through the hub's REST API (hubdeploy.smoke.hubclient):
the pending reason in the spawn's progress events, a stop while the job waits, and
Slurm's refusal of an account as the API's error message. The tests share one stack;
each cleans up its jobs and servers, so each also works alone.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time

import pytest
from slurmstack import SlurmStack, running
from stackfixture import run_5x4, user_session

from hubdeploy.smoke.hubclient import HubAPIError, escape_path

pytestmark = pytest.mark.integration

# Another value (HUBDEPLOY_TEST_QUEUE_SITE) lets two runs share one engine.
SITE = os.environ.get("HUBDEPLOY_TEST_QUEUE_SITE", "hdtqueue")
SITE_YAML = """\
name: {name}
public: {{host: 127.0.0.1, port: {port}}}
hub:
  admin_users: [admin]
  authenticator: {{class: dummy}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
slurm:
  # One core in all: one job fills the cluster.
  cluster: {{nodes: 1, cpus: 1, memory: 1G, accounts: [physics, retired]}}
profiles:
  - name: compute
    image: base
    node: compute
    cpu: 1
    memory: 512M
    default: true
    slurm: {{account: physics, time: "30"}}
  - name: retired
    image: base
    node: compute
    cpu: 1
    memory: 512M
    slurm: {{account: retired, time: "30"}}
"""
LUA = "/etc/slurm/job_submit.lua"
# A waiting job's reason: the node is busy (Resources) or an earlier job waits for it (Priority).
PENDING = re.compile(r"Slurm job (\d+) is pending \((Resources|Priority)\)")


class QueueStack(SlurmStack):
    def put_file(self, path: str, data: bytes) -> None:
        """Replace a file in the controller's container (mode 0644, mtime now, so the lua
        plugin, which reloads its script when the mtime changes, reads the new text)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[1])
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        assert self.container("slurmctld").put_archive(path.rsplit("/", 1)[0], buf.getvalue())


@pytest.fixture(scope="module")
def queue_stack(tmp_path_factory):
    stack = QueueStack(tmp_path_factory.mktemp("queuestack"), SITE, SITE_YAML, squeue_format="%T %j %a")
    with running(stack, ["c1"]) as s:
        # The tests' own jobs run as jovyan, who needs an association like any user.
        s.associate("jovyan", ["physics", "retired"])
        yield s


def _progress_until(hub, user: str, pattern: re.Pattern, limit: float) -> tuple[re.Match, list[str]]:
    """Read the spawn's progress event stream until a message matches; (match, messages)."""
    messages: list[str] = []
    deadline = time.monotonic() + limit
    # The hub sends a keepalive every 8 s, so a read never blocks past 20 s.
    with hub.api("GET", f"users/{escape_path(user)}/server/progress", stream=True, ok=(200,),
                 timeout=(30, 20)) as resp:
        for line in resp.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                found = pattern.search(messages[-1])
                if found:
                    return found, messages
                if event.get("failed") or event.get("ready"):
                    break
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"no progress message matched {pattern.pattern!r}; got {messages}")


def test_cluster_admits_only_its_accounts(queue_stack):
    code, out = queue_stack.ctl("sbatch", "--account=nosuch", "--wrap", "true", user="jovyan")
    assert code != 0 and "Invalid account" in out, out
    # A job that names no account gets the first one, as a user's default account would.
    code, out = queue_stack.ctl("sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap", "true",
                                user="jovyan")
    assert code == 0, out
    job = out.strip().split(";")[0]
    try:
        assert queue_stack.jobs()[job].split()[-1] == "physics"
    finally:
        queue_stack.ctl("scancel", job)


def test_waiting_spawn_shows_its_pending_reason_and_is_cancelled(queue_stack):
    code, out = queue_stack.ctl(
        "sbatch", "--parsable", "--job-name=hdt-blocker", "--cpus-per-task=1", "--mem=512M", "--time=10",
        "--output=/dev/null", "--wrap", "sleep 600", user="jovyan",
    )
    assert code == 0, out
    blocker = out.strip().split(";")[0]
    user = "wait@er"
    try:
        queue_stack.wait("blocker running", lambda: queue_stack.jobs().get(blocker, "").startswith("RUNNING"), 60)
        hub, _ = user_session(queue_stack, user)
        # 202: the hub gave up waiting for start() (slow_spawn_timeout); the job is queued.
        hub.api("POST", f"users/{escape_path(user)}/server", json={"profile": "compute"}, ok=(202,))
        found, messages = _progress_until(hub, user, PENDING, 60)
        job = found.group(1)
        print(f"progress: {messages}")
        assert job != blocker and queue_stack.jobs()[job].startswith("PENDING"), queue_stack.jobs()
        assert hub.server_model(user, "")["pending"] == "spawn"

        hub.api("DELETE", f"users/{escape_path(user)}/server", ok=(202, 204))
        queue_stack.wait("pending job cancelled", lambda: job not in queue_stack.jobs(), 60)
        queue_stack.wait("hub reports no server", lambda: hub.server_model(user, "") is None, 60)
        # scancel'ed, not left to run later: the job's final state says so.
        code, out = queue_stack.ctl("scontrol", "show", "job", job)
        assert "JobState=CANCELLED" in out or "Invalid job id" in out, out
        assert blocker in queue_stack.jobs()  # only the hub's own job was cancelled
    finally:
        queue_stack.ctl("scancel", blocker)
        queue_stack.wait("blocker gone", lambda: blocker not in queue_stack.jobs(), 60)


def test_refused_account_reaches_the_api_caller(queue_stack):
    # The schema refuses a profile whose account the site's cluster does not admit, so the
    # refusal a user can still meet is an account Slurm stops admitting after the site was
    # checked (an allocation that ended): revoke 'retired' in the running controller.
    code, original = queue_stack.ctl("cat", LUA)
    assert code == 0 and '["retired"] = true' in original, original
    queue_stack.put_file(LUA, original.replace(', ["retired"] = true', "").encode())
    user = "refused"
    since = int(time.time())
    try:
        hub, token = user_session(queue_stack, user)
        with pytest.raises(HubAPIError) as err:
            hub.api("POST", f"users/{user}/server", json={"profile": "retired"}, ok=(201, 202))
        # The API's JSON message is Slurm's own words, not "Internal Server Error".
        assert err.value.status == 503, err.value
        assert "Slurm refused the job" in str(err.value) and "Invalid account" in str(err.value), err.value
        assert "Traceback" not in str(err.value)
        # The progress stream (what the spawn page shows) says the same.
        found, _ = _progress_until(hub, user, re.compile(r"^Spawn failed: .*Invalid account"), 30)
        assert "retired" in found.string, found.string
        assert not queue_stack.jobs(), queue_stack.jobs()
        logs = queue_stack.container("hub").logs(since=since).decode(errors="replace")
        assert "Invalid account" in logs and "Unhandled error" not in logs, logs[-3000:]

        # The same user then starts a profile whose account Slurm admits.
        hub.api("POST", f"users/{user}/server", json={"profile": "compute"}, ok=(201, 202))
        hub.wait_ready(user, "", time.monotonic() + 240)
        (job, desc), = queue_stack.jobs().items()
        assert desc.split()[0] == "RUNNING" and desc.split()[-1] == "physics", desc
        assert run_5x4(hub.server_url(user), token) == "20"
        hub.stop_server(user, "", time.monotonic() + 90, remove=False)
        assert job not in queue_stack.jobs()
    finally:
        queue_stack.put_file(LUA, original.encode())
