"""A test site whose stack runs a Slurm cluster: bring it up with the CLI, reach its
containers, run Slurm commands in the controller, tear it all down.

Used by test_stack_slurm.py (hdtslurm) and test_stack_slurm_queue.py (hdtqueue).
"""

from __future__ import annotations

import contextlib
import time

import docker
import pytest
from stackfixture import diagnostics, free_port, run_cli, tear_down_site

from hubdeploy.smoke.hubclient import SpawnFailed


class SlurmStack:
    def __init__(self, root, site: str, site_yaml: str, *, squeue_format: str = "%T %P %N",
                 port: int | None = None):
        self.dir = root
        self.site = site
        self.project = f"hubdeploy-{site}"
        self.port = port or free_port()
        self.site_file = root / "site.yaml"
        self.site_file.write_text(site_yaml.format(name=site, port=self.port))
        self.url = f"http://127.0.0.1:{self.port}/"
        self.client = docker.from_env(timeout=120)
        self.squeue_format = squeue_format

    def cli(self, *args, **kw):
        return run_cli(self.site_file, *args, **kw)

    def container(self, service: str):
        found = self.client.containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]},
        )
        assert found, f"no container for service {service}"
        return found[0]

    def ctl(self, *argv: str, user: str = "root") -> tuple[int, str]:
        """Run a command in the controller's container (the hub's jobs run as jovyan in /tmp)."""
        res = self.container("slurmctld").exec_run(list(argv), user=user, workdir="/tmp")
        return res.exit_code, res.output.decode(errors="replace")

    def associate(self, name: str, accounts: list[str] | None = None) -> None:
        """Give account ``name`` (one the test runs sbatch as, e.g. jovyan) its Slurm
        association, as the hub does for its users: the cluster enforces them."""
        from hubdeploy.contract.slurmcmd import DEFAULT_ACCOUNT, UNCHANGED, add_user_argv

        code, out = self.ctl(*add_user_argv(name, accounts or [DEFAULT_ACCOUNT]))
        assert code == 0 or any(word in out for word in UNCHANGED), out

    def jobs(self) -> dict[str, str]:
        """job id -> the ``squeue_format`` fields of every pending or running job."""
        code, out = self.ctl("squeue", "-h", "-o", f"%i {self.squeue_format}")
        assert code == 0, out
        return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.strip()}

    def wait_ready(self, hub, user: str, server: str, limit: float) -> str:
        """``hub.wait_ready``; a failure carries the stack's diagnostics and job output."""
        try:
            return hub.wait_ready(user, server, time.monotonic() + limit)
        except (SpawnFailed, TimeoutError) as exc:
            raise AssertionError(f"{user}/{server}: {exc}\n" + diagnostics(self.project)) from None

    def wait(self, what: str, cond, limit: float, every: float = 1.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"{what}: not within {limit:.0f} s\n" + diagnostics(self.project))


@contextlib.contextmanager
def running(stack: SlurmStack, nodes: list[str]):
    """``up`` from a clean project, wait until every node is schedulable, and always
    tear the site down (containers, volumes, images) afterwards."""
    try:
        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        pytest.skip(f"no Docker engine: {exc}")
    try:
        # An interrupted earlier run may have left this project (and its job database).
        stack.cli("down", "--volumes", "--take-over", timeout=300)
        t0 = time.monotonic()
        proc = stack.cli("up", timeout=1800)
        assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(stack.project)
        print(f"{stack.site} up in {time.monotonic() - t0:.0f} s")

        def idle():
            code, out = stack.ctl("sinfo", "-h", "-N", "-o", "%N %t")
            states = dict(line.split() for line in out.splitlines() if line.strip()) if code == 0 else {}
            return set(states) == set(nodes) and all(v in ("idle", "mix", "alloc") for v in states.values())

        stack.wait("compute nodes idle", idle, 120)
        yield stack
    finally:
        tear_down_site(stack.site_file, stack.site)
