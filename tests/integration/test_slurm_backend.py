"""SlurmBackend against a real Slurm 22.05 cluster of containers (tests/integration/slurmcluster.py).

The backend runs the real commands through ``docker exec -i -u jovyan hubdeploy-test-c2``:
c2 plays the login node (Slurm client + munge, not the controller), so stopping the
controller gives squeue's real "Unable to contact slurm controller". The notebook command
is a stand-in HTTP server on the port the job reserved; the backend path is the real one.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from slurmcluster import ACCOUNT, CONTROLLER, PREFIX, SlurmCluster
from stackfixture import SITE_NAME

from hubdeploy.backends.base import BackendError, Running, ServerSpec, Stopped, Unknown, parse_config
from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
from hubsections import profile as hub_profile

pytestmark = pytest.mark.integration

# The cluster's names follow HUBDEPLOY_TEST_SLURM_NAMES (slurmcluster.PREFIX).
LOGIN = f"{PREFIX}-c2"
C1 = f"{PREFIX}-c1"
SERVE = ["sh", "-c", 'exec python3 -m http.server --bind 0.0.0.0 "$HUBDEPLOY_PORT"']
CONFIG = {
    "submit_prefix": ["docker", "exec", "-i", "-u", "jovyan", LOGIN],
    "submit_env_option": "-e",
    "prefix": "hubdeploy-test",
    "poll_interval": 0.5,
    "command_timeout": 40,
    "stop_timeout": 30,
}


def profile(partition="interactive", account=ACCOUNT, cpu=1, **slurm):
    return hub_profile(name=f"p-{partition}", cpu=cpu, mem_limit=256 * 2**20, slurm={
        "partition": partition,
        "account": account,
        "time": "10",
        "path_prepend": ["/opt/venv/bin"],
        **slurm,
    })


def spec(user="has@", server="", prof=None, cmd=SERVE):
    return ServerSpec(
        user=user,
        server_name=server,
        profile=prof or profile(),
        env={
            "JUPYTERHUB_API_TOKEN": "dummy-token-not-a-secret",
            "JUPYTERHUB_USER": user,
        },
        cmd=list(cmd),
    )


def stack_base_tag(stack) -> str:
    from hubdeploy.images.plan import plan_images
    from hubdeploy.site.loader import load_site

    site = load_site(stack.site_file)
    return plan_images(site, stack.dir)["base"].ref.rsplit(":", 1)[1]


def run(coro, timeout=180):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def cluster(client, stack):
    # The nodes run the site's notebook image: the session's test stack builds it (once),
    # so this module works on a fresh machine whatever order the modules run in.
    stack.ensure_up()
    t = time.monotonic()
    with SlurmCluster(client, base=f"hubdeploy/{SITE_NAME}-base:{stack_base_tag(stack)}") as c:
        print(f"Slurm cluster up in {time.monotonic() - t:.1f}s ({c.image})")
        yield c


@pytest.fixture
def backend(cluster, request):
    b = SlurmBackend(parse_config(SlurmConfig, CONFIG, "slurm"))
    failed_before = request.session.testsfailed
    yield b
    if request.session.testsfailed > failed_before:  # the call phase is reported before teardown
        cluster.dump_logs()
    # Nothing a test started may outlive it.
    cluster.exec(CONTROLLER, ["scancel", "--user=jovyan"])


def http_status(cluster, from_container, host, port) -> str:
    code, out = cluster.exec(
        from_container,
        [
            "python3",
            "-c",
            f"import urllib.request as u; print(u.urlopen('http://{host}:{port}/', timeout=5).status)",
        ],
    )
    return out.strip() if code == 0 else f"error {code}: {out[-300:]}"


async def wait_for(pred, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def test_start_reach_stop(cluster, backend):
    state: dict = {}
    t = time.monotonic()
    host, port = run(backend.start(spec(), state))
    started = time.monotonic() - t
    assert host == C1 and 1024 <= port <= 65535
    assert state["job_id"] and state["phase"] == "started"
    assert isinstance(run(backend.poll(state)), Running)
    # The port was reserved on the node; the server may need a moment to bind it.
    deadline = time.monotonic() + 20
    while (status := http_status(cluster, CONTROLLER, host, port)) != "200" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert status == "200"
    # The token went through the environment, not the stored script.
    _, script = cluster.exec(CONTROLLER, ["scontrol", "write", "batch_script", state["job_id"], "-"])
    assert "dummy-token" not in script and "#SBATCH --account=hubdeploy" in script
    t = time.monotonic()
    run(backend.stop(state))
    print(f"start {started:.1f}s, stop {time.monotonic() - t:.1f}s")
    assert isinstance(run(backend.poll(state)), Stopped)
    code, out = cluster.exec(CONTROLLER, ["squeue", "-h", "-j", state["job_id"], "-t", "running,pending"])
    assert out.strip() == "" or code != 0


def test_pending_job_reports_reason_then_is_cancelled(cluster, backend):
    blocker: dict = {}
    run(backend.start(spec(user="blocker", prof=profile("tiny", account=None)), blocker))
    waiting: dict = {}
    events: list[dict] = []

    async def scenario():
        start = asyncio.ensure_future(backend.start(spec(user="waiter", prof=profile("tiny", account=None)), waiting))

        async def collect():
            async for ev in backend.progress(waiting):
                events.append(ev)

        reader = asyncio.ensure_future(collect())

        async def pending_with_reason():
            return waiting.get("phase") == "pending" and waiting.get("reason") not in (
                None,
                "",
                "None",
            )

        await wait_for(pending_with_reason, 30)
        await asyncio.sleep(1)  # progress polls every 0.5 s
        assert isinstance(await backend.poll(waiting), Running)  # pending counts as running
        start.cancel()  # what the hub does on its start timeout, followed by stop
        await asyncio.gather(start, return_exceptions=True)
        await backend.stop(waiting)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return await backend.poll(waiting)

    assert isinstance(run(scenario()), Stopped)
    messages = [e["message"] for e in events]
    assert any("pending" in m and "Resources" in m for m in messages), messages
    run(backend.stop(blocker))


def test_bad_account_is_slurms_message(backend):
    state: dict = {}
    with pytest.raises(BackendError) as err:
        run(backend.start(spec(prof=profile(account="nosuchaccount")), state))
    assert "Invalid account" in str(err.value) and "nosuchaccount" in str(err.value)
    assert "Traceback" not in str(err.value)
    run(backend.stop(state))  # a failed submit leaves nothing to cancel; stop is harmless


def test_over_partition_limit_is_refused_by_slurm(backend):
    with pytest.raises(BackendError, match="time limit"):
        run(backend.start(spec(prof=profile("tiny", account=None, time="5:00:00")), {}))


def test_over_profile_limit_is_refused_before_slurm(backend):
    with pytest.raises(BackendError, match="limit is 1"):
        run(
            backend.start(
                spec(prof=profile(cpu=2, limits={"max_cpu": 1})),
                {},
            )
        )


def test_controller_down_is_unknown_and_job_survives(cluster, backend):
    state: dict = {}
    host, port = run(backend.start(spec(user="survivor"), state))
    ctld = cluster.client.containers.get(CONTROLLER)
    try:
        ctld.stop(timeout=5)
        result = run(backend.poll(state), timeout=120)
        assert isinstance(result, Unknown), result
        print(f"poll with the controller down: {result.reason}")
        # The job keeps running on its node, reachable from the "login node".
        deadline = time.monotonic() + 20
        while (status := http_status(cluster, LOGIN, host, port)) != "200" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert status == "200"
    finally:
        ctld.start()
        cluster.wait_controller(60)

    async def running_again():
        return isinstance(await backend.poll(state), Running)

    run(wait_for(running_again, 60), timeout=90)
    run(backend.stop(state))
    assert isinstance(run(backend.poll(state)), Stopped)


def test_scancel_outside_the_backend_is_stopped(cluster, backend):
    state: dict = {}
    run(backend.start(spec(user="cancelled", server="named"), state))
    code, out = cluster.exec(CONTROLLER, ["scancel", state["job_id"]])
    assert code == 0, out

    async def stopped():
        return isinstance(await backend.poll(state), Stopped)

    run(wait_for(stopped, 30))
    run(backend.stop(state))  # stopping a job that is already gone is not an error
