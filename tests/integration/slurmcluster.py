"""A real Slurm 22.05 cluster of containers for the Slurm backend's tests.

- image ``hubdeploy-test/slurm:<hash12>``: ``images/slurm/`` built FROM a local notebook
  image (``HUBDEPLOY_TEST_SLURM_BASE``, else the newest ``hubdeploy/*-base`` that has
  jupyterhub-singleuser). The hash covers the recipe only, so the image is built once and
  kept between runs (a test cache, like ``hubdeploy-test/debian-python3``).
- network ``hubdeploy-test-slurmnet``; containers ``hubdeploy-test-slurmctld``,
  ``hubdeploy-test-c1`` (2 CPUs, partition ``interactive``) and ``hubdeploy-test-c2``
  (1 CPU, partition ``tiny``: one job fills it, the next one waits). Hostnames are the
  NodeNames. Without slurmdbd Slurm cannot check accounts (``AllowAccounts`` leaves such
  jobs pending), so a ``job_submit.lua`` admits only account ``hubdeploy`` and sbatch
  refuses any other with Slurm's own "Invalid account" error. ``EnforcePartLimits=ALL``
  refuses over-limit requests at submission.
- one munge key and slurm.conf, copied into every container before it starts.

Run as a context manager; every object is removed on exit, and :meth:`dump_logs` prints
what explains a failure.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import sys
import tarfile
import time
from pathlib import Path

import docker
import docker.errors

# The containers' and network's names; another value lets two runs share one engine.
PREFIX = os.environ.get("HUBDEPLOY_TEST_SLURM_NAMES", "hubdeploy-test")
IMAGES = "hubdeploy-test"  # the images do not depend on the names: every run shares them
NETWORK = f"{PREFIX}-slurmnet"
CONTROLLER = f"{PREFIX}-slurmctld"
NODES = {f"{PREFIX}-c1": 2, f"{PREFIX}-c2": 1}  # NodeName -> CPUs
ACCOUNT = "hubdeploy"
LOGIN = f"{PREFIX}-login"  # only when a test starts it (start_login)
RECIPE = Path(__file__).resolve().parents[2] / "images" / "slurm"
LABEL = {"hubdeploy.test": "slurm"}

SLURM_CONF = f"""\
ClusterName=hubdeploytest
SlurmctldHost={CONTROLLER}
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
# Without privileges: no cgroups anywhere (22.05 has no CgroupPlugin=disabled).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=30
SlurmctldTimeout=30
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
SchedulerType=sched/backfill
MpiDefault=none
# Refuse over-limit jobs at submission (sbatch error) instead of leaving them pending.
EnforcePartLimits=ALL
# Without slurmdbd Slurm knows no accounts; job_submit.lua plays the site's account check.
JobSubmitPlugins=lua
{"".join(f"NodeName={n} CPUs={c} RealMemory={1000 * c} State=UNKNOWN{chr(10)}" for n, c in NODES.items())}\
PartitionName=interactive Nodes={PREFIX}-c1 Default=YES MaxTime=08:00:00 State=UP
PartitionName=tiny Nodes={PREFIX}-c2 MaxTime=01:00:00 State=UP
"""

# Refuses every account but ACCOUNT with Slurm's own error code, as an accounting
# database would ("Invalid account or account/partition combination specified").
JOB_SUBMIT_LUA = f"""\
function slurm_job_submit(job_desc, part_list, submit_uid)
  if job_desc.account ~= nil and job_desc.account ~= "{ACCOUNT}" then
    slurm.log_user("hubdeploy-test: account %s does not exist or you are not in it", job_desc.account)
    return slurm.ESLURM_INVALID_ACCOUNT
  end
  return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  return slurm.SUCCESS
end
"""


def recipe_hash() -> str:
    """sha256 over the recipe's file names and contents (12 hex digits)."""
    h = hashlib.sha256()
    for path in sorted(p for p in RECIPE.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(RECIPE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


# The login host: the cluster's image plus sshd. The notebook user jovyan logs in with a
# key only (no password: '*' is "no password", '!' would lock the account for sshd).
LOGIN_DOCKERFILE = """\
ARG BASE
FROM $BASE
USER root
RUN apt-get update && apt-get install -y --no-install-recommends openssh-server \\
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*_key* \\
 && usermod -p '*' jovyan \\
 && printf 'UsePAM no\\nPasswordAuthentication no\\nKbdInteractiveAuthentication no\\n' \\
    > /etc/ssh/sshd_config.d/hubdeploy-test.conf
COPY login.sh /usr/local/bin/hubdeploy-test-login
ENTRYPOINT ["/usr/local/bin/hubdeploy-test-login"]
CMD []
"""
LOGIN_ENTRY = """\
#!/bin/sh
set -eu
conf=/etc/hubdeploy-slurm
install -o munge -g munge -m 0400 "$conf/munge.key" /etc/munge/munge.key
install -o root -g root -m 0644 "$conf/slurm.conf" /etc/slurm/slurm.conf
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged
install -d -m 0755 /run/sshd
ssh-keygen -A
exec /usr/sbin/sshd -D -e
"""


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class SlurmCluster:
    """Build (once), start and remove the test cluster."""

    def __init__(self, client: docker.DockerClient | None = None, base: str | None = None):
        self.client = client or docker.from_env(timeout=300)
        self.base = base
        self.image = f"{IMAGES}/slurm:{recipe_hash()}"
        self.containers: dict[str, docker.models.containers.Container] = {}

    # -- image ------------------------------------------------------------------------

    def _pick_base(self) -> str:
        if self.base:
            return self.base
        candidates = sorted(
            self.client.images.list(name="hubdeploy/*-base"),
            key=lambda i: i.attrs.get("Created", ""),
            reverse=True,
        )
        for img in candidates:
            ref = img.tags[0] if img.tags else img.id
            try:
                self.client.containers.run(
                    ref,
                    ["test", "-x", "/opt/venv/bin/jupyterhub-singleuser"],
                    entrypoint=[],
                    remove=True,
                )
            except docker.errors.ContainerError:
                continue
            return ref
        raise RuntimeError("no local notebook image hubdeploy/*-base to build the Slurm image on (run `make up`)")

    def ensure_image(self) -> str:
        try:
            self.client.images.get(self.image)
            return self.image
        except docker.errors.ImageNotFound:
            pass
        base = self._pick_base()
        self.client.images.build(
            path=str(RECIPE),
            tag=self.image,
            buildargs={"BASE": base},
            rm=True,
            labels=LABEL,
            timeout=900,
        )
        return self.image

    # -- cluster ----------------------------------------------------------------------

    def remove(self) -> None:
        """Remove the cluster's containers and network (whatever exists of them)."""
        for name in [CONTROLLER, *NODES, LOGIN]:
            try:
                self.client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        try:
            self.client.networks.get(NETWORK).remove()
        except docker.errors.NotFound:
            pass
        self.containers.clear()

    def start(self, timeout: float = 120) -> None:
        self.ensure_image()
        self.remove()  # leftovers of an interrupted run
        self.client.networks.create(NETWORK, driver="bridge", labels=LABEL)
        files = {
            "hubdeploy-slurm/slurm.conf": (SLURM_CONF.encode(), 0o644),
            "hubdeploy-slurm/job_submit.lua": (JOB_SUBMIT_LUA.encode(), 0o644),
            "hubdeploy-slurm/munge.key": (secrets.token_bytes(1024), 0o400),
        }
        archive = self.archive = _tar(files)
        for name, role in [(CONTROLLER, "slurmctld"), *((n, "slurmd") for n in NODES)]:
            c = self.client.containers.create(
                self.image,
                [role],
                name=name,
                hostname=name,
                network=NETWORK,
                labels=LABEL,
                detach=True,
            )
            c.put_archive("/etc", archive)
            self.containers[name] = c
        self.containers[CONTROLLER].start()
        for name in NODES:
            self.containers[name].start()
        self.wait_idle(timeout)

    # -- a login (submit) host: munge, the Slurm client and sshd ------------------------

    def ensure_login_image(self) -> str:
        tag = f"{IMAGES}/slurm-login:" + hashlib.sha256((self.image + LOGIN_DOCKERFILE + LOGIN_ENTRY).encode()).hexdigest()[:12]
        try:
            self.client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        context = _tar({"Dockerfile": (LOGIN_DOCKERFILE.encode(), 0o644), "login.sh": (LOGIN_ENTRY.encode(), 0o755)})
        self.client.images.build(
            fileobj=io.BytesIO(context), custom_context=True, tag=tag, buildargs={"BASE": self.image},
            rm=True, labels=LABEL, timeout=900,
        )
        return tag

    def start_login(self, timeout: float = 60, sshd_config: str = "") -> str:
        """Start ``hubdeploy-test-login`` (sshd as a site's submit host); its ed25519 host key.

        ``sshd_config``: more sshd settings, in place before sshd starts.
        """
        image = self.ensure_login_image()
        c = self.client.containers.create(
            image, name=LOGIN, hostname=LOGIN, network=NETWORK, labels=LABEL, detach=True
        )
        c.put_archive("/etc", self.archive)
        if sshd_config:
            c.put_archive("/etc/ssh/sshd_config.d", _tar({"hubdeploy-test-extra.conf": (sshd_config.encode(), 0o644)}))
        self.containers[LOGIN] = c
        c.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, out = self.exec(LOGIN, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
            if code == 0 and self.exec(LOGIN, ["scontrol", "ping"])[0] == 0:
                return out.strip()
            time.sleep(0.5)
        self.dump_logs()
        raise TimeoutError(f"login host not ready after {timeout}s")

    def authorize(self, public_key: str, user: str = "jovyan") -> None:
        """Put ``public_key`` in ``user``'s authorized_keys on the login host."""
        code, out = self.exec(LOGIN, ["install", "-d", "-m", "0700", "-o", user, f"/home/{user}/.ssh"])
        assert code == 0, out
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("authorized_keys")
            data = public_key.encode()
            info.size, info.mode, info.uname, info.gname, info.uid, info.gid = len(data), 0o600, user, "users", 1000, 100
            tar.addfile(info, io.BytesIO(data))
        self.client.containers.get(LOGIN).put_archive(f"/home/{user}/.ssh", buf.getvalue())

    def put_file(self, container: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write one file (owner root) into a container."""
        directory, name = path.rsplit("/", 1)
        self.client.containers.get(container).put_archive(directory, _tar({name: (data, mode)}))

    def add_account(self, name: str, uid: int, gid: int) -> None:
        """The same POSIX account (and its private group) on the login host, the
        controller and every node, as a site's directory would have it; login by key or
        certificate only ('*': no password, but not locked for sshd)."""
        for container in [LOGIN, CONTROLLER, *NODES]:
            for argv in (["groupadd", "-g", str(gid), name],
                         ["useradd", "-m", "-u", str(uid), "-g", str(gid), "-s", "/bin/bash", "-p", "*", name]):
                code, out = self.exec(container, argv)
                assert code == 0, (container, argv, out)

    def exec(self, container: str, argv: list[str], user: str = "root") -> tuple[int, str]:
        res = self.client.containers.get(container).exec_run(argv, user=user, demux=False)
        return res.exit_code, (res.output or b"").decode(errors="replace")

    def wait_idle(self, timeout: float = 120) -> None:
        """Until every node is idle (or mixed/allocated) in sinfo; bounded."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            code, out = self.exec(CONTROLLER, ["sinfo", "-h", "-N", "-o", "%N %t"])
            if code == 0:
                states = dict(line.split() for line in out.splitlines() if line.strip())
                if set(states) == set(NODES) and all(s in ("idle", "mix", "alloc") for s in states.values()):
                    return
            time.sleep(1)
        self.dump_logs()
        raise TimeoutError(f"Slurm nodes not idle after {timeout}s: {out!r}")

    def wait_controller(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exec(CONTROLLER, ["scontrol", "ping"])[0] == 0:
                return
            time.sleep(0.5)
        self.dump_logs()
        raise TimeoutError(f"slurmctld does not answer after {timeout}s")

    def dump_logs(self, file=sys.stderr) -> None:
        """Print every container's log tail and the controller's view of nodes and jobs."""
        for name in [CONTROLLER, *NODES, *([LOGIN] if LOGIN in self.containers else [])]:
            try:
                c = self.client.containers.get(name)
            except docker.errors.NotFound:
                print(f"===== {name}: no such container", file=file)
                continue
            print(f"===== {name} ({c.status}) log tail", file=file)
            print(c.logs(tail=80).decode(errors="replace"), file=file)
        try:
            for argv in (["sinfo", "-N", "-l"], ["squeue", "-a", "-t", "all", "-l"]):
                print(f"===== {' '.join(argv)}", file=file)
                print(self.exec(CONTROLLER, argv)[1], file=file)
        except Exception as exc:  # noqa: BLE001 - best effort while reporting a failure
            print(f"(cannot query the controller: {exc})", file=file)

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
