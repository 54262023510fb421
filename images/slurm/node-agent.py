#!/usr/bin/python3
"""hubdeploy's root agent on each compute node of the stack's Slurm cluster.

    hubdeploy-node-agent serve         the daemon (started by the node's entrypoint)
    hubdeploy-node-agent prolog        Slurm's Prolog, as root, before a job runs here
    hubdeploy-node-agent epilog        Slurm's Epilog, as root, after a job ran here
    hubdeploy-node-agent task-prolog   Slurm's TaskProlog, as the job's user

Its settings come from /etc/hubdeploy-slurm/agent.json, rendered from hubdeploy's
contract (jobs_dir, socket, ports, ...). Standard library only: it runs in the notebook
image's system Python.

Why it exists. Without cgroups (the nodes are unprivileged containers), Slurm tracks a
job's processes by their parent links, and a node's ports belong to whoever binds them
first. So a user could leave a process behind (``setsid -f``) that outlives the job,
escapes its memory limit, and binds the port another user's notebook was about to use,
receiving that user's requests and token. The agent closes both:

- **Server ports are root's.** The node sets ``net.ipv4.ip_unprivileged_port_start`` to
  1024 (Docker makes it 0), and notebook servers get ports below it. A job's launcher asks
  the agent (``serve JOBID`` on a unix socket; the agent checks the caller's uid against
  the job's directory, which the prolog made for the job's owner); the agent binds a free
  port, and once the server listens on its unix socket in that private directory, relays
  the port to it. No user can bind such a port, before, during or after the job; a port
  whose job ended is not handed out again for ``quarantine`` seconds, so a route the hub
  has not yet removed points at nothing. The relay opens the socket by an O_PATH handle it
  checked (a socket, owned by the job's user), so a symlink planted there reaches nothing.
- **No process outside a job.** Every ``sweep`` seconds, a process of a user account
  (not root, not a system account) whose ancestors lead to PID 1 without passing a root
  ``slurmstepd`` has left its job: it is killed. A process run from outside the
  container (``docker exec``, parent 0) is not a job's and is left alone. The notebook's
  own launcher is a subreaper, so what a notebook daemonizes stays in its job (counted
  against its memory, ended with it) instead of being killed.
- **A job's files go with it.** The prolog makes the job's directory (its TMPDIR and the
  server's socket); the epilog removes it and, when the user has no other job on the
  node, ends the user's processes and removes their files in /tmp and /dev/shm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

CONFIG = "/etc/hubdeploy-slurm/agent.json"
log = logging.getLogger("hubdeploy-node-agent")


def load_config(path: str = CONFIG) -> dict:
    with open(path) as f:
        return json.load(f)


def job_dir(cfg: dict, job_id: str) -> str:
    if not job_id.isdigit() or len(job_id) > 12:
        raise ValueError(f"bad job id {job_id!r}")
    return os.path.join(cfg["jobs_dir"], job_id)


def user_uid(uid: int, cfg: dict) -> bool:
    """A user account's uid (what jobs run as), not root's or a system account's."""
    return not any(lo <= uid <= hi for lo, hi in cfg["system_ids"])


# -- prolog, epilog, task prolog ---------------------------------------------------------------


def prolog(cfg: dict) -> int:
    jid, uid, gid = os.environ["SLURM_JOB_ID"], int(os.environ["SLURM_JOB_UID"]), int(os.environ["SLURM_JOB_GID"])
    os.makedirs(cfg["jobs_dir"], mode=0o755, exist_ok=True)
    path = job_dir(cfg, jid)
    shutil.rmtree(path, ignore_errors=True)  # a job id Slurm handed out again after a crash
    os.mkdir(path, 0o700)
    os.mkdir(os.path.join(path, "tmp"), 0o700)
    for p in (os.path.join(path, "tmp"), path):
        os.chown(p, uid, gid)
    return 0


def epilog(cfg: dict) -> int:
    jid, uid = os.environ["SLURM_JOB_ID"], int(os.environ["SLURM_JOB_UID"])
    shutil.rmtree(job_dir(cfg, jid), ignore_errors=True)
    if not user_uid(uid, cfg) or _other_jobs(cfg, uid):
        return 0
    # The user's last job here: nothing of theirs stays behind on the node.
    subprocess.run(["pkill", "-KILL", "-U", str(uid)], check=False)
    for top in cfg["scratch_dirs"]:
        subprocess.run(["find", top, "-xdev", "-mindepth", "1", "-user", str(uid), "-delete"], check=False,
                       stderr=subprocess.DEVNULL)
    return 0


def _other_jobs(cfg: dict, uid: int) -> bool:
    try:
        entries = os.listdir(cfg["jobs_dir"])
    except FileNotFoundError:
        return False
    for name in entries:
        try:
            if os.lstat(os.path.join(cfg["jobs_dir"], name)).st_uid == uid:
                return True
        except FileNotFoundError:
            continue
    return False


def task_prolog(cfg: dict) -> int:
    """Lines Slurm reads into the task's environment: the job's own TMPDIR."""
    print(f"export TMPDIR={job_dir(cfg, os.environ['SLURM_JOB_ID'])}/tmp")
    return 0


# -- the daemon --------------------------------------------------------------------------------


class Slot:
    """One job's server port: bound by root, listening once the server's socket answers."""

    def __init__(self, job_id: str, port: int, uid: int, sock: socket.socket):
        self.job_id, self.port, self.uid, self.sock = job_id, port, uid, sock
        self.server: asyncio.AbstractServer | None = None
        self.task: asyncio.Task | None = None


class Agent:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.ports = range(cfg["ports"][0], cfg["ports"][1] + 1)
        self.slots: dict[str, Slot] = {}
        self.released: dict[int, float] = {}
        self.next_port = self.ports[0]

    # ports

    def _sock_path(self, job_id: str) -> str:
        return os.path.join(job_dir(self.cfg, job_id), self.cfg["server_socket"])

    def _allocate(self, job_id: str, uid: int) -> Slot:
        now = time.time()
        taken = {s.port for s in self.slots.values()}
        for i in range(len(self.ports)):
            port = self.ports[(self.next_port - self.ports[0] + i) % len(self.ports)]
            if port in taken or now - self.released.get(port, -1e18) < self.cfg["quarantine"]:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError:
                sock.close()
                continue
            self.next_port = port + 1 if port + 1 in self.ports else self.ports[0]
            slot = Slot(job_id, port, uid, sock)
            self.slots[job_id] = slot
            slot.task = asyncio.ensure_future(self._activate(slot))
            self._save()
            return slot
        raise OSError("no free server port on this node")

    async def _activate(self, slot: Slot) -> None:
        """Listen on the port once the job's server answers on its socket."""
        deadline = time.monotonic() + self.cfg["start_wait"]
        while time.monotonic() < deadline and slot.job_id in self.slots:
            try:
                reader, writer = await self._open_server(slot)
                writer.close()
                break
            except (OSError, PermissionError):
                await asyncio.sleep(0.05)
        else:
            return
        slot.sock.listen(128)
        slot.sock.setblocking(False)
        slot.server = await asyncio.start_server(lambda r, w: self._relay(slot, r, w), sock=slot.sock)
        log.info("job %s: port %d serves its notebook", slot.job_id, slot.port)

    async def _open_server(self, slot: Slot):
        """The job's server socket, opened only if it is a socket of the job's user (no
        symlink followed: the directory is the user's, the check and the connect are on
        the same inode)."""
        fd = os.open(self._sock_path(slot.job_id), os.O_PATH | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != slot.uid:
                raise PermissionError("not the job's own socket")
            return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    async def _relay(self, slot: Slot, reader, writer) -> None:
        try:
            up_reader, up_writer = await self._open_server(slot)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def _release(self, job_id: str) -> None:
        slot = self.slots.pop(job_id)
        if slot.task is not None:
            slot.task.cancel()
        if slot.server is not None:
            slot.server.close()
        slot.sock.close()
        self.released[slot.port] = time.time()
        log.info("job %s ended: port %d released", job_id, slot.port)
        self._save()

    def _save(self) -> None:
        data = {"slots": {j: [s.port, s.uid] for j, s in self.slots.items()}, "released": self.released}
        tmp = self.cfg["state_file"] + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.cfg["state_file"])

    def restore(self) -> None:
        """Jobs that run on across an agent restart keep their ports."""
        try:
            with open(self.cfg["state_file"]) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        self.released = {int(p): float(t) for p, t in data.get("released", {}).items()}
        for job_id, (port, uid) in data.get("slots", {}).items():
            if not os.path.isdir(job_dir(self.cfg, job_id)):
                self.released[port] = time.time()
                continue
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("", port))
            slot = self.slots[job_id] = Slot(job_id, port, uid, sock)
            slot.task = asyncio.ensure_future(self._activate(slot))

    # the control socket

    async def control(self, reader, writer) -> None:
        try:
            creds = writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            uid = int.from_bytes(creds[4:8], sys.byteorder)
            line = (await asyncio.wait_for(reader.readline(), 10)).decode("ascii", "replace").split()
            if len(line) != 2 or line[0] != "serve":
                raise ValueError("usage: serve JOBID")
            job_id = line[1]
            st = os.lstat(job_dir(self.cfg, job_id))
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
                raise PermissionError(f"job {job_id} is not yours, or not on this node")
            slot = self.slots.get(job_id) or self._allocate(job_id, uid)
            writer.write(f"{slot.port}\n".encode())
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            writer.write(f"error {exc}\n".encode())
        finally:
            await writer.drain()
            writer.close()

    # the sweep

    async def sweep_forever(self) -> None:
        while True:
            for job_id in [j for j in self.slots if not os.path.isdir(job_dir(self.cfg, j))]:
                self._release(job_id)
            for pid, uid in escaped(self.cfg):
                try:
                    os.kill(pid, signal.SIGKILL)
                    log.warning("killed process %d of uid %d: it left its job", pid, uid)
                except ProcessLookupError:
                    pass
            await asyncio.sleep(self.cfg["sweep"])


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, real uid, command name) of every process in this namespace."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("utf-8", "replace")
            with open(f"/proc/{name}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration, ValueError):
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        ppid = int(raw[raw.rindex(")") + 2:].split()[1])
        out[int(name)] = (ppid, uid, comm)
    return out


def escaped(cfg: dict, table: dict[int, tuple[int, int, str]] | None = None) -> list[tuple[int, int]]:
    """(pid, uid) of user processes whose ancestry reaches PID 1 without a root slurmstepd."""
    table = processes() if table is None else table
    found = []
    for pid, (ppid, uid, _) in table.items():
        if pid == 1 or not user_uid(uid, cfg):
            continue
        seen, p = set(), ppid
        while p not in (0, 1) and p in table and p not in seen:
            seen.add(p)
            parent_ppid, parent_uid, parent_comm = table[p]
            if parent_comm == "slurmstepd" and parent_uid == 0:
                break
            p = parent_ppid
        else:
            if p == 1:
                found.append((pid, uid))
    return found


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, RuntimeError):
        dst.close()


async def serve(cfg: dict) -> None:
    agent = Agent(cfg)
    os.makedirs(cfg["jobs_dir"], mode=0o755, exist_ok=True)
    agent.restore()
    try:
        os.unlink(cfg["socket"])
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(agent.control, path=cfg["socket"])
    os.chmod(cfg["socket"], 0o666)  # any job may ask; the job directory's owner decides
    log.info("serving ports %d-%d for notebooks", *cfg["ports"])
    async with server:
        await agent.sweep_forever()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config()
    command = argv[1] if len(argv) > 1 else ""
    if command == "serve":
        asyncio.run(serve(cfg))
        return 0
    if command in ("prolog", "epilog", "task-prolog"):
        return {"prolog": prolog, "epilog": epilog, "task-prolog": task_prolog}[command](cfg)
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
